"""Shared by the training benchmarks: run raw mlx-lm and `mlx-partner train` as subprocesses and
read their metrics through APIs, never by scraping a console table.

Raw mlx-lm runs exactly the flow of `python -m mlx_lm lora` (its CONFIG_DEFAULTS, `load`,
`load_dataset`, `train_model`, its own progress table), through a few lines of `python -c` that
add a TrainingCallback appending each report as JSON to a file. `mlx-partner train` runs through
its console script (which picks the fast BLAS itself) and its metrics come from manifest.json.

A raw run can stop at a plateau: `"plateau_patience": N` in its config (not an mlx-lm setting; it
is taken out before mlx-lm sees the config) ends it once N validations in a row have not beaten its
best (`plateaued`, the same rule `mlx-partner train`'s patience follows, with no minimum). mlx-lm's
`train()` has no stop hook, so the callback raises a private exception from `on_val_loss_report`;
it unwinds mlx-lm's loop (its progress display closes on the way out, and the final adapter save
is skipped, which a benchmark does not need), and the script records where it stopped. This is how
`mlx-partner train` itself stops early (train/loop.py's EarlyStop).

Both sides validate on every valid example: mlx-lm's validation takes whole batches only (4 of 7
examples at batch 4, the first 4 in file order, as its CacheDataset's length sort compares dicts'
key counts), `mlx-partner train` adds the remainder as one smaller batch
(train/resume.py's `whole_set_batches`); the raw script uses the same for its validations (a
measurement, not a training change; `"whole_valid": false` in its config turns it off), so the
two losses are over the same tokens.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAW = r"""
import json, sys, time, types
import numpy as np
from mlx_lm import lora
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.datasets import load_dataset
from mlx_lm.utils import load

sys.path.insert(0, sys.argv[3])  # bench/: the plateau rule, a pure function tested on its own
from raw_mlx_lm import plateaued

cfg = dict(lora.CONFIG_DEFAULTS)
cfg.update(json.loads(sys.argv[1]))
patience = int(cfg.pop("plateau_patience", 0))  # the benchmark's, not an mlx-lm setting
if cfg.pop("whole_valid", True):  # measure on every valid example, as mlx-partner train does
    from mlx_lm.tuner import trainer
    from mlx_partner.train.resume import whole_set_batches
    _evaluate = trainer.evaluate
    def evaluate(*a, iterate_batches=trainer.iterate_batches, **k):
        return _evaluate(*a, iterate_batches=whole_set_batches(iterate_batches), **k)
    trainer.evaluate = evaluate  # train() calls it by this global name
cfg["train"] = True
args = types.SimpleNamespace(**cfg)
out = open(sys.argv[2], "a")

class Plateau(Exception):
    pass  # raised from the callback: the only way to end mlx-lm's train() early

class Report(TrainingCallback):
    def __init__(self):
        self.losses = []  # validations after training began (iteration 0 is the base model)
    def on_train_loss_report(self, info):
        out.write(json.dumps({"kind": "train", "time": time.time(), **info}) + "\n"); out.flush()
    def on_val_loss_report(self, info):
        out.write(json.dumps({"kind": "valid", "time": time.time(), **info}) + "\n"); out.flush()
        if info["iteration"] >= 1:
            self.losses.append(info["val_loss"])
            if plateaued(self.losses, patience):
                raise Plateau(info["iteration"])

np.random.seed(args.seed)
model, tokenizer = load(args.model)
train_set, valid_set, _ = load_dataset(args, tokenizer)
try:
    lora.train_model(args, model, train_set, valid_set, training_callback=Report())
except Plateau as stop:
    out.write(json.dumps({"kind": "plateau", "time": time.time(), "iteration": stop.args[0]}) + "\n")
"""


def plateaued(losses: list[float], patience: int) -> bool:
    """True once the last `patience` validation losses have not beaten the best before them
    (equal is no improvement; NaN never improves; patience 0 = never). Pure."""
    if patience <= 0:
        return False
    best_at, best = None, math.inf
    for i, loss in enumerate(losses):
        if math.isfinite(loss) and loss < best:
            best_at, best = i, loss
    return best_at is not None and len(losses) - 1 - best_at >= patience


@dataclass
class Run:
    """One training run's numbers, whichever tool ran it."""

    label: str
    wall_s: float
    train: list[dict] = field(default_factory=list)
    valid: list[dict] = field(default_factory=list)  # {"iteration", "val_loss", "elapsed_s"}
    stopped: str = ""  # why it ended before its iterations: "plateau" (raw) or "early stop" (ours)
    iterations: int = 0  # iterations trained
    name: str = ""  # ours: the run's name in the workspace (kept there with keep=True)

    @property
    def tokens_per_second(self) -> float:
        """Loss-bearing tokens over pure training time (validation excluded), over the whole run."""
        seconds, tokens, prev = 0.0, 0, 0
        for r in self.train:
            chunk = r["trained_tokens"] - prev
            prev = r["trained_tokens"]
            if r["tokens_per_second"] > 0:
                seconds += chunk / r["tokens_per_second"]
                tokens += chunk
        return tokens / seconds if seconds else 0.0

    @property
    def peak_gb(self) -> float:
        """Peak MLX memory in GiB (mlx-lm's reports count 1e9 bytes; our manifest counts GiB)."""
        gib = [r["peak_memory"] * 1e9 / 2**30 if "peak_memory" in r else r.get("peak_memory_gb", 0.0) for r in self.train]
        return max(gib, default=0.0)

    def first_reaching(self, target: float) -> float | None:
        """Seconds from launch until a validation loss <= target, or None."""
        for v in self.valid:
            if v["iteration"] >= 1 and v["val_loss"] <= target + 1e-9:
                return v["elapsed_s"]
        return None

    @property
    def best_val(self) -> float:
        return min((v["val_loss"] for v in self.valid if v["iteration"] >= 1), default=float("inf"))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def plain_env() -> dict[str, str]:
    """The environment a user's own `python -m mlx_lm lora` would see: no preloaded BLAS."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MLX_PARTNER_FAST_BLAS")}
    env["MLX_PARTNER_FAST_BLAS"] = "0"
    return env


def fast_env() -> dict[str, str] | None:
    from mlx_partner import blas

    extra = blas.fast_blas_env() if sys.platform.startswith("linux") else {}
    if extra is None:
        return None
    return {**plain_env(), **extra}


def run_raw(label: str, config: dict, env: dict[str, str], workdir: Path, timeout: float) -> Run:
    log = workdir / f"{label}-{time.time_ns()}.jsonl"
    adapter_path = workdir / f"raw-{time.time_ns()}"
    config = {**config, "adapter_path": str(adapter_path)}
    t0 = time.time()
    bench = str(Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-c", RAW, json.dumps(config), str(log), bench], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"raw mlx-lm failed ({label}):\n{proc.stderr[-2000:]}")
    run = Run(label, wall)
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "train":
            run.train.append(r)
        elif r["kind"] == "plateau":
            run.stopped = f"plateau at iteration {r['iteration']}"
        else:
            run.valid.append({"iteration": r["iteration"], "val_loss": r["val_loss"], "elapsed_s": r["time"] - t0})
    # mlx-lm validates before a step (its iteration is the steps done) and reports after one
    run.iterations = max([r["iteration"] for r in run.train + run.valid], default=0)
    shutil.rmtree(adapter_path, ignore_errors=True)
    return run


def partner_command() -> list[str]:
    script = Path(sys.executable).with_name("mlx-partner")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mlx_partner"]


def run_ours(label: str, workspace: Path, flags: list[str], env: dict[str, str], timeout: float,
             keep: bool = False) -> Run:
    """`mlx-partner train` in `workspace`; its run folder is removed after, unless `keep` (for eval)."""
    name = f"bench-{time.time_ns()}"
    t0 = time.time()
    proc = subprocess.run([*partner_command(), "-w", str(workspace), "train", "--quiet", "--run", name, *flags],
                          env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"mlx-partner train failed ({label}):\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}")
    run_dir = workspace / "adapters" / name
    m = json.loads((run_dir / "manifest.json").read_text())
    run = Run(label, wall, train=m["metrics"]["train"], name=name,
              stopped="early stop" if m.get("stopped_early") else "", iterations=m.get("iterations_done", 0))
    run.valid = [{"iteration": v["iteration"], "val_loss": v["val_loss"], "elapsed_s": v["time"] - t0}
                 for v in m["metrics"]["valid"]]
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return run


def scratch_workspace(source: Path, with_sources: bool = False) -> Path:
    """A temporary workspace holding a copy of source/data, so benchmarks leave no runs behind;
    with_sources, also sources/ and profile.md (what `mlx-partner eval` reads besides data/)."""
    data = source / "data"
    if not (data / "train.jsonl").exists():
        raise SystemExit(f"No dataset in {data}: run `mlx-partner dataset` there first, or pass --workspace.")
    ws = Path(tempfile.mkdtemp(prefix="mlx-partner-bench-"))
    shutil.copytree(data, ws / "data", ignore=shutil.ignore_patterns("pairs", "*.log"))
    if with_sources:
        if not (source / "sources").is_dir():
            raise SystemExit(f"No sources/ in {source}: `mlx-partner eval` needs her writing.")
        shutil.copytree(source / "sources", ws / "sources")
        if (source / "profile.md").exists():
            shutil.copy2(source / "profile.md", ws / "profile.md")
    return ws


def float32_copy(model: Path, workdir: Path) -> Path:
    """Raw mlx-lm trains a model as stored; on a CPU backend we train in float32. Give raw mlx-lm a
    float32 copy of a quantized or half-precision model so both sides do the same arithmetic."""
    config = json.loads((model / "config.json").read_text())
    quantized = "quantization" in config or "quantization_config" in config
    dtype = str(config.get("torch_dtype", "float32"))
    if not quantized and "32" in dtype:
        return model
    out = workdir / "float32-model"
    if not out.exists():
        cmd = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(model), "--mlx-path", str(out), "--dtype", "float32"]
        if quantized:
            cmd.append("--dequantize")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=fast_env() or plain_env())
    return out
