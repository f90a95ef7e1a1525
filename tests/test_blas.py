"""The fast CPU BLAS: probed before use, never a crash, a cached verdict, correct results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_partner import blas
from mlx_partner.cli import MLX_COMMANDS, invoked_command

linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="the BLAS swap applies only to MLX's Linux CPU wheel")

# What a command does first: the re-exec, then MLX; prints which BLAS the process really runs.
SCRIPT = """
import numpy as np
from mlx_partner.blas import reexec_with_fast_blas, status_line
reexec_with_fast_blas()
import mlx.core as mx
a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
ok = np.allclose(np.array(mx.array(a) @ mx.array(a)), a @ a, atol=1e-3)
maps = open('/proc/self/maps').read()
print('openblas' if 'libopenblas' in maps else 'reference', ok, status_line())
"""


def _run(home: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "OPENBLAS_NUM_THREADS") and not k.startswith("MLX_PARTNER_")}
    env.update({"MLX_PARTNER_HOME": str(home), **extra})
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out


def _pip_openblas() -> str:
    found = [c.path for c in blas.candidates() if c.origin == "cmeel-openblas"]
    if not found:
        pytest.fail("cmeel-openblas is a Linux dependency of mlx-partner but is not installed")
    return found[0]


def _verdicts(home: Path) -> list[dict]:
    return list(json.loads((home / "blas" / "verdicts.json").read_text())["verdicts"].values())


@pytest.mark.parametrize(("args", "command"), [
    (["train"], "train"),
    (["-w", "demo", "sources"], "sources"),  # a workspace named like a command is not a command
    (["-w", "train", "sources"], "sources"),
    (["--workspace", "x", "chat", "--prompt", "train"], "chat"),
    (["--workspace=x", "eval"], "eval"),
    (["--help"], None),
    (["--version"], None),
    ([], None),
])
def test_invoked_command_skips_the_groups_options(args, command):
    assert invoked_command(args) == command


def test_only_mlx_commands_reexec():
    assert "sources" not in MLX_COMMANDS and "generate" not in MLX_COMMANDS
    assert {"train", "chat", "fuse", "eval", "demo"} <= MLX_COMMANDS


@linux
def test_a_working_library_is_preloaded_and_the_header_names_it(tmp_path):
    out = _run(tmp_path)
    kind, ok, header = out.stdout.split(" ", 2)
    assert (kind, ok) == ("openblas", "True"), out.stdout + out.stderr
    assert "fast path" in header and "kernel" in header
    assert any(v["ok"] for v in _verdicts(tmp_path))
    assert "Note:" not in out.stderr


@linux
@pytest.mark.parametrize(("fault", "reason"), [
    ("sigill", "died with SIGILL"),
    ("hang", "hung for"),
    ("wrong", "wrong product"),
])
def test_a_failing_library_leads_to_the_reference_path_once(tmp_path, fault, reason):
    lib = _pip_openblas()
    env = {blas.CHOICE: lib, blas.TEST_FAULT: fault, "MLX_PARTNER_BLAS_PROBE_TIMEOUT": "5"}
    first = _run(tmp_path, **env)
    assert first.stdout.startswith("reference True"), first.stdout
    notes = [line for line in first.stderr.splitlines() if line.startswith("Note:")]
    assert len(notes) == 1 and reason in notes[0] and "apt install libopenblas0-pthread" in notes[0]
    [verdict] = _verdicts(tmp_path)
    assert not verdict["ok"] and reason in verdict["reason"]
    # The next run reads the verdict: no probe (a hang would cost the time-out again), no note.
    env["MLX_PARTNER_BLAS_PROBE_TIMEOUT"] = "0.001"
    second = _run(tmp_path, **env)
    assert second.stdout.startswith("reference True") and reason in second.stdout
    assert "Note:" not in second.stderr
    assert _verdicts(tmp_path) == [verdict]


@linux
def test_a_library_that_cannot_load_is_refused(tmp_path):
    junk = tmp_path / "libopenblas.so.0"
    junk.write_text("not a shared library")
    out = _run(tmp_path / "home", **{blas.CHOICE: str(junk)})
    assert out.stdout.startswith("reference True")
    assert "did not load" in out.stderr


@linux
def test_a_named_library_is_probed_and_used(tmp_path):
    out = _run(tmp_path, **{blas.CHOICE: _pip_openblas(), "OPENBLAS_NUM_THREADS": "1"})
    assert out.stdout.startswith("openblas True")
    assert "MLX_PARTNER_BLAS" in out.stdout and "1 thread)" in out.stdout


@linux
def test_can_be_turned_off(tmp_path):
    out = _run(tmp_path, **{blas.MARKER: "0"})
    assert out.stdout.startswith("reference True")
    assert "MLX_PARTNER_FAST_BLAS=0" in out.stdout
    assert not (tmp_path / "blas" / "verdicts.json").exists()


def test_thread_count_stays_within_the_cores_this_process_may_use():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= blas.thread_count() <= cores
