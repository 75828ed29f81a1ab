"""The pilot's started notices: sent together after a burst, always before the job's result."""

from __future__ import annotations

import asyncio

from prompt.channel.protocol import Message
from prompt.pilot.notices import StartedNotices


async def test_notices_wait_for_the_burst_then_leave_together() -> None:
    sent: list[Message] = []
    arrived = asyncio.Event()

    def send(msg: Message) -> None:
        sent.append(msg)
        arrived.set()

    notices = StartedNotices(0.02, send)
    for job in (1, 2, 3):
        notices.add(job, 1, at=100.0 + job)
    assert sent == [] and len(notices) == 3, "nothing leaves during the burst"
    await asyncio.wait_for(arrived.wait(), 10)  # the timer fires on its own
    assert [(m["t"], m["job"], m["at"]) for m in sent] == [
        ("started", 1, 101.0), ("started", 2, 102.0), ("started", 3, 103.0),
    ]  # fmt: skip
    assert len(notices) == 0


async def test_a_notice_leaves_before_its_result_and_only_once() -> None:
    sent: list[Message] = []
    notices = StartedNotices(60.0, sent.append)
    notices.add(7, 2, at=5.0)
    notices.add(8, 1, at=6.0)
    notices.before_result(7, 2)
    assert [(m["job"], m["attempt"]) for m in sent] == [(7, 2)]
    notices.before_result(7, 2)
    notices.before_result(9, 1)  # none pending: nothing
    notices.flush()
    assert [(m["job"], m["attempt"]) for m in sent] == [(7, 2), (8, 1)]


async def test_no_delay_sends_each_at_once() -> None:
    sent: list[Message] = []
    notices = StartedNotices(0.0, sent.append)
    notices.add(1, 1, at=1.0)
    assert [m["job"] for m in sent] == [1] and len(notices) == 0
