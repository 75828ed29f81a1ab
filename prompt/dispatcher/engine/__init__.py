"""The dispatcher's decisions, without I/O: events and the clock in, effects out."""

from prompt.dispatcher.engine.arrivals import (
    BuildFirst,
    Decision,
    Duplicate,
    HeldOverflowError,
    Ignore,
    Noted,
    Resurrect,
)
from prompt.dispatcher.engine.config import EngineConfig
from prompt.dispatcher.engine.effects import (
    AfterCommit,
    Disconnect,
    Effect,
    HeldApplied,
    SaveHeld,
    SaveJob,
    SavePilot,
    SaveResurrectedAt,
    SaveVisitStatus,
    Send,
)
from prompt.dispatcher.engine.engine import Effects, Engine
from prompt.dispatcher.engine.model import Job, JobState, Visit, VisitKey
from prompt.dispatcher.engine.outcomes import FailureKind
from prompt.dispatcher.engine.restore import SavedState
from prompt.dispatcher.engine.snapshot import Snapshot

__all__ = [
    "AfterCommit", "BuildFirst", "Decision", "Disconnect", "Duplicate", "Effect", "Effects",
    "Engine", "EngineConfig", "FailureKind", "HeldApplied", "HeldOverflowError", "Ignore",
    "Job", "JobState", "Noted", "Resurrect", "SaveHeld", "SaveJob", "SavePilot",
    "SaveResurrectedAt", "SaveVisitStatus", "SavedState", "Send", "Snapshot", "Visit",
    "VisitKey",
]  # fmt: skip
