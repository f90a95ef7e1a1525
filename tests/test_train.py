"""`train` on the tiny random model: the run folder, the manifest, resume, early stopping, the
failure paths (NaN, out of memory, Ctrl-C) and the CLI's errors. Each run takes a few seconds."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.config import TrainSettings
from mlx_partner.errors import TrainingError
from mlx_partner.runs import find_run, read_manifest
from mlx_partner.train.run import run_train
from mlx_partner.workspace import Workspace

SYSTEM = "You are Ada's thinking partner. Answer as Ada would, from her notes."
WORDS = ["bread", "slow", "city", "habit", "craft", "attention", "honest", "work", "street", "repair", "notebook"]
SECRET = "sk-ant-api03-THIS-IS-NOT-A-REAL-KEY-but-must-never-appear"


def write_data(root: Path, n_train: int = 24, n_valid: int = 8, system: str = SYSTEM) -> Workspace:
    rng = random.Random(0)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "system_prompt.txt").write_text(system, encoding="utf-8")

    def example(i: int) -> dict:
        q = f"What do you think about {WORDS[i % len(WORDS)]} and {WORDS[(3 * i) % len(WORDS)]}?"
        a = " ".join(rng.choice(WORDS) for _ in range(16)) + "."
        return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": q},
                             {"role": "assistant", "content": a}]}

    for split, n, start in (("train", n_train, 0), ("valid", n_valid, 500), ("test", 2, 900)):
        lines = "".join(json.dumps(example(start + i)) + "\n" for i in range(n))
        (data / f"{split}.jsonl").write_text(lines, encoding="utf-8")
    return Workspace.at(root)


def settings(model: Path, **kw) -> TrainSettings:
    base = {"base_model": str(model), "iters": 10, "learning_rate": 1e-3, "steps_per_eval": 5}
    return replace(TrainSettings(), **{**base, **kw})


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    """One finished run, shared by the tests that only read it."""
    import os

    os.environ["ANTHROPIC_API_KEY"] = SECRET  # present in the environment: must not leak
    try:
        ws = write_data(tmp_path_factory.mktemp("ws"))
        result = run_train(ws, settings(tiny_model), run_name="first", progress=False)
    finally:
        del os.environ["ANTHROPIC_API_KEY"]
    return ws, result


def test_a_run_writes_every_file(finished):
    ws, result = finished
    run = ws.adapters_dir / "first"
    assert result.status == "finished" and result.run_dir == run
    for name in ("adapters.safetensors", "adapter_config.json", "manifest.json", "loss.png",
                 "system_prompt.txt", "checkpoints/last.safetensors", "checkpoints/0000010_adapters.safetensors",
                 "checkpoints/0000010_optimizer.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("*_adapters.safetensors"))  # periodic checkpoints
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "system_prompt.txt").read_text(encoding="utf-8") == SYSTEM
    # Two checkpoints kept (5 and the final 10); the manifest names the newest, which last.safetensors copies.
    assert sorted(p.name for p in (run / "checkpoints").glob("0*")) == [
        "0000005_adapters.safetensors", "0000005_optimizer.safetensors",
        "0000010_adapters.safetensors", "0000010_optimizer.safetensors"]
    assert read_manifest(run)["checkpoint"]["file"] == "checkpoints/0000010_adapters.safetensors"
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == (run / "checkpoints" / "0000010_adapters.safetensors").read_bytes()
    assert not (run / "checkpoints" / ".trainer-final.safetensors").exists()


def test_manifest_content_and_no_secret(finished, tiny_model):
    ws, result = finished
    m = read_manifest(ws.adapters_dir / "first")
    assert m["run"] == "first" and m["status"] == "finished"
    assert m["base_model"] == str(tiny_model) and Path(m["base_model_path"]).is_absolute()
    assert m["system_prompt"] == SYSTEM
    assert m["dataset"]["counts"] == {"train": 24, "valid": 8, "test": 2}
    assert m["dataset"]["hash"].startswith("sha256:") and len(m["dataset"]["files_sha256"]) == 64
    assert m["settings"]["learning_rate"] == 1e-3 and m["settings"]["mask_prompt"] is True
    assert [r["iteration"] for r in m["metrics"]["valid"]][0] == 0
    assert len(m["metrics"]["train"]) >= 2 and all("tokens_per_second" in r for r in m["metrics"]["train"])
    assert m["base_val_loss"] == m["metrics"]["valid"][0]["val_loss"]
    best = min((r for r in m["metrics"]["valid"] if r["iteration"] >= 1), key=lambda r: r["val_loss"])
    assert m["best"] == {"iteration": best["iteration"], "val_loss": best["val_loss"]}
    assert m["best"]["val_loss"] < m["base_val_loss"]  # it learned something
    assert m["duration_s"] > 0 and m["machine"]["backend"] == "cpu"
    assert set(m["versions"]) >= {"mlx", "mlx_lm", "mlx_partner"}
    assert m["peak_memory_gb"] > 0 and m["memory_plan_gb"] > 0
    for path in (ws.adapters_dir / "first").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_adapters_are_the_best_checkpoint_and_load_in_mlx_lm(finished):
    import mlx.core as mx
    from mlx_lm import generate, load

    ws, _ = finished
    run = ws.adapters_dir / "first"
    config = json.loads((run / "adapter_config.json").read_text())
    assert Path(config["model"]).is_absolute() and config["fine_tune_type"] == "lora"
    m = read_manifest(run)
    best, last = mx.load(str(run / "adapters.safetensors")), mx.load(str(run / "checkpoints" / "last.safetensors"))
    assert set(best) == set(last)
    # mlx-lm validates before the step of each multiple of steps_per_eval, and at the end before the
    # last step (iterations 0, 4 and 9 of 10 here): the best adapters are never the final state.
    assert [v["iteration"] for v in m["metrics"]["valid"]] == [0, 4, 9] and m["iterations_done"] == 10
    assert m["best"]["iteration"] in (4, 9)
    assert any(not mx.array_equal(best[k], last[k]).item() for k in best), "adapters.safetensors is the best, not the last"
    model, tokenizer = load(config["model"], adapter_path=str(run))
    assert isinstance(generate(model, tokenizer, "Hello", max_tokens=3), str)


def test_latest_pointer_and_find_run(finished, tmp_path):
    ws, _ = finished
    assert find_run(ws) == (ws.adapters_dir / "first").resolve()
    assert find_run(ws, "first") == (ws.adapters_dir / "first").resolve()
    assert (ws.adapters_dir / "LATEST").read_text().strip() == "first"
    # Where symlinks do not work, the plain-text pointer is enough.
    copy = tmp_path / "adapters"
    copy.mkdir()
    (copy / "first").mkdir()
    (copy / "first" / "adapter_config.json").write_text("{}")
    (copy / "LATEST").write_text("first\n")
    assert find_run(tmp_path) == (copy / "first").resolve()
    with pytest.raises(TrainingError, match="No run named 'nope'.*first"):
        find_run(ws, "nope")
    with pytest.raises(TrainingError, match=r"No trained run yet in .*; run `mlx-partner train` first\."):
        find_run(tmp_path / "empty")


def test_manifest_takes_the_dataset_hash_from_dataset_json(tmp_path):
    from mlx_partner.train.data import Data, dataset_info

    ws = write_data(tmp_path)
    data = Data([], [], {"train": 0, "valid": 0, "test": 0}, "ab" * 32, SYSTEM, [])
    assert dataset_info(ws, data)["hash"] == "sha256:" + "ab" * 32
    (ws.data_dir / "dataset.json").write_text(json.dumps({"hash": "sha256:1234"}))
    assert dataset_info(ws, data)["hash"] == "sha256:1234"


@pytest.mark.parametrize("fraction, validations", [
    (0.0, [4, 9]),  # no minimum: the next validation after the best stops it
    (0.5, [4, 9, 14]),  # not before iteration 10 of 20: the first validation from there on stops it
])
def test_early_stopping_stops_and_keeps_the_best(tiny_model, tmp_path, fraction, validations):
    ws = write_data(tmp_path)
    # A learning rate of zero never improves on the first validation (mlx-lm validates before
    # steps 5, 10, 15, 20, so at iterations 4, 9, 14, 19): patience 1 stops at the next one.
    s = settings(tiny_model, learning_rate=0.0, patience=1, iters=20, min_steps_fraction=fraction)
    result = run_train(ws, s, run_name="flat", progress=False)
    m = read_manifest(result.run_dir)
    assert result.stopped_early and m["stopped_early"] and m["status"] == "finished"
    assert result.iterations < 20
    assert [v["iteration"] for v in m["metrics"]["valid"] if v["iteration"] >= 1] == validations
    assert m["best"]["iteration"] == 4
    assert m["settings"]["min_steps_fraction"] == fraction  # recorded with the other settings


def _interrupt_at(monkeypatch, iteration: int, exc: BaseException) -> None:
    """Make mlx-lm's trainer raise `exc` after the train report of `iteration`."""
    from mlx_lm.tuner import trainer

    real = trainer.train

    def train(*args, training_callback=None, **kw):
        class Wrapped:
            def on_train_loss_report(self, info):
                training_callback.on_train_loss_report(info)
                if info["iteration"] >= iteration:
                    raise exc

            def on_val_loss_report(self, info):
                training_callback.on_val_loss_report(info)

        return real(*args, training_callback=Wrapped(), **kw)

    monkeypatch.setattr(trainer, "train", train)


def test_ctrl_c_stops_cleanly_and_resume_finishes(tiny_model, tmp_path, monkeypatch):
    ws = write_data(tmp_path)
    s = settings(tiny_model, iters=15, patience=0)
    with monkeypatch.context() as mp:
        _interrupt_at(mp, 7, KeyboardInterrupt())
        stopped = run_train(ws, s, run_name="r", progress=False)
    m = read_manifest(stopped.run_dir)
    assert stopped.status == "stopped" and m["status"] == "stopped"
    assert m["checkpoint"]["iteration"] == 5 and (stopped.run_dir / "adapters.safetensors").exists()
    assert not (ws.adapters_dir / "LATEST").exists()  # not a finished run
    with pytest.raises(TrainingError, match="No trained run yet"):
        find_run(ws)

    resumed = run_train(ws, replace(s, learning_rate=123.0), resume=True, progress=False)
    m = read_manifest(resumed.run_dir)
    assert resumed.run == "r" and resumed.status == "finished" and m["iterations_done"] == 15
    assert m["settings"]["learning_rate"] == 1e-3  # a resumed run keeps its own settings
    its = [r["iteration"] for r in m["metrics"]["train"]]
    assert its == sorted(set(its)) and its[-1] == 15 and 6 in its
    assert find_run(ws).name == "r"
    with pytest.raises(TrainingError, match="finished already"):
        run_train(ws, s, resume=True, run_name="r", progress=False)


def test_nan_loss_stops_and_advises_a_lower_rate(tiny_model, tmp_path, monkeypatch):
    from mlx_lm.tuner import trainer

    real = trainer.train

    def train(*args, training_callback=None, **kw):
        class Poisoned:
            def on_train_loss_report(self, info):
                training_callback.on_train_loss_report({**info, "train_loss": float("nan")} if info["iteration"] >= 3 else info)

            def on_val_loss_report(self, info):
                training_callback.on_val_loss_report(info)

        return real(*args, training_callback=Poisoned(), **kw)

    monkeypatch.setattr(trainer, "train", train)
    ws = write_data(tmp_path)
    with pytest.raises(TrainingError, match=r"NaN at iteration 3: lower the learning rate \(e.g. --learning-rate 3e-04\)"):
        run_train(ws, settings(tiny_model), run_name="n", progress=False)
    assert read_manifest(ws.adapters_dir / "n")["status"] == "failed"


def test_out_of_memory_is_caught_with_advice(tiny_model, tmp_path, monkeypatch):
    ws = write_data(tmp_path)
    _interrupt_at(monkeypatch, 6, RuntimeError("[malloc] Unable to allocate 4096 bytes: out of memory"))
    with pytest.raises(TrainingError, match=r"ran out of memory.*--batch-size 1.*last checkpoint \(iteration 5\)"):
        run_train(ws, settings(tiny_model), run_name="o", progress=False)
    run = ws.adapters_dir / "o"
    assert read_manifest(run)["status"] == "failed" and (run / "checkpoints" / "last.safetensors").exists()


def test_dora_and_full_fine_tuning(tiny_model, tmp_path):
    ws = write_data(tmp_path)
    for kind in ("dora", "full"):
        result = run_train(ws, settings(tiny_model, fine_tune_type=kind, iters=3, learning_rate=1e-4),
                           run_name=kind, progress=False)
        assert result.status == "finished"
        assert json.loads((result.run_dir / "adapter_config.json").read_text())["fine_tune_type"] == kind


def test_continue_from_starts_at_the_earlier_adapters(finished, tiny_model):
    ws, _ = finished
    # A different rank asked for: the earlier run's adapter shape wins, so its weights fit.
    result = run_train(ws, settings(tiny_model, iters=2, lora_rank=4), run_name="again", continue_from="first",
                       progress=False)
    assert json.loads((result.run_dir / "adapter_config.json").read_text())["lora_parameters"]["rank"] == 8
    m = read_manifest(result.run_dir)
    first = read_manifest(ws.adapters_dir / "first")
    assert m["continued_from"] == "first"
    assert m["base_val_loss"] == pytest.approx(first["best"]["val_loss"], rel=1e-4)


# --- the CLI ----------------------------------------------------------------------------------


def invoke(ws_root: Path, *args: str):
    return CliRunner().invoke(cli, ["-w", str(ws_root), "train", *args])


def test_cli_trains_and_prints_the_result(tiny_model, tmp_path):
    write_data(tmp_path)
    r = invoke(tmp_path, "--base-model", str(tiny_model), "--iters", "10", "--run", "cli")
    assert r.exit_code == 0, r.output
    assert "Best validation loss" in r.stdout and "Adapters:" in r.stdout and "planned" in r.stdout
    # The header and the live line go to stderr, so stdout stays for results.
    assert "Backend:" in r.stderr and "Memory plan" in r.stderr and "Backend:" not in r.stdout
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("iter 10/10")][-1]
    for part in ("epoch", "train", "val", "tok/s", "peak", "ETA"):
        assert part in line, line
    assert (tmp_path / "adapters" / "cli" / "adapters.safetensors").exists()
    r = invoke(tmp_path, "--base-model", str(tiny_model), "--iters", "4", "--run", "cli")
    assert r.exit_code == 1 and "exists already" in r.output


def test_cli_plan_prints_only_the_plan(tiny_model, tmp_path):
    write_data(tmp_path)
    r = invoke(tmp_path, "--base-model", str(tiny_model), "--plan", "--memory-gb", "8")
    assert r.exit_code == 0, r.output
    assert "Memory plan" in r.output and "8 GB you asked to plan for" in r.output and "fits." in r.output
    assert not (tmp_path / "adapters").exists()


def test_cli_without_a_dataset_names_the_dataset_command(tiny_model, tmp_path):
    r = invoke(tmp_path, "--base-model", str(tiny_model))
    assert r.exit_code == 1 and "`mlx-partner dataset`" in r.output and "Traceback" not in r.output


def test_cli_unknown_base_model_says_how_to_get_one(tmp_path):
    write_data(tmp_path)
    r = invoke(tmp_path, "--base-model", "no-such-model-here")
    assert r.exit_code == 1 and "not found" in r.output and "models import" in r.output


def test_cli_dataset_smaller_than_batch(tiny_model, tmp_path):
    write_data(tmp_path, n_train=3)
    r = invoke(tmp_path, "--base-model", str(tiny_model), "--batch-size", "4")
    assert r.exit_code == 1 and "3 examples" in r.output and "batch size 4" in r.output
    write_data(tmp_path, n_train=12, n_valid=2)
    r = invoke(tmp_path, "--base-model", str(tiny_model), "--batch-size", "4")
    assert r.exit_code == 1 and "validation set has 2 examples" in r.output and "batch size 4" in r.output


def test_cli_broken_dataset_line(tiny_model, tmp_path):
    write_data(tmp_path)
    with open(tmp_path / "data" / "train.jsonl", "a") as f:
        f.write('{"messages": [{"role": "user", "content": "cut off\n')
    r = invoke(tmp_path, "--base-model", str(tiny_model))
    assert r.exit_code == 1 and "train.jsonl:25" in r.output and "mlx-partner dataset" in r.output


def test_cli_resume_with_nothing_to_resume(tiny_model, tmp_path):
    write_data(tmp_path)
    r = invoke(tmp_path, "--base-model", str(tiny_model), "--resume")
    assert r.exit_code == 1 and "No stopped run to resume" in r.output


def test_cli_refuses_while_another_command_holds_the_workspace(tiny_model, tmp_path, hold_lock):
    write_data(tmp_path)
    hold_lock(tmp_path, "generate")
    r = invoke(tmp_path, "--base-model", str(tiny_model), "--iters", "2")
    assert r.exit_code == 1 and "Another mlx-partner command (generate" in r.output


def test_a_real_sigterm_stops_cleanly_and_exits_130(tiny_model, tmp_path):
    """The real signal path, in a subprocess: the run is marked stopped and its checkpoint kept.

    The child is held just after its first checkpoint (the product's test hook), so the signal
    lands in the middle of training however slow the machine is, not after a guessed delay."""
    import os
    import signal
    import subprocess
    import sys

    from harness import Hooks

    write_data(tmp_path / "ws")
    hooks = Hooks(tmp_path / "hooks")
    hooks.hold("train-checkpoint-saved", 1)
    env = {**os.environ, "MLX_PARTNER_FAST_BLAS": "0", **hooks.env}
    proc = subprocess.Popen([sys.executable, "-m", "mlx_partner", "-w", str(tmp_path / "ws"), "train", "--base-model",
                             str(tiny_model), "--iters", "5000", "--steps-per-eval", "5", "--run", "sig", "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        hooks.wait("train-checkpoint-saved", timeout=300)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    m = json.loads((tmp_path / "ws" / "adapters" / "sig" / "manifest.json").read_text())
    assert m["status"] == "stopped" and m["checkpoint"]["iteration"] == 5 and m["iterations_done"] == 5
    assert "--resume" in out


def test_cli_continue_from_an_unknown_run(tiny_model, tmp_path):
    write_data(tmp_path)
    r = invoke(tmp_path, "--base-model", str(tiny_model), "--continue-from", "nope")
    assert r.exit_code == 1 and "No run named 'nope'" in r.output
    r = invoke(tmp_path, "--base-model", str(tiny_model), "--continue-from", "latest")
    assert r.exit_code == 1 and "No trained run yet" in r.output and "`mlx-partner train` first" in r.output
