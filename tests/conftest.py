from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import settings

from prompt.events import NextVisit

pytest_plugins = ["prompt.testing.fixtures"]

# Property tests: a bounded run in `make test`; HYPOTHESIS_PROFILE=long for the long one.
settings.register_profile("ci", max_examples=100, derandomize=False)
settings.register_profile("long", max_examples=20_000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long profile runs for minutes per property: the suite's per-test timeout (a guard
    against a hung test in `make test`) would cut it off mid-run and hypothesis would report
    the interruption as a flaky strategy."""
    if settings().max_examples > 1_000:
        for item in items:
            given = hasattr(getattr(item, "obj", None), "hypothesis")
            if given and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(0))


def make_next_visit(i: int = 0, **changes: Any) -> dict[str, Any]:
    record = NextVisit(
        instrument="LSSTCam",
        group_id=f"2025-05-01T23:33:{i % 60:02d}.{i:03d}",
        survey="BLOCK-365",
        filters="r_57",
        position=(150.25 + i, -30.5),
        coordinate_system=2,
        camera_angle=45.0,
        rotation_system=2,
        start_time=1746142431.0 + 38 * i,
        duration=30.0,
        nimages=1,
        dome=2,
        sal_index=1,
        script_sal_index=100 + i,
        efd_stamp=1746142400.0 + 38 * i,
    ).to_record()
    record.update(changes)
    return record


@pytest.fixture
def next_visit_record() -> dict[str, Any]:
    return make_next_visit()
