"""``prompt pilot``: one persistent connection to the dispatcher, warm workers, a calib cache.

Results are kept until the dispatcher acknowledges them (after it has stored them), and are
sent again after a reconnect; a job pushed twice with the same (job, attempt) runs once while
the pilot holds it (queued, running, or its result not yet acknowledged). So a dropped
connection or a dispatcher restart loses no run, and repeats one only when a new leader dropped
its result (see ``_on_ack``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Coroutine
from typing import Any

import structlog

from prompt.bounds import bound_counts, bound_stages
from prompt.channel import protocol as p
from prompt.channel.protocol import Channel, Message, ProtocolError
from prompt.channel.tls import closed_before_welcome
from prompt.pilot.alerts import AlertPublisher
from prompt.pilot.backlog import Backlog
from prompt.pilot.cache import CacheKey, CalibrationCache
from prompt.pilot.calibrations import CalibrationSource
from prompt.pilot.config import PilotConfig
from prompt.pilot.connect import ClosedBeforeWelcomeError, PilotRefusedError, connect
from prompt.pilot.drain import abandoned, start_deadline_on_stop
from prompt.pilot.loading import CalibrationLoader
from prompt.pilot.notices import StartedNotices
from prompt.pilot.results import calib_failure, failure, fitting
from prompt.pilot.runtimes import RunTimes
from prompt.pilot.worker import Worker
from prompt.pilot.workers import WorkerPool
from prompt.runtime import freeze_startup_objects

log = structlog.get_logger(__name__)

JobKey = tuple[int, int]  # (job id, attempt)


class Pilot:
    def __init__(
        self,
        config: PilotConfig,
        source: CalibrationSource,
        alerts: AlertPublisher | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.alerts = alerts
        self.cache = CalibrationCache(config.cache_bytes)
        self.calibs = CalibrationLoader(source, self.cache, self._spawn, config.preload_concurrency)
        self.pool = WorkerPool(
            config.slots, self._on_result, on_returned=self._on_returned,
            on_ready=self._start_queued,
            warm_imports=config.warm_imports, nice=config.worker_nice,
            lookahead_s=config.worker_lookahead_s,
        )  # fmt: skip
        self.runtimes = RunTimes()
        self.notices = StartedNotices(config.started_notice_s, self._send)
        self.channel: Channel | None = None
        self.running: dict[int, Message] = {}
        self.queued = Backlog()
        self.unacked: dict[JobKey, Message] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._reserved = 0
        """Slots held by jobs whose calibrations are still loading."""
        self.draining = False
        self._drain = asyncio.Timeout(None)
        """Expires ``drain_timeout_s`` after ``stop`` is set (see ``prompt.pilot.drain``)."""
        self.connected = asyncio.Event()
        self.jobs_run = 0
        self._address = 0  # which of config.addresses to try next
        self._unanswered = 0
        """Connections in a row the dispatcher closed before answering register."""

    # ---- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then drain: finish running jobs, deliver results, exit;
        after ``drain_timeout_s`` at most (see ``prompt.pilot.drain``)."""
        await self.pool.start()
        if self.alerts is not None:
            await self.alerts.start()
        # Default-sized young collections here: with 20k objects per collection, pilots showed
        # 12-33 ms pauses mid-burst (the dispatcher, which allocates differently, shows none).
        freeze_startup_objects(gen0_threshold=700)
        timeout_s = self.config.drain_timeout_s
        try:
            async with self._drain:
                self._spawn(start_deadline_on_stop(stop, timeout_s, self._drain))
                await self._serve(stop)
        except TimeoutError:
            if not self._drain.expired():
                raise
        finally:
            for task in list(self._background):
                task.cancel()
            await self.pool.stop()
            if self.alerts is not None:
                await self.alerts.stop()
            self.cache.close()
        if self.running or self.queued or self.unacked:  # the drain timed out
            queued, unacked = [m["job"] for m in self.queued], [j for j, _ in self.unacked]
            log.warning("drain timed out: stopped with jobs unfinished (the dispatcher retries "
                        "them when it declares this pilot lost)", timeout_s=timeout_s,
                        **abandoned(self.running, queued, unacked))  # fmt: skip

    async def _serve(self, stop: asyncio.Event) -> None:
        """Sessions with the dispatcher, reconnecting with backoff, until drained."""
        backoff = self.config.reconnect_min_s
        while not self._finished_draining(stop):
            try:
                await self._session(stop)
                backoff = self.config.reconnect_min_s
            except PilotRefusedError:
                raise
            except ClosedBeforeWelcomeError as exc:
                self._unanswered += 1
                limit = self.config.closed_before_welcome_limit
                if self._unanswered >= limit:
                    why = closed_before_welcome(self.config.ssl_context is not None, limit)
                    raise PilotRefusedError(f"{why} (last: {exc.__cause__!r})") from exc
                log.warning("dispatcher closed the connection before answering",
                            error=repr(exc.__cause__), retry_in=backoff)  # fmt: skip
            except (OSError, ConnectionError, ProtocolError, asyncio.IncompleteReadError) as exc:
                log.warning("dispatcher connection lost", error=repr(exc), retry_in=backoff)
            self.connected.clear()
            if self._finished_draining(stop):
                break
            if stop.is_set():  # draining, with results to deliver: back off all the same
                await asyncio.sleep(backoff)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, self.config.reconnect_max_s)

    def _finished_draining(self, stop: asyncio.Event) -> bool:
        """Stopped, and nothing left to run or deliver, or no more time to. (The drain's
        deadline cancels what the pilot awaits; a cancellation that ``wait_for`` swallows, as
        it can on Python 3.11, ends the loops here instead.)"""
        idle = not self.running and not self.queued and not self.unacked
        return stop.is_set() and (idle or self._drain.expired())

    async def _session(self, stop: asyncio.Event) -> None:
        addresses = self.config.addresses
        host, port = addresses[self._address % len(addresses)]
        self._address += 1  # a failed session moves on to the next address
        reader, writer = await connect(self.config, host, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = Channel(reader, writer)
        try:
            channel.send(self._register_message())
            try:
                reply = await asyncio.wait_for(channel.receive(), 10)
            except (asyncio.IncompleteReadError, ConnectionResetError, ssl.SSLError) as exc:
                raise ClosedBeforeWelcomeError() from exc
            if reply["t"] == p.REFUSED:
                raise PilotRefusedError(str(reply.get("reason")))
            if reply["t"] != p.WELCOME:
                raise ProtocolError(f"expected welcome, got {reply['t']!r}")
            self.channel = channel
            self.connected.set()
            self._address -= 1  # stay with the dispatcher that answered
            self._unanswered = 0
            log.info("registered with dispatcher", dispatcher=f"{host}:{port}",
                     tls=self.config.ssl_context is not None)  # fmt: skip
            for msg in self.unacked.values():
                channel.send(msg)
            # Either loop ending ends the session; the other is cancelled and awaited. (Not a
            # TaskGroup: its ExceptionGroup would hide the connection error run() retries on.)
            loops = {
                asyncio.create_task(self._read_loop(channel)),
                asyncio.create_task(self._heartbeat_loop(channel, stop)),
            }
            poll_s = self.config.poll_s or (
                float(reply.get("poll_s", 2.0)) if reply.get("scheduling") == "poll" else None
            )
            if poll_s:  # the dispatcher schedules by polling: ask for work
                loops.add(asyncio.create_task(self._poll_loop(channel, poll_s)))
            try:
                done, _ = await asyncio.wait(loops, return_when="FIRST_COMPLETED")
            finally:
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
        finally:
            self.channel = None
            await channel.close()

    def _register_message(self) -> Message:
        return {
            "t": p.REGISTER,
            "pilot": self.config.pilot_id,
            "token": self.config.token,
            "slots": self.config.slots,
            "labels": list(self.config.labels),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "cache": self.cache.summary(),
            # Jobs this pilot still owes a result for, including results not yet acknowledged.
            "running": [[m["job"], m["attempt"]] for m in (*self.running.values(), *self.queued)]
            + [list(key) for key in self.unacked],
            "draining": self.draining,
        }

    async def _heartbeat_loop(self, channel: Channel, stop: asyncio.Event) -> None:
        while True:
            if stop.is_set() and not self.draining:
                self.draining = True
                log.info("draining: no new jobs; finishing", running=len(self.running))
            if self._finished_draining(stop):
                return
            self.notices.flush()
            channel.send(
                {
                    "t": p.HEARTBEAT,
                    "running": [[m["job"], m["attempt"]] for m in self.running.values()],
                    "free": self.free_slots,
                    "draining": self.draining,
                    "cache": self.cache.summary(),
                    "cache_stats": vars(self.cache.stats),
                }
            )
            await channel.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.heartbeat_s)
            if stop.is_set():
                await asyncio.sleep(min(0.05, self.config.heartbeat_s))

    async def _poll_loop(self, channel: Channel, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            free = self.free_slots - len(self.queued)
            if free > 0 and not self.draining:
                channel.send({"t": p.POLL, "free": free})

    async def _read_loop(self, channel: Channel) -> None:
        while True:
            msg = await channel.receive()
            kind = msg["t"]
            if kind == p.JOB:
                self._on_job(msg)
            elif kind == p.PRELOAD:
                self._spawn(self._preload(msg))
            elif kind == p.ACK:
                self._on_ack(msg)
            elif kind == p.DRAIN:
                self.draining = True
            elif kind == p.WITHDRAW:
                self._on_withdraw(channel, msg)
            else:
                log.warning("unexpected message from dispatcher", type=kind)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _preload(self, msg: Message) -> None:
        results = await self.calibs.preload(msg["items"])
        if self.channel is not None:
            self.channel.send({"t": p.PRELOADED, "items": results, "t_done": time.time()})

    # ---- jobs --------------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        return self.pool.idle - self._reserved

    def _on_ack(self, msg: Message) -> None:
        """The dispatcher has the result, or did not want it. Nothing of the job is kept: a
        later push of the same attempt comes from a new leader whose state had the job still
        waiting when this result came (the old leader's push of it was lost with its term), so
        it acked and dropped it; the job must run again, or it would wait on this pilot until
        the next failover."""
        self.unacked.pop((msg["job"], msg["attempt"]), None)

    def _on_job(self, msg: Message) -> None:
        key = (msg["job"], msg["attempt"])
        if key in self.unacked:
            if self.channel is not None:
                self.channel.send(self.unacked[key])
            return
        running = self.running.get(msg["job"])
        if running is not None and running["attempt"] == msg["attempt"]:
            return  # a repeated push of a job this pilot already has
        if key in self.queued:
            return
        self.queued.add(msg)
        self._start_queued()

    def _on_withdraw(self, channel: Channel, msg: Message) -> None:
        """The dispatcher wants a queued job back (another pilot is free, or it was canceled):
        given back only if not started, so the attempt runs here or nowhere."""
        key = (msg["job"], msg["attempt"])
        withdrawn = self.queued.remove(key)
        channel.send({"t": p.WITHDRAWN, "job": key[0], "attempt": key[1], "withdrawn": withdrawn})

    def _start_queued(self) -> None:
        while self.queued:
            if self.free_slots <= 0:
                self._queue_behind()
                return
            msg = self.queued.pop()
            job = msg["job"]
            try:
                keys = self.calibs.keys(msg["fields"])
            except Exception as exc:
                self._report(msg, failure(f"calibrations: {exc}", calib_failure(exc)), False)
                continue
            pending = self.calibs.preloading(job)
            if pending is None and self.calibs.cached(keys):
                self._submit_cached(msg, keys)
            else:
                self.running[job] = msg  # holds a slot while calibrations load
                self._reserved += 1
                self._spawn(self._load_then_submit(msg, keys, pending))

    def _queue_behind(self) -> None:
        """Every worker is busy: short jobs whose calibrations are here go into the pipe of
        the worker that frees first (see ``WorkerPool``), in the backlog's order."""
        while self.queued:
            msg = self.queued.peek()
            est = self.runtimes.estimate(msg)
            worker = self.pool.behind(est)
            if worker is None or est is None:
                return
            try:
                keys = self.calibs.keys(msg["fields"])
            except Exception:
                return  # reported when it gets a free worker
            if self.calibs.preloading(msg["job"]) is not None or not self.calibs.cached(keys):
                return
            self.queued.pop()
            self._submit_cached(msg, keys, behind=(worker, est))

    def _submit_cached(
        self, msg: Message, keys: list[CacheKey], behind: tuple[Worker, float] | None = None
    ) -> None:
        """A job whose calibrations are all cached (a cache hit unless its preload missed)."""
        hit = self.calibs.take_preload_hit(msg["job"])
        self._submit(msg, keys, True if hit is None else hit, behind)

    def _on_returned(self, job: int) -> None:
        """A job that waited behind another in a worker that died: back to the backlog."""
        msg = self.running.pop(job, None)
        if msg is not None:
            self.queued.add(msg)
            self._start_queued()

    async def _load_then_submit(
        self, msg: Message, keys: list[CacheKey], pending: asyncio.Task[None] | None
    ) -> None:
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending
        preload_hit = self.calibs.take_preload_hit(msg["job"])
        missing = not self.calibs.cached(keys)
        try:
            await self.calibs.ensure(keys, msg["job"])
        except Exception as exc:
            self.running.pop(msg["job"], None)
            self._reserved -= 1
            failed = failure(f"calibration load failed: {exc!r}", calib_failure(exc))
            self._report(msg, failed, False)
            self._start_queued()
            return
        self.running.pop(msg["job"], None)
        self._reserved -= 1
        hit = bool(preload_hit) if preload_hit is not None else not missing
        self._submit(msg, keys, hit)

    def _submit(
        self,
        msg: Message,
        keys: list[CacheKey],
        cache_hit: bool,
        behind: tuple[Worker, float] | None = None,
    ) -> None:
        calibs = {}
        for key in keys:
            entry = self.cache.get(key)
            if entry is not None:
                calibs[key.calib_type] = entry.handle()
        msg["cache_hit"] = cache_hit
        self.running[msg["job"]] = msg
        started = time.time()
        job = {
            "job": msg["job"], "attempt": msg["attempt"], "payload": msg["payload"],
            "fields": msg["fields"], "calibs": calibs, "timeout_s": msg["timeout_s"],
        }  # fmt: skip
        timeout_s = float(msg["timeout_s"])
        if behind is None:
            self.pool.submit(msg["job"], job, timeout_s, self.runtimes.estimate(msg))
        else:
            self.pool.submit_behind(behind[0], msg["job"], job, timeout_s, behind[1])
        self.notices.add(msg["job"], msg["attempt"], started)

    def _on_result(self, job: int, result: dict[str, Any]) -> None:
        msg = self.running.get(job)
        if msg is not None:
            self.runtimes.observe(msg, result)
        alerts = result.pop("alerts", None)
        if alerts and job in self.running:
            # The worker is free again; the job stays running until its alerts are delivered.
            self._spawn(self._publish_then_report(job, result, alerts))
        else:
            self._complete(job, result)
        self._start_queued()

    def _complete(self, job: int, result: dict[str, Any]) -> None:
        msg = self.running.pop(job, None)
        if msg is not None:
            self.jobs_run += 1
            self._report(msg, result, bool(msg.get("cache_hit")))

    async def _publish_then_report(
        self, job: int, result: dict[str, Any], alerts: list[bytes]
    ) -> None:
        started = time.perf_counter()
        try:
            if self.alerts is None:
                raise RuntimeError("this pilot has no alert publisher (no Kafka configured)")
            await self.alerts.publish(alerts)
        except Exception as exc:
            failed = failure(f"alert delivery failed: {exc!r}", "delivery_failed")
            result = {**result, **{k: failed[k] for k in ("ok", "error", "failure")}}
        result["stages"]["publish"] = time.perf_counter() - started
        result["finished"] = time.time()
        self._complete(job, result)

    def _report(self, msg: Message, result: dict[str, Any], cache_hit: bool) -> None:
        io = self.calibs.take_loads(msg["job"])
        template = io.loads.get("template", 0)
        result["counts"] = {**result.get("counts", {}), "template_loads": template,
                            "calib_loads": sum(io.loads.values()) - template}  # fmt: skip
        if io.preload_s is not None:
            result["stages"] = {**result.get("stages", {}), "preload": io.preload_s}
        finished = fitting({
            "t": p.FINISHED,
            "job": msg["job"],
            "attempt": msg["attempt"],
            "cache_hit": cache_hit,
            **result,
            "counts": bound_counts(result.get("counts")),
            "stages": bound_stages(result.get("stages")),
        })  # fmt: skip
        self.unacked[(msg["job"], msg["attempt"])] = finished
        if not result.get("ok"):
            fields = msg.get("fields", {})
            log.warning(
                "job failed on pilot", group=fields.get("group"), detector=fields.get("detector"),
                job=msg["job"], attempt=msg["attempt"], error=result.get("error"),
            )  # fmt: skip
        self.notices.before_result(msg["job"], msg["attempt"])
        self._send(finished)

    def _send(self, msg: Message) -> None:
        """To the dispatcher if connected (what is not sent is in the next register)."""
        if self.channel is not None:
            with contextlib.suppress(ConnectionError):
                self.channel.send(msg)
