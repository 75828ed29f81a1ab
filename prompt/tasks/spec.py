"""Task templates as operators write them (YAML), validated before anything is stored."""

from __future__ import annotations

import hashlib
import re
import string
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prompt.events.models import NextVisit

# Fields a payload may use: in argv templates as {name}, in Python payloads as job fields.
TEMPLATE_FIELDS = frozenset(
    {
        "instrument", "group", "visit", "detector", "detector_name", "filter", "band",
        "uri", "uris", "day_obs", "obs_id", "nimages", "job", "attempt", "ra", "dec",
        "rotation", "survey", "task",
    }
)  # fmt: skip
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Selectors(_Strict):
    """Which visits a task serves. Empty list = any. Shell-style patterns (``BLOCK-3*``)."""

    surveys: list[str] = Field(default_factory=list)
    filters: list[str] = Field(default_factory=list)

    def match(self, nv: NextVisit) -> bool:
        if self.surveys and not any(fnmatchcase(nv.survey, p) for p in self.surveys):
            return False
        if self.filters:
            band = nv.filters.split("_", 1)[0]
            if not any(fnmatchcase(nv.filters, p) or fnmatchcase(band, p) for p in self.filters):
                return False
        return True


def _expand(items: list[int | str] | str) -> list[int]:
    if isinstance(items, str):
        items = [part for part in items.split(",") if part.strip()]
    out: list[int] = []
    for item in items:
        if isinstance(item, int):
            out.append(item)
            continue
        m = _RANGE.match(item)
        if m:
            lo, hi = int(m[1]), int(m[2])
            if hi < lo:
                raise ValueError(f"detector range {item!r} runs backwards")
            out.extend(range(lo, hi + 1))
        elif item.strip().isdigit():
            out.append(int(item))
        else:
            raise ValueError(f"{item!r} is not a detector number or range like '0-188'")
    return out


class Detectors(_Strict):
    include: list[int | str] | str = "0-188"
    exclude: list[int | str] | str = Field(default_factory=list)

    def resolve(self) -> list[int]:
        dropped = set(_expand(self.exclude))
        chosen = sorted({d for d in _expand(self.include) if d not in dropped})
        if not chosen:
            raise ValueError("the task selects no detector")
        if chosen[0] < 0:
            raise ValueError("detector numbers are >= 0")
        return chosen


class SleepDistribution(_Strict):
    """Run time of the built-in ``sleep`` payload, for load tests."""

    distribution: Literal["fixed", "uniform", "lognormal"] = "fixed"
    mean_s: float = Field(default=1.0, ge=0)
    sigma: float = Field(default=0.0, ge=0, description="lognormal sigma or uniform half-width")
    max_s: float = Field(default=600.0, gt=0)
    fail_rate: float = Field(default=0.0, ge=0, le=1)


class SleepPayload(_Strict):
    kind: Literal["sleep"]
    params: SleepDistribution = Field(default_factory=SleepDistribution)


class PythonPayload(_Strict):
    kind: Literal["python"]
    entry: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    params: dict[str, Any] = Field(default_factory=dict)


class ArgvPayload(_Strict):
    """A command run without a shell; each element is a template over TEMPLATE_FIELDS."""

    kind: Literal["argv"]
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("argv")
    @classmethod
    def _fields_known(cls, argv: list[str]) -> list[str]:
        for arg in argv:
            for _, name, _, _ in string.Formatter().parse(arg):
                if name is None:
                    continue
                if name not in TEMPLATE_FIELDS:
                    raise ValueError(
                        f"argv field {{{name}}} is not one of {sorted(TEMPLATE_FIELDS)}"
                    )
        return argv


Payload = Annotated[SleepPayload | PythonPayload | ArgvPayload, Field(discriminator="kind")]


class Requirements(_Strict):
    labels: list[str] = Field(default_factory=list)
    """A pilot must carry all of these labels to run the task."""


class TaskSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=100)
    instrument: str
    selectors: Selectors = Field(default_factory=Selectors)
    detectors: Detectors = Field(default_factory=Detectors)
    payload: Payload
    requirements: Requirements = Field(default_factory=Requirements)
    job_timeout_s: float = Field(default=120.0, gt=0)
    deadline_s: float = Field(default=60.0, gt=0, description="budget from image arrival")
    image_timeout_s: float = Field(default=60.0, ge=0)
    max_attempts: int = Field(default=2, ge=1, le=20)
    priority: int = 0

    @model_validator(mode="after")
    def _detectors_resolve(self) -> TaskSpec:
        self.detectors.resolve()
        return self

    def canonical(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()


class TaskFile(_Strict):
    tasks: list[TaskSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> TaskFile:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique within a file")
        return self


def load_task_file(text: str) -> TaskFile:
    """Parse YAML; raises ValueError with the field path of any problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from exc
    if isinstance(doc, list):
        doc = {"tasks": doc}
    return TaskFile.model_validate(doc)
