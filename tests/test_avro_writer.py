"""The planned Avro writer writes fastavro's bytes for every contract, and refuses misfits."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prompt.events import AvroCodec, EncodeError, EventKind, LocalSchemaRegistry, bundled
from prompt.events.writer import plan

_SIMPLE: dict[str, st.SearchStrategy[Any]] = {
    "string": st.text(max_size=40),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "double": st.floats() | st.integers(-(2**53), 2**53),
    "boolean": st.booleans(),
}


def _values(kind: Any) -> st.SearchStrategy[Any]:
    if isinstance(kind, list):
        return st.none() | _values(kind[1])
    if isinstance(kind, dict):
        if kind["type"] == "enum":
            return st.sampled_from(kind["symbols"])
        if kind["type"] == "map":
            return st.dictionaries(st.text(max_size=10), _values(kind["values"]), max_size=4)
        if kind["type"] == "array":
            return st.lists(_values(kind["items"]), max_size=4)
        return _values(kind["type"])
    return _SIMPLE[kind]


def _records(kind: EventKind) -> st.SearchStrategy[dict[str, Any]]:
    fields = bundled(kind).raw["fields"]
    return st.fixed_dictionaries({f["name"]: _values(f["type"]) for f in fields})


def _fastavro(kind: EventKind, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, bundled(kind).parsed, record)
    return buf.getvalue()


@pytest.mark.parametrize("kind", list(EventKind))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_plan_writes_fastavros_bytes(kind: EventKind, data: st.DataObject) -> None:
    record = data.draw(_records(kind))
    assert plan(bundled(kind).raw)(record) == _fastavro(kind, record)


@pytest.mark.parametrize("kind", list(EventKind))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_field_left_out_takes_its_default_as_with_fastavro(
    kind: EventKind, data: st.DataObject
) -> None:
    record = data.draw(_records(kind))
    defaulted = [f["name"] for f in bundled(kind).raw["fields"] if "default" in f]
    for name in data.draw(st.lists(st.sampled_from(defaulted), unique=True)) if defaulted else []:
        del record[name]
    assert plan(bundled(kind).raw)(record) == _fastavro(kind, record)


def test_every_contract_is_written_by_its_plan() -> None:
    registry = LocalSchemaRegistry()
    for kind in EventKind:
        codec = AvroCodec(kind, registry)
        assert codec._write is not codec._fastavro_body, kind  # the plan knows every type


_COMPLETION: dict[str, Any] = {
    "instrument": "LSSTCam", "groupId": "2025-05-01T00:00:00.000", "detector": 12, "jobId": 7,
    "task": "t", "taskVersion": 1, "status": "finished", "attempt": 1, "pilot": "p",
    "cacheHit": True, "error": None, "failureKind": None, "nextVisitReceived": 1.7e9,
    "preloaded": None, "imageArrived": 1.7e9, "imageConsumed": 1.7e9, "dispatched": 1.7e9,
    "started": 1.7e9, "finished": 1.7e9, "completed": 1.7e9, "deadline": 1.7e9,
    "latencySeconds": 0.1, "dispatchMs": 5.0, "runSeconds": 0.1, "counts": {"n": 1},
    "stageSeconds": {"sleep": 0.1},
}  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"detector": 1.5},  # fastavro would truncate it to 1
        {"status": "lost"},
        {"pilot": 7},
        {"counts": {"n": "3"}},
        {"completed": None},
    ],
)
def test_a_record_that_does_not_fit_is_an_encode_error(change: dict[str, Any]) -> None:
    codec = AvroCodec(EventKind.COMPLETION, LocalSchemaRegistry())
    assert codec.encode(_COMPLETION)[5:] == _fastavro(EventKind.COMPLETION, _COMPLETION)
    record = dict(_COMPLETION)
    with pytest.raises(EncodeError, match="does not fit the completion schema"):
        codec.encode({**record, **change})
    incomplete = dict(record)
    del incomplete["groupId"]
    with pytest.raises(EncodeError):
        codec.encode(incomplete)


def test_a_type_the_plan_does_not_know_is_left_to_fastavro() -> None:
    with pytest.raises(NotImplementedError):
        plan({"type": "record", "name": "R", "fields": [{"name": "b", "type": "bytes"}]})
