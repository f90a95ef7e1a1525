"""The default base model's architecture: a tiny random qwen2 (Qwen2.5-Instruct's layout and chat
template, tests/tiny_model.py) through train, resume, chat, fuse and the template-hygiene check.

Every other test model is llama; the default base (Qwen2.5) is qwen2: attention biases, tied and
padded embeddings, and a template that writes a default system prompt ("You are Qwen, created by
Alibaba Cloud...") whenever none is given, which must never reach training or chat beside ours.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_train import SYSTEM, settings, write_data

from mlx_partner.cli import cli
from mlx_partner.runs import read_manifest
from mlx_partner.train.run import run_train

QWEN_DEFAULT = "You are Qwen"


@pytest.fixture(scope="module")
def trained(tiny_qwen2, tmp_path_factory):
    """A finished run on the tiny qwen2, from a workspace of the usual example data."""
    ws = write_data(tmp_path_factory.mktemp("qwen2-ws"))
    result = run_train(ws, settings(tiny_qwen2, iters=10, steps_per_eval=5), run_name="q", progress=False)
    return ws, result


def test_template_hygiene_on_qwen2(tiny_qwen2):
    """Our system prompt replaces Qwen's default, once, the same way in training and chat."""
    from mlx_lm.utils import load_tokenizer

    from mlx_partner.prompts import hygiene_checks

    tokenizer = load_tokenizer(Path(tiny_qwen2))
    checks = {c.name: c for c in hygiene_checks(tokenizer, SYSTEM, "What is bread for?", "Slow work.")}
    assert {n: c.status for n, c in checks.items()} == dict.fromkeys(checks, "ok"), {n: c.detail for n, c in checks.items()}
    assert {"system role", "system prompt once", "same prompt", "no injected text"} <= set(checks)
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}],
                                             add_generation_prompt=True, tokenize=False)
    assert QWEN_DEFAULT not in rendered and rendered.count(SYSTEM) == 1


def test_train_on_qwen2_learns_and_its_adapters_load(trained, tiny_qwen2):
    from mlx_lm import generate, load

    ws, result = trained
    m = read_manifest(result.run_dir)
    assert result.status == "finished" and m["iterations_done"] == 10
    assert m["best"]["val_loss"] < m["base_val_loss"], "it learned something"
    config = json.loads((result.run_dir / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["num_layers"] == 2
    model, tokenizer = load(str(tiny_qwen2), adapter_path=str(result.run_dir))
    assert type(model).__module__.endswith("qwen2")
    assert isinstance(generate(model, tokenizer, "Hello", max_tokens=3), str)


def test_resume_on_qwen2_reaches_the_uninterrupted_adapters(trained, tiny_qwen2, tmp_path, monkeypatch):
    """The qwen2 adapters (biases included in the model, not in LoRA) checkpoint and resume exactly."""
    import mlx.core as mx
    from test_train_resume import Recorder

    ws, whole = trained
    again = write_data(tmp_path)
    s = settings(tiny_qwen2, iters=10, steps_per_eval=5)
    with monkeypatch.context() as mp:
        Recorder(mp, stop_after=7)
        stopped = run_train(again, s, run_name="q", progress=False)
    assert stopped.status == "stopped" and read_manifest(stopped.run_dir)["checkpoint"]["iteration"] == 5
    resumed = run_train(again, replace(s, learning_rate=1.0), resume=True, run_name="q", progress=False)
    assert resumed.status == "finished" and read_manifest(resumed.run_dir)["iterations_done"] == 10
    for name in ("adapters.safetensors", "checkpoints/last.safetensors"):
        a, b = mx.load(str(whole.run_dir / name)), mx.load(str(resumed.run_dir / name))
        assert set(a) == set(b)
        worst = max(mx.abs(a[k] - b[k]).max().item() for k in a)
        assert worst <= 1e-5, f"{name} differs from the uninterrupted run's by {worst}"


def test_chat_on_qwen2_uses_the_runs_system_prompt(trained):
    ws, result = trained
    out = CliRunner().invoke(cli, ["-w", str(ws.root), "chat", "--run", "q", "--prompt", "What is bread for?",
                                   "--max-tokens", "6", "--temp", "0"])
    assert out.exit_code == 0, out.output
    assert out.stdout.strip(), "an answer"
    assert "Traceback" not in out.output


def test_fuse_on_qwen2_checks_and_chats(trained):
    """fuse merges the adapters into the qwen2 base and checks the fused logits (its own check)."""
    ws, result = trained
    runner = CliRunner()
    fused = runner.invoke(cli, ["-w", str(ws.root), "fuse", "--run", "q"])
    assert fused.exit_code == 0, fused.output
    target = ws.models_dir / "q"
    assert json.loads((target / "config.json").read_text())["model_type"] == "qwen2"
    chat = runner.invoke(cli, ["-w", str(ws.root), "chat", "--prompt", "Hello?", "--max-tokens", "5", "--temp", "0"])
    assert chat.exit_code == 0, chat.output
    assert "fused model" in chat.stderr and chat.stdout.strip()
