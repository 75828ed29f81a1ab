"""Task files for the test and load-test instruments, and applying them to a database."""

from __future__ import annotations

from typing import Any

from prompt.config import Settings
from prompt.stack import resolve_endpoints
from prompt.store import connect
from prompt.tasks import TaskFile, apply_tasks


def lsstcam_task_file(
    *,
    name: str,
    detectors: str,
    payload: dict[str, Any],
    deadline_s: float = 60.0,
    image_timeout_s: float = 60.0,
    job_timeout_s: float = 120.0,
    max_attempts: int = 2,
) -> TaskFile:
    """One task on LSSTCam science detectors (``detectors``: e.g. ``0-188`` or ``3,94``)."""
    spec = {
        "name": name, "instrument": "LSSTCam", "detectors": {"include": detectors},
        "payload": payload, "job_timeout_s": job_timeout_s, "deadline_s": deadline_s,
        "image_timeout_s": image_timeout_s, "max_attempts": max_attempts,
    }  # fmt: skip
    return TaskFile.model_validate({"tasks": [spec]})


def sleep_task_file(
    *,
    mean_s: float = 0.5,
    sigma: float = 0.0,
    distribution: str = "fixed",
    detectors: str = "0-188",
    max_attempts: int = 2,
    deadline_s: float = 60.0,
    image_timeout_s: float = 60.0,
    job_timeout_s: float = 120.0,
    fail_rate: float = 0.0,
    max_s: float = 600.0,
    name: str = "lsstcam-sleep",
) -> TaskFile:
    """The built-in load-test task: every LSSTCam science detector, ``sleep`` payload."""
    params = {"distribution": distribution, "mean_s": mean_s, "sigma": sigma,
              "fail_rate": fail_rate, "max_s": max_s}  # fmt: skip
    return lsstcam_task_file(
        name=name, detectors=detectors, payload={"kind": "sleep", "params": params},
        deadline_s=deadline_s, image_timeout_s=image_timeout_s, job_timeout_s=job_timeout_s,
        max_attempts=max_attempts,
    )  # fmt: skip


def alert_task_file(
    *,
    name: str = "lsstcam-alerts",
    detectors: str = "0-188",
    deadline_s: float = 60.0,
    image_timeout_s: float = 60.0,
    job_timeout_s: float = 120.0,
    max_attempts: int = 2,
    threshold: float = 5.0,
) -> TaskFile:
    """The reference alert pipeline on LSSTCam science detectors."""
    payload = {"kind": "python", "entry": "prompt.pipeline.task:run",
               "params": {"threshold": threshold}}  # fmt: skip
    return lsstcam_task_file(
        name=name, detectors=detectors, payload=payload, deadline_s=deadline_s,
        image_timeout_s=image_timeout_s, job_timeout_s=job_timeout_s, max_attempts=max_attempts,
    )  # fmt: skip


async def apply_task_file(settings: Settings, tasks: TaskFile) -> None:
    conn = await connect(resolve_endpoints(settings).database_url)
    try:
        await apply_tasks(conn, tasks)
    finally:
        await conn.close()
