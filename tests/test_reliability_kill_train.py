"""Kill `train` with SIGKILL during training and inside checkpoint writes; `--resume` finishes it,
exactly as an uninterrupted run would have.

The real CLI trains the tiny random model in a subprocess, validating and checkpointing every 2
iterations. Each chain of runs is killed at seeded points and resumed each time, then resumed to
the end. After every kill: every *.safetensors file a user or `--resume` reads loads with mx.load,
manifest.json and adapter_config.json parse, and the checkpoint the manifest names (what
`--resume` loads: adapters and Adam state) holds that iteration's weights, the ones an
uninterrupted run (the baseline) saved at that iteration. At the end the adapters equal the
baseline's and the run has reached its last iteration.

No kill depends on timing. The children get a sitecustomize.py that turns mx.save_safetensors into
a slow disk with a handshake: it writes half of the file, marks `half-written-<file>` (and
`save-half-written`) through the product's test hooks (mlx_partner/testhooks.py), then writes
the rest; a test that asked to hold there finds the process parked with the file half-written,
and kills it there. The other kind of kill lands at a moment of training after a seeded
iteration is on record.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from harness import Hooks, Running, cli_env, kill_at, kill_when, start_cli

ITERS = 12
TRAIN = ["train", "--iters", str(ITERS), "--steps-per-eval", "2", "--batch-size", "4", "--patience", "0",
         "--learning-rate", "1e-3", "--quiet"]
ATOL = 1e-5  # the baseline and the chain run the same code on one thread: equal, give or take rounding

HALF_SAVE = '''
"""Test hook (tests/test_reliability_kill_train.py): a slow disk for mx.save_safetensors."""
import os, re, shutil
if os.environ.get("RELIABILITY_HALF_SAVE"):
    import mlx.core as mx
    _real = mx.save_safetensors
    _stash = os.environ.get("RELIABILITY_STASH")
    def _half(file, arrays, *args, **kwargs):
        from mlx_partner.testhooks import reached
        file = str(file)
        path = file if file.endswith(".safetensors") else file + ".safetensors"
        name = re.sub(r"^\\.tmp-\\d+-", "", os.path.basename(path))
        _real(path, arrays, *args, **kwargs)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            reached("save-half-written")
            reached("half-written-" + name)
            f.write(data[len(data) // 2:])
        if _stash and re.match(r"\\d{7}_(adapters|optimizer)\\.safetensors$", name):
            shutil.copyfile(path, os.path.join(_stash, name))
    mx.save_safetensors = _half
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
    d = tmp_path_factory.mktemp("half-save")
    (d / "sitecustomize.py").write_text(HALF_SAVE, encoding="utf-8")
    return d


def child_env(hook_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    # One BLAS thread: the baseline and the chain compute alike, whatever else the machine is doing.
    path = os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH", "")) if p)
    return cli_env(None, key=None, RELIABILITY_HALF_SAVE="1", PYTHONPATH=path, OPENBLAS_NUM_THREADS="1",
                   MLX_PARTNER_HOME=str(home), **extra)


@pytest.fixture(scope="module")
def baseline(tiny_model, hook_dir, tmp_path_factory) -> Path:
    """An uninterrupted run: its run folder, and in stash/ every checkpoint it wrote (none deleted)."""
    root = tmp_path_factory.mktemp("baseline")
    ws, stash = root / "ws", root / "stash"
    write_data(ws)
    stash.mkdir()
    env = child_env(hook_dir, root / "home", RELIABILITY_STASH=str(stash))
    done = start_cli(TRAIN + ["--base-model", str(tiny_model), "--run", "k"], ws, env).wait(timeout=300)
    assert done.returncode == 0, str(done)
    assert sorted(p.name for p in stash.glob("*_adapters.safetensors"))[-1] == f"{ITERS:07d}_adapters.safetensors"
    return root


def close(a: dict, b: dict, what: str) -> None:
    import mlx.core as mx

    assert set(a) == set(b), f"{what}: names differ"
    off = {k: d for k in a if not (d := mx.abs(a[k].astype(mx.float32) - b[k].astype(mx.float32)).max().item()) <= ATOL}
    assert not off, f"{what} differs from the uninterrupted run's: {dict(list(off.items())[:3])}"


def check_run_dir(run_dir: Path, baseline: Path | None = None) -> dict:
    """Everything that is read back from a run folder is whole; returns the manifest (or {}).

    With the `baseline`, also: the checkpoint files manifest.json names (what --resume loads) are
    there, whole, and hold the weights and Adam state the uninterrupted run had at that iteration."""
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
    if baseline is not None and ck.get("iteration"):
        it = ck["iteration"]
        stash = baseline / "stash"
        named = run_dir / ck["file"]
        assert named.exists(), f"the manifest names {named.name}, which is not on disk"
        close(mx.load(str(named)), mx.load(str(stash / f"{it:07d}_adapters.safetensors")),
              f"{ck['file']}, which --resume loads as iteration {it},")
        close(mx.load(str(run_dir / ck["optimizer"])), mx.load(str(stash / f"{it:07d}_optimizer.safetensors")),
              f"{ck['optimizer']} (Adam state)")
    return manifest


def check_finished_as_baseline(run_dir: Path, baseline: Path) -> None:
    import mlx.core as mx

    manifest = check_run_dir(run_dir, baseline)
    assert manifest["status"] == "finished" and manifest["iterations_done"] == ITERS, manifest.get("status")
    its = [r["iteration"] for r in manifest["metrics"]["train"]]
    assert its == list(range(1, ITERS + 1)), f"train metrics after resumes: {its}"
    for name in ("adapters.safetensors", "checkpoints/last.safetensors"):
        close(mx.load(str(run_dir / name)), mx.load(str(baseline / "ws" / "adapters" / "k" / name)), name)
    assert (run_dir.parent / "LATEST").read_text().strip() == "k"


def start_train(ws: Path, env: dict[str, str], model: Path) -> Running:
    run_dir = ws / "adapters" / "k"
    if (run_dir / "manifest.json").exists():
        return start_cli(TRAIN + ["--resume", "--run", "k"], ws, env)
    return start_cli(TRAIN + ["--base-model", str(model), "--run", "k"], ws, env)


def trained_to(run_dir: Path) -> int:
    """The last training iteration the manifest has on record (0 before training)."""
    try:
        train = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["metrics"]["train"]
    except (OSError, ValueError, KeyError):
        return 0
    return train[-1]["iteration"] if train else 0


def checkpoint_iteration(run_dir: Path) -> int:
    try:
        return int((json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")).get("checkpoint") or {}).get("iteration", 0))
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("seed", [0, 1])
def test_killed_training_resumes_to_the_uninterrupted_runs_adapters(seed, tiny_model, hook_dir, baseline, tmp_path):
    ws = tmp_path / "ws"
    write_data(ws)
    run_dir = ws / "adapters" / "k"
    rng = random.Random(seed)
    plan = ["progress", "checkpoint", "progress"] if seed == 0 else ["checkpoint", "checkpoint", "progress"]
    points = []
    for n, kind in enumerate(plan):
        hooks = Hooks(tmp_path / f"hooks-{n}")
        env = child_env(hook_dir, tmp_path / "home", **hooks.env)
        start = checkpoint_iteration(run_dir)
        if kind == "progress":  # a moment of training once a seeded iteration is on record
            target = min(start + rng.randint(1, 4), ITERS - 2)
            proc = start_train(ws, env, tiny_model)
            assert kill_when(proc, lambda t=target: trained_to(run_dir) >= t, timeout=300) == "killed", str(proc.result())
            point = f"trained to {target}"
        else:  # inside the write of a weights file (a checkpoint's own, its optimizer state, last, best)
            arrival = rng.randint(1, 4)  # a resumed run writes at least 4 before it ends
            hooks.hold("save-half-written", arrival)
            proc = start_train(ws, env, tiny_model)
            kill_at(proc, hooks, "save-half-written", arrival)
            half = [p.name for d in (run_dir, run_dir / "checkpoints") for p in d.iterdir()
                    if p.name.startswith(".tmp-") or p.name == ".trainer-final.safetensors"]
            assert half, "killed with a file half-written"
            point = f"save {arrival}: {half}"
        manifest = check_run_dir(run_dir, baseline)
        points.append((kind, point, (manifest.get("checkpoint") or {}).get("iteration")))

    final = start_train(ws, child_env(hook_dir, tmp_path / "home"), tiny_model).wait(timeout=300)
    assert final.returncode == 0 and "Traceback" not in final.output, f"{points}\n{final}"
    check_finished_as_baseline(run_dir, baseline)


def test_kill_between_checkpoint_weights_and_manifest_resumes_consistently(tiny_model, hook_dir, baseline, tmp_path):
    ws = tmp_path / "ws"
    write_data(ws)
    run_dir = ws / "adapters" / "k"

    # Checkpoint 4's optimizer state half-written (its weights written, the manifest still naming 2).
    hooks = Hooks(tmp_path / "hooks-1")
    hooks.hold("half-written-0000004_optimizer.safetensors")
    kill_at(start_train(ws, child_env(hook_dir, tmp_path / "home", **hooks.env), tiny_model), hooks,
            "half-written-0000004_optimizer.safetensors")
    assert (run_dir / "checkpoints" / "0000004_adapters.safetensors").exists()
    assert check_run_dir(run_dir, baseline)["checkpoint"]["iteration"] == 2

    # Resumed from 2: checkpoint 4 named in the manifest, its copy in last.safetensors half-written.
    hooks = Hooks(tmp_path / "hooks-2")
    hooks.hold("half-written-last.safetensors", 1)
    kill_at(start_train(ws, child_env(hook_dir, tmp_path / "home", **hooks.env), tiny_model), hooks,
            "half-written-last.safetensors")
    assert check_run_dir(run_dir, baseline)["checkpoint"]["iteration"] == 4

    final = start_train(ws, child_env(hook_dir, tmp_path / "home"), tiny_model).wait(timeout=300)
    assert final.returncode == 0, str(final)
    check_finished_as_baseline(run_dir, baseline)


def test_kill_during_the_trainers_final_save_leaves_a_resumable_run(tiny_model, hook_dir, baseline, tmp_path):
    ws = tmp_path / "ws"
    write_data(ws)
    run_dir = ws / "adapters" / "k"
    # mlx-lm's trainer saves its final weights itself, not atomically (mlx_lm/tuner/trainer.py:380):
    # it must write where nothing reads. Kill while that file is half-written.
    hooks = Hooks(tmp_path / "hooks")
    hooks.hold("half-written-.trainer-final.safetensors")
    kill_at(start_train(ws, child_env(hook_dir, tmp_path / "home", **hooks.env), tiny_model), hooks,
            "half-written-.trainer-final.safetensors")
    assert (run_dir / "checkpoints" / ".trainer-final.safetensors").exists()
    manifest = check_run_dir(run_dir, baseline)
    assert manifest["status"] == "running" and manifest["checkpoint"]["iteration"] == ITERS - 2
    resumed = start_train(ws, child_env(hook_dir, tmp_path / "home"), tiny_model).wait(timeout=300)
    assert resumed.returncode == 0 and "Traceback" not in resumed.output, str(resumed)
    check_finished_as_baseline(run_dir, baseline)  # it reached the last iteration, not just exit 0


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
