"""Two commands on one workspace: the second refuses with a clear message; a killed one's lock is stale.

The real CLI runs in subprocesses. A `generate` is held just before its first request (the
product's test hook, mlx_partner/testhooks.py) while other commands (dataset, generate, train)
start on the same workspace: each refuses in one line, naming
the command and pid that holds the workspace, and leaves the lock alone. Then the `generate` is
killed with SIGKILL, which leaves its lock file behind; the next `generate` sees that the owner is
gone, takes the lock over and finishes the work.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner
from harness import (
    TEST_KEY,
    Hooks,
    assert_one_line_error,
    cli_env,
    make_workspace,
    run_cli,
    start_cli,
)

from mlx_partner.cli import cli

ARGS = ["generate", "--pairs", "6", "--pairs-per-round", "2", "--concurrency", "1"]  # 4 requests, one at a time
SECOND = [
    ["dataset"],
    ["generate", "--pairs", "4"],
    ["train", "--base-model", "nowhere/at-all", "--iters", "1"],
]


def _lock_owner(ws) -> dict:
    return json.loads((ws / ".mlx-partner.lock").read_text())


def test_second_writer_refuses_and_a_killed_writers_lock_is_taken_over(tmp_path, fake_anthropic):
    ws = make_workspace(tmp_path / "ws")
    env = cli_env(fake_anthropic.url)
    hooks = Hooks(tmp_path / "hooks")
    hooks.hold("generate-request", 1)  # parked before its first request, the lock held, for as long as we like
    first = start_cli(ARGS, ws, {**env, **hooks.env})
    hooks.wait("generate-request", first, timeout=120)
    assert _lock_owner(ws) == {"pid": first.pid, "command": "generate"}

    for second in SECOND:
        refused = run_cli(second, ws, env)
        assert first.alive(), "the first command must still be running for this check to mean anything"
        assert_one_line_error(refused, "another mlx-partner command", "(generate", f"pid {first.pid}")
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert _lock_owner(ws)["pid"] == first.pid, "the refused command must not touch the lock"

    first.kill()  # SIGKILL: no cleanup runs, the lock file stays
    assert _lock_owner(ws)["pid"] == first.pid
    with pytest.raises(ProcessLookupError):
        os.kill(first.pid, 0)

    result = run_cli(ARGS, ws, env)
    assert result.returncode == 0, str(result)
    assert "Accepted" in result.stdout
    assert not (ws / ".mlx-partner.lock").exists(), "a finished command releases its lock"


@pytest.mark.parametrize("content", ["", "{not json", '{"pid": 0}', '{"command": "train"}'])
def test_unreadable_lock_file_is_stale(content, tmp_path, fake_anthropic, monkeypatch):
    """A lock file cut short (a kill between creating and writing it) does not block forever."""
    ws = make_workspace(tmp_path / "ws")
    lock = ws / ".mlx-partner.lock"
    lock.write_text(content)
    old = time.time() - 3600  # left long ago, not one being written this instant
    os.utime(lock, (old, old))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    result = CliRunner().invoke(cli, ["-w", str(ws), "generate", "--pairs", "2", "--pairs-per-round", "2"])
    assert result.exit_code == 0, result.output
    assert not (ws / ".mlx-partner.lock").exists()


def test_stale_lock_whose_pid_was_reused_is_taken_over(tmp_path):
    import subprocess
    import sys

    ws = make_workspace(tmp_path / "ws")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # not mlx-partner
    try:
        lock = ws / ".mlx-partner.lock"
        lock.write_text(json.dumps({"pid": other.pid, "command": "generate"}))
        old = time.time() - 3600
        os.utime(lock, (old, old))
        result = CliRunner().invoke(cli, ["-w", str(ws), "dataset", "--base-model", "nowhere"])
        assert "Another mlx-partner command" not in result.output, result.output
    finally:
        other.kill()
        other.wait()
