"""Kill `train` with SIGKILL during training and during checkpoint writes; `--resume` finishes it.

The real CLI trains the tiny random model in a subprocess, validating and checkpointing every 2
iterations. Each chain of runs is killed at seeded points (a random moment of training, or the
moment a checkpoint file is being written) and resumed each time, then resumed to the end. After
every kill: every *.safetensors file a user or `--resume` reads loads with mx.load, manifest.json and
adapter_config.json parse, and the checkpoint files the manifest names (what `--resume` loads) are
there, whole, and hold that iteration's weights. Two tests aim at the narrowest windows: between a
checkpoint's files and the manifest that names them, and inside mlx-lm's own (non-atomic) final save.

To make "during a checkpoint write" a wide target, the child processes get a sitecustomize.py that
slows mx.save_safetensors down: it writes half of the file, pauses, then writes the rest. A kill in
the pause leaves a half-written file, which must never be one of the files that are read.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from harness import Running, cli_env, kill_when, start_cli

ITERS = 12
TRAIN = ["train", "--iters", str(ITERS), "--steps-per-eval", "2", "--batch-size", "4", "--patience", "0",
         "--learning-rate", "1e-3", "--quiet"]
PAUSE = 0.15  # seconds a slowed save_safetensors waits with half the file written

SLOW_SAVE = f'''
"""Test hook (tests/test_reliability_kill_train.py): a slow disk for mx.save_safetensors."""
import os, time
if os.environ.get("RELIABILITY_SLOW_SAVE"):
    import mlx.core as mx
    _real = mx.save_safetensors
    def _slow(file, arrays, *args, **kwargs):
        file = str(file)
        path = file if file.endswith(".safetensors") else file + ".safetensors"
        _real(path, arrays, *args, **kwargs)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep({PAUSE})
            f.write(data[len(data) // 2:])
    mx.save_safetensors = _slow
'''


def write_data(root: Path) -> None:
    words = ["bread", "slow", "city", "habit", "craft", "attention", "honest", "work", "street", "repair"]
    rng = random.Random(0)
    system = "You are Oona's thinking partner."
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "system_prompt.txt").write_text(system, encoding="utf-8")

    def example(i: int) -> str:
        q = f"What do you think about {words[i % 10]} and {words[(3 * i) % 10]}?"
        a = " ".join(rng.choice(words) for _ in range(12)) + "."
        return json.dumps({"messages": [{"role": "system", "content": system}, {"role": "user", "content": q},
                                        {"role": "assistant", "content": a}]}) + "\n"

    for split, n, start in (("train", 16, 0), ("valid", 4, 500)):
        (data / f"{split}.jsonl").write_text("".join(example(start + i) for i in range(n)), encoding="utf-8")


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("slow-save")
    (d / "sitecustomize.py").write_text(SLOW_SAVE, encoding="utf-8")
    return d


def check_run_dir(run_dir: Path, consistent: bool = False) -> dict:
    """Everything that is read back from a run folder is whole; returns the manifest (or {}).

    With `consistent`, also: the checkpoint files manifest.json names (what --resume loads) are
    there, whole, and hold that iteration's weights."""
    import mlx.core as mx

    for path in sorted(run_dir.rglob("*.safetensors")):
        if path.name.startswith("."):
            continue  # a temporary file, never read: it is renamed into place when whole
        try:
            arrays = mx.load(str(path))
        except Exception as exc:  # mlx raises plain RuntimeError/ValueError for a bad file
            raise AssertionError(f"{path.relative_to(run_dir)} is half-written: {exc}") from None
        assert arrays, f"{path} holds no arrays"
    for name in ("manifest.json", "adapter_config.json"):
        if (run_dir / name).exists():
            json.loads((run_dir / name).read_text(encoding="utf-8"))
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")) if (run_dir / "manifest.json").exists() else {}
    ck = manifest.get("checkpoint") or {}
    if consistent and ck.get("iteration"):
        # What --resume loads is what the manifest names: that checkpoint's weights (and optimizer
        # state), whole, and saved at that iteration (not a later one).
        named = run_dir / ck.get("file", "checkpoints/last.safetensors")
        assert named.exists(), f"the manifest names {named.name}, which is not on disk"
        assert mx.load(str(named))
        if isinstance(ck.get("optimizer"), str):
            assert mx.load(str(run_dir / ck["optimizer"]))
        own = run_dir / "checkpoints" / f"{ck['iteration']:07d}_adapters.safetensors"
        if own.exists() and own != named:
            same, got = mx.load(str(own)), mx.load(str(named))
            diff = [k for k in same if not mx.array_equal(same[k], got[k]).item()]
            assert not diff, f"{named.name}, which --resume loads, is not checkpoint {ck['iteration']} that the manifest names"
    return manifest


def start_train(ws: Path, env: dict[str, str], model: Path) -> Running:
    run_dir = ws / "adapters" / "k"
    if (run_dir / "manifest.json").exists():
        return start_cli(TRAIN + ["--resume", "--run", "k"], ws, env)
    return start_cli(TRAIN + ["--base-model", str(model), "--run", "k"], ws, env)


def training(run_dir: Path) -> bool:
    try:
        return bool(json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["metrics"]["train"])
    except (OSError, ValueError, KeyError):
        return False


def checkpoint_iteration(run_dir: Path) -> int:
    try:
        return int((json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")).get("checkpoint") or {}).get("iteration", 0))
    except (OSError, ValueError):
        return 0


def writing_checkpoint(run_dir: Path) -> bool:
    ck = run_dir / "checkpoints"
    return ck.is_dir() and any(p.name.startswith(".tmp-") for p in ck.iterdir())


@pytest.mark.parametrize("seed", [0, 1])
def test_killed_training_resumes_and_never_leaves_a_half_written_file(seed, tiny_model, hook_dir, tmp_path):
    ws = tmp_path / "ws"
    write_data(ws)
    run_dir = ws / "adapters" / "k"
    env = cli_env(None, key=None, RELIABILITY_SLOW_SAVE="1", PYTHONPATH=str(hook_dir))
    rng = random.Random(seed)
    plan = ["time", "checkpoint", "time"] if seed == 0 else ["checkpoint", "checkpoint", "time"]
    points = []
    for kind in plan:
        proc = start_train(ws, env, tiny_model)
        if kind == "time":  # a random moment once training has begun
            what = kill_when(proc, lambda: training(run_dir), delay=rng.uniform(0.0, 2.0), timeout=120)
        else:  # inside a write of a checkpoint file (adapters, last, optimizer)
            # A checkpoint writes three files (its own, last, the optimizer state), each pausing
            # PAUSE seconds half-written: the delay picks one of them.
            what = kill_when(proc, lambda: writing_checkpoint(run_dir), delay=rng.uniform(0.0, PAUSE * 3), timeout=120)
        manifest = check_run_dir(run_dir, consistent=True)
        points.append((kind, what, (manifest.get("checkpoint") or {}).get("iteration")))
        if what == "finished":
            break
    assert sum(1 for _, what, _ in points if what == "killed") >= 2, f"kills should land inside training: {points}"

    if points[-1][1] != "finished":
        final = start_train(ws, env, tiny_model).wait(timeout=300)
        assert final.returncode == 0, f"{points}\n{final}"
        assert "Traceback" not in final.output
    manifest = check_run_dir(run_dir, consistent=True)
    assert manifest["status"] == "finished" and manifest["iterations_done"] == ITERS, points
    its = [r["iteration"] for r in manifest["metrics"]["train"]]
    assert its == sorted(set(its)) and its[-1] == ITERS, f"train metrics after resumes: {its}"
    assert (ws / "adapters" / "LATEST").read_text().strip() == "k"


def _kill_in(ws: Path, env: dict[str, str], model: Path, ready) -> None:
    proc = start_train(ws, env, model)
    assert kill_when(proc, ready, timeout=120) == "killed", str(proc.result())


def test_kill_between_checkpoint_weights_and_manifest_resumes_consistently(tiny_model, hook_dir, tmp_path):
    ws = tmp_path / "ws"
    write_data(ws)
    run_dir = ws / "adapters" / "k"
    env = cli_env(None, key=None, RELIABILITY_SLOW_SAVE="1", PYTHONPATH=str(hook_dir))
    ck = run_dir / "checkpoints"

    def second_checkpoint_optimizer() -> bool:  # the optimizer state of checkpoint 4 is being written
        return (ck / "0000004_adapters.safetensors").exists() and any(
            p.name.startswith(".tmp-") and p.name.endswith("optimizer.safetensors") for p in ck.iterdir())

    def second_checkpoint_last() -> bool:  # checkpoint 4 is named in the manifest; last.safetensors being written
        return any(p.name.startswith(".tmp-") and p.name.endswith("last.safetensors") for p in ck.iterdir()) and \
            checkpoint_iteration(run_dir) >= 4

    for ready in (second_checkpoint_optimizer, second_checkpoint_last):
        _kill_in(ws, env, tiny_model, ready)
        check_run_dir(run_dir, consistent=True)
    final = start_train(ws, env, tiny_model).wait(timeout=300)
    assert final.returncode == 0, str(final)
    assert check_run_dir(run_dir, consistent=True)["iterations_done"] == ITERS


def test_kill_during_the_trainers_final_save_leaves_a_resumable_run(tiny_model, hook_dir, tmp_path):
    ws = tmp_path / "ws"
    write_data(ws)
    run_dir = ws / "adapters" / "k"
    env = cli_env(None, key=None, RELIABILITY_SLOW_SAVE="1", PYTHONPATH=str(hook_dir))
    # mlx-lm's trainer saves its final weights itself, not atomically (mlx_lm/tuner/trainer.py:380):
    # it must write where nothing reads. Kill while that file is half-written.
    hidden = run_dir / "checkpoints" / ".trainer-final.safetensors"
    last_half_written = lambda: hidden.exists()  # noqa: E731  (the slow save pauses half-way)
    _kill_in(ws, env, tiny_model, last_half_written)
    check_run_dir(run_dir)
    resumed = start_train(ws, env, tiny_model).wait(timeout=300)
    assert resumed.returncode == 0 and "Traceback" not in resumed.output, str(resumed)


def test_adapters_copied_from_the_last_checkpoint_are_written_atomically(tiny_model, tmp_path, monkeypatch):
    """With no validation after training began, adapters.safetensors is a copy of the last
    checkpoint: written to a temp file and renamed into place, like every other weights file."""
    import os
    from dataclasses import replace

    from mlx_partner.config import TrainSettings
    from mlx_partner.train.loop import Monitor
    from mlx_partner.train.run import run_train
    from mlx_partner.workspace import Workspace

    ws = tmp_path / "ws"
    write_data(ws)
    monkeypatch.setattr(Monitor, "on_val_loss_report", lambda self, info: None)  # no validation ever lands
    renamed: list[Path] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(Path(dst)), real_replace(src, dst))[1])
    s = replace(TrainSettings(), base_model=str(tiny_model), iters=4, steps_per_eval=2, batch_size=4,
                learning_rate=1e-3, patience=0)
    result = run_train(Workspace.at(ws), s, run_name="copy", progress=False)
    run_dir = result.run_dir
    assert result.status == "finished" and any("final weights" in n for n in result.notes), result.notes
    assert run_dir / "adapters.safetensors" in renamed, "renamed into place, never copied over in place"
    assert (run_dir / "adapters.safetensors").read_bytes() == (run_dir / "checkpoints" / "last.safetensors").read_bytes()
    assert not [p.name for p in run_dir.rglob(".*") if p.is_file()], "no temp file left behind"
