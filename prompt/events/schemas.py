"""The bundled Avro contracts, parsed once at start-up (never per message)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class EventKind(enum.StrEnum):
    NEXT_VISIT = "next-visit"
    NEXT_VISIT_CANCELED = "next-visit-canceled"
    IMAGE_ARRIVAL = "image-arrival"
    COMPLETION = "completion"


@dataclass(frozen=True, slots=True)
class ContractInfo:
    file: str
    bundled_id: int
    """Schema id used in the Confluent frame when no registry is configured."""


CONTRACTS: dict[EventKind, ContractInfo] = {
    EventKind.NEXT_VISIT: ContractInfo("next_visit.avsc", 1),
    EventKind.NEXT_VISIT_CANCELED: ContractInfo("next_visit_canceled.avsc", 2),
    EventKind.IMAGE_ARRIVAL: ContractInfo("image_arrival.avsc", 3),
    EventKind.COMPLETION: ContractInfo("completion.avsc", 5),  # 4: before failureKind
}


def schema_dir() -> Path:
    """Where the .avsc files are: inside an installed wheel, or ``schemas/`` of a checkout."""
    for candidate in (_PACKAGE_ROOT / "_schemas", _PACKAGE_ROOT.parent / "schemas"):
        if (candidate / "next_visit.avsc").is_file():
            return candidate
    raise FileNotFoundError("bundled Avro schemas not found (expected prompt/_schemas or schemas/)")


@dataclass(frozen=True, slots=True)
class Schema:
    """A schema in its JSON form and fastavro's parsed form."""

    raw: dict[str, Any]
    parsed: Any

    @property
    def fullname(self) -> str:
        ns = self.raw.get("namespace")
        name = str(self.raw["name"])
        return f"{ns}.{name}" if ns and "." not in name else name

    def canonical(self) -> str:
        return json.dumps(self.raw, sort_keys=True, separators=(",", ":"))


def parse_schema(raw: dict[str, Any] | str) -> Schema:
    as_dict: dict[str, Any] = json.loads(raw) if isinstance(raw, str) else raw
    return Schema(as_dict, fastavro.parse_schema(as_dict))


@cache
def bundled(kind: EventKind) -> Schema:
    path = schema_dir() / CONTRACTS[kind].file
    return parse_schema(json.loads(path.read_text()))
