"""``prompt events decode|encode``: the operator tool, run as a real process."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from prompt.events import make_notification
from tests.conftest import make_next_visit
from tests.helpers import run_prompt

KEY = "LSSTCam/20250501/MC_O_20250501_000042/MC_O_20250501_000042_R22_S11.fits"


def test_encode_then_decode_next_visit() -> None:
    record = make_next_visit(3)
    enc = run_prompt("events", "encode", "--topic-kind", "next-visit", stdin=orjson.dumps(record))
    assert enc.returncode == 0, enc.stderr.decode()
    assert enc.stdout[:5] == b"\x00\x00\x00\x00\x01"
    dec = run_prompt("events", "decode", "--topic-kind", "next-visit", stdin=enc.stdout)
    assert dec.returncode == 0, dec.stderr.decode()
    assert orjson.loads(dec.stdout) == record


def test_encode_fills_defaults_and_refuses_wrong_types() -> None:
    partial = {"instrument": "LSSTCam", "groupId": "2025-05-01T23:33:14.762", "nimages": 2}
    enc = run_prompt("events", "encode", "--topic-kind", "next-visit", stdin=orjson.dumps(partial))
    assert enc.returncode == 0, enc.stderr.decode()
    dec = orjson.loads(
        run_prompt("events", "decode", "--topic-kind", "next-visit", stdin=enc.stdout).stdout
    )
    assert dec["groupId"] == partial["groupId"] and dec["nimages"] == 2
    assert dec["survey"] == "" and dec["position"] == []

    bad = run_prompt(
        "events", "encode", "--topic-kind", "next-visit", stdin=orjson.dumps({"nimages": "two"})
    )
    assert bad.returncode == 2
    assert b"does not fit the next-visit schema" in bad.stderr
    not_json = run_prompt("events", "encode", "--topic-kind", "next-visit", stdin=b"{oops")
    assert not_json.returncode == 2 and b"not JSON" in not_json.stderr


@pytest.mark.parametrize(
    ("kind", "stdin", "words"),
    [
        ("next-visit", b"\x13garbage", b"magic byte"),
        ("next-visit", b"", b"empty"),
        ("completion", b"\x00\x00\x00\x00\x01\x02", b"schema id 1"),
        ("image-arrival", b"plain text", b"not JSON"),
    ],
)
def test_decode_bad_input_fails_clearly(kind: str, stdin: bytes, words: bytes) -> None:
    res = run_prompt("events", "decode", "--topic-kind", kind, stdin=stdin)
    assert res.returncode == 2
    assert res.stderr.startswith(b"prompt: error: ")
    assert words in res.stderr
    assert b"Traceback" not in res.stderr


def test_decode_bucket_notification_with_and_without_metadata(tmp_path: Path) -> None:
    note = make_notification("rubin-summit", KEY, event_time=1746142431.25, size=123)
    plain = run_prompt("events", "decode", "--topic-kind", "image-arrival", stdin=note)
    assert plain.returncode == 0, plain.stderr.decode()
    (item,) = orjson.loads(plain.stdout)
    assert item["detector"] == 94 and item["groupId"] is None and item["size"] == 123

    sidecar = tmp_path / "rubin-summit" / KEY.replace(".fits", ".json")
    sidecar.parent.mkdir(parents=True)
    sidecar.write_bytes(orjson.dumps({"GROUPID": "2025-05-01T23:33:14.762", "CURINDEX": 1}))
    res = run_prompt(
        "events",
        "decode",
        "--topic-kind",
        "image-arrival",
        "--raw-root",
        str(tmp_path),
        stdin=note,
    )
    assert res.returncode == 0, res.stderr.decode()
    (item,) = orjson.loads(res.stdout)
    assert item["groupId"] == "2025-05-01T23:33:14.762" and item["snap"] == 0
    # ...and the same record encodes to compact Avro and back.
    enc = run_prompt("events", "encode", "--topic-kind", "image-arrival", stdin=orjson.dumps(item))
    back = run_prompt("events", "decode", "--topic-kind", "image-arrival", stdin=enc.stdout)
    assert orjson.loads(back.stdout) == [item]
