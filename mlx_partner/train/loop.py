"""The MLX side of `train`: add adapters, run mlx-lm's trainer in process with our callback.

We build the model ourselves and call `mlx_lm.tuner.trainer.train` with `Monitor`, our
`TrainingCallback` (mlx-lm's `lora.run()` would replace it with its own reporters). mlx-lm's
trainer draws a progress table on stdout; we swap it for a silent one while it runs, because
stdout is for results and our live line on stderr says more (epoch, val loss, ETA, memory).
Stopping early, Ctrl-C and a NaN loss all leave the trainer through an exception raised from (or
through) the callback; whatever happens, the best adapters and the last checkpoint stay on disk.

This module imports mlx and mlx-lm at the top (about a second; `Monitor` must subclass mlx-lm's
`TrainingCallback` when the class is made): `train.run` imports it only once training really
starts, so importing the `train` package, and `mlx-partner --help`, never pay for it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten
from mlx_lm.tuner import trainer  # trainer.train is looked up at call time (tests patch it)
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.utils import linear_to_lora_layers

from ..config import TrainSettings
from ..errors import TrainingError
from ..memory import GB
from ..plots import loss_plot
from ..runs import ADAPTER_WEIGHTS, CHECKPOINTS, LAST_CHECKPOINT, LOSS_PLOT, write_manifest
from ..testhooks import reached
from ..textfmt import stderr
from .data import Data
from .resume import batch_order, random_key
from .schedule import KEEP_CHECKPOINTS, Schedule, earliest_stop, lr_schedule, should_stop

TRAINER_FINAL = ".trainer-final.safetensors"  # where mlx-lm's own final save goes (see run_trainer)


class EarlyStop(Exception):
    """Raised from the callback when validation has stopped improving."""


class NaNLoss(Exception):
    """Raised from the callback when a loss is NaN or infinite."""

    def __init__(self, iteration: int):
        super().__init__(f"NaN loss at iteration {iteration}")
        self.iteration = iteration


def is_rank0() -> bool:
    """Under `mlx.launch` (data-parallel over several Macs) only rank 0 writes files and prints."""
    return mx.distributed.init().rank() == 0


def launch_backend(env: dict[str, str] | os._Environ[str]) -> str:
    """Which of MLX's distributed backends `mlx.launch` started this process with (from what it sets)."""
    if env.get("MLX_JACCL_COORDINATOR") or env.get("MLX_IBV_DEVICES"):
        return "jaccl"
    if env.get("NCCL_HOST_IP"):
        return "nccl"
    if env.get("OMPI_COMM_WORLD_SIZE") or env.get("PMI_SIZE"):
        return "mpi"
    if env.get("MLX_HOSTFILE"):
        return "ring"
    return "unknown"


def distributed_info(s: TrainSettings) -> dict[str, Any]:
    """The processes training together (data-parallel, `mlx.launch`), for the manifest.

    Each process takes batch_size / processes examples of every batch, so the batch must split."""
    world = mx.distributed.init()
    n = world.size()
    if s.batch_size % n:
        raise TrainingError(f"--batch-size {s.batch_size} does not split over {n} processes (mlx.launch -n {n}); "
                            f"use a multiple of {n}.")
    return {"processes": n, "backend": launch_backend(os.environ) if n > 1 else None}


def save_safetensors(path: Path, arrays: dict[str, Any]) -> None:
    """mx.save_safetensors, atomically (a reader never sees half a file, even after a power cut).

    mlx writes the file itself, so `workspace.atomic_write_bytes` does not fit: the same temp
    file + fsync + rename, around mlx's writer.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        mx.save_safetensors(str(tmp), arrays)
        with open(tmp, "rb") as f:  # on disk before the rename makes it the file readers see
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# --- the model and the optimizer ---------------------------------------------------------------


def add_adapters(model: Any, s: TrainSettings) -> None:
    """Freeze the model and add LoRA/DoRA layers (or unfreeze the top layers for full).

    The LoRA matrices start random: seeded, so two runs with one seed start from the same weights."""
    mx.random.seed(s.seed)
    model.freeze()
    n = len(model.layers)
    if s.fine_tune_type == "full":
        for layer in model.layers[-max(s.num_layers, 0) if s.num_layers >= 0 else 0:]:
            layer.unfreeze()
    elif s.fine_tune_type in ("lora", "dora"):
        params = {"rank": s.lora_rank, "scale": s.lora_scale, "dropout": s.lora_dropout}
        linear_to_lora_layers(model, s.num_layers if s.num_layers >= 0 else n, params,
                              use_dora=s.fine_tune_type == "dora")
    else:
        raise TrainingError(f"Unknown fine-tune type '{s.fine_tune_type}'; use lora, dora or full.")


def count_trainable(model: Any) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def make_optimizer(s: TrainSettings, sched: Schedule) -> Any:
    """Adam following `schedule.lr_schedule`: linear warmup, then cosine decay."""
    lr = lr_schedule(s, sched)
    decay = optim.cosine_decay(lr.peak, lr.decay_steps, lr.end)
    if lr.warmup > 0:
        warm = optim.linear_schedule(lr.start, lr.peak, lr.warmup)
        decay = optim.join_schedules([warm, decay], [lr.warmup])
    return optim.Adam(learning_rate=decay)


# --- mlx-lm's trainer, quietly ----------------------------------------------------------------


class _QuietUI:
    """Stands in for mlx-lm's TrainUI (a rich table on stdout) while our callback reports."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _QuietUI:
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False

    def advance(self) -> None:
        pass

    def report_train(self, *args: Any) -> None:
        pass

    def report_val(self, *args: Any) -> None:
        pass

    def report_save(self, *args: Any) -> None:
        pass

    @contextlib.contextmanager
    def val_task(self, total: int) -> Generator[Any, None, None]:
        yield lambda: None


@contextlib.contextmanager
def quiet_trainer(warnings: list[str]) -> Generator[None, None, None]:
    """Silence mlx-lm's progress table; collect what it would print in `warnings`."""
    quiet = {"TrainUI": _QuietUI, "rprint": lambda *a, **k: warnings.append(" ".join(map(str, a)))}
    saved = {name: getattr(trainer, name) for name in quiet if hasattr(trainer, name)}  # 0.32 has both
    for name in saved:
        setattr(trainer, name, quiet[name])
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(trainer, name, value)


@contextlib.contextmanager
def terminate_like_ctrl_c() -> Generator[None, None, None]:
    """SIGTERM (a `kill`, or a job scheduler) stops training the way Ctrl-C does, files kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- our callback -------------------------------------------------------------------------------


def progress_line(it: int, sched: Schedule, m: dict[str, Any], rate: float) -> str:
    """The live line: iteration, epoch, losses (and the best so far), speed, memory, ETA (pure)."""
    train, valid, best = m["metrics"]["train"], m["metrics"]["valid"], m.get("best")
    parts = [f"iter {it}/{sched.iters}", f"epoch {it / sched.batches_per_epoch:.2f}"]
    if train:
        parts.append(f"train {train[-1]['train_loss']:.3f}")
        if "reward_margin" in train[-1]:  # [learn-from-use] preference tuning: its loss and reward margin
            parts[-1] = f"pref loss {train[-1]['train_loss']:.3f} · margin {train[-1]['reward_margin']:+.3f}"
    if valid:
        parts.append(f"val {valid[-1]['val_loss']:.3f}"
                     + (f" (best {best['val_loss']:.3f} @{best['iteration']})" if best else ""))
    if train:
        parts += [f"{train[-1]['tokens_per_second']:.0f} tok/s", f"peak {train[-1]['peak_memory_gb']:.2f} GB"]
    if rate:
        eta = (sched.iters - it) / rate
        parts.append(f"ETA {int(eta) // 60}m{int(eta) % 60:02d}s")
    return " · ".join(parts)


class Monitor(TrainingCallback):
    """Our TrainingCallback: metrics, best checkpoint, periodic checkpoints, manifest, live line."""

    def __init__(self, run_dir: Path, manifest: dict[str, Any], model: Any, optimizer: Any,
                 sched: Schedule, s: TrainSettings, offset: int, progress: bool) -> None:
        self.run_dir, self.m, self.model, self.opt = run_dir, manifest, model, optimizer
        self.sched, self.s, self.offset, self.progress = sched, s, offset, progress
        self.start = time.time()
        self.rank0 = is_rank0()  # every process gets the callbacks; only rank 0 writes and prints
        self.t0_iter: tuple[float, int] | None = None
        self.last_line = ""

    # mlx-lm's hooks ------------------------------------------------------------------------

    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        it = info["iteration"] + self.offset
        self.m["metrics"]["train"].append({
            "iteration": it, "train_loss": info["train_loss"], "learning_rate": info["learning_rate"],
            "tokens_per_second": info["tokens_per_second"], "iterations_per_second": info["iterations_per_second"],
            "trained_tokens": info["trained_tokens"],
            "peak_memory_gb": info["peak_memory"] * 1e9 / GB,  # mlx-lm reports 1e9 bytes; we use GiB throughout
            "time": time.time(),
            **({"reward_margin": info["reward_margin"]} if "reward_margin" in info else {}),  # [learn-from-use]
        })
        if not math.isfinite(info["train_loss"]):
            raise NaNLoss(it)
        # A checkpoint between two updates of an accumulated gradient would lose the part summed so far.
        if it % self.sched.steps_per_eval == 0 and it % self.s.grad_accumulation == 0 and it < self.sched.iters:
            self.checkpoint(it)
        self.show(it)

    def on_val_loss_report(self, info: dict[str, Any]) -> None:
        it = info["iteration"] + self.offset
        valid = self.m["metrics"]["valid"]
        if self.offset and info["iteration"] == 0:
            # A resumed run validates its starting point, where an uninterrupted run does not
            # (mlx-lm validates before the step of each multiple of steps_per_eval, so at 3, 7, ...
            # for checkpoints at 4, 8, ...): recorded as a check of the resume, not as a validation
            # that could become the best or count towards early stopping.
            self.m.setdefault("resumes", []).append({"iteration": it, "val_loss": info["val_loss"], "time": time.time()})
            return
        if any(v["iteration"] == it for v in valid):
            return  # validated already before the kill that this run resumes from (the best is kept)
        valid.append({"iteration": it, "val_loss": info["val_loss"], "val_time": info["val_time"], "time": time.time(),
                      **({"reward_margin": info["reward_margin"]} if "reward_margin" in info else {})})  # [learn-from-use]
        if it == 0 and self.m.get("base_val_loss") is None:
            self.m["base_val_loss"] = info["val_loss"]
        if not math.isfinite(info["val_loss"]):
            raise NaNLoss(it)
        best = self.m.get("best")
        if it >= 1 and (best is None or info["val_loss"] < best["val_loss"]):
            if self.rank0:
                save_safetensors(self.run_dir / ADAPTER_WEIGHTS, self.weights())
            self.m["best"] = {"iteration": it, "val_loss": info["val_loss"]}
        self.write()
        self.show(it, newline=True)
        if should_stop(valid, self.s.patience, earliest_stop(self.s, self.sched)):
            raise EarlyStop()

    # helpers -------------------------------------------------------------------------------

    def weights(self) -> dict[str, Any]:
        return dict(tree_flatten(self.model.trainable_parameters()))

    def checkpoint(self, it: int) -> None:
        """Save weights and optimizer state as iteration `it`, then name them in the manifest.

        The manifest is the commit point: a kill before it leaves the previous checkpoint named
        (and whole); `last.safetensors` is a convenience copy of the newest one, written after.
        With the random key (dropout) and the seeded batch order, a resumed run goes on exactly
        as an uninterrupted one would."""
        if not self.rank0:
            return
        ck = self.run_dir / CHECKPOINTS
        weights = self.weights()
        save_safetensors(ck / f"{it:07d}_adapters.safetensors", weights)
        save_safetensors(ck / f"{it:07d}_optimizer.safetensors", dict(tree_flatten(self.opt.state)))
        self.m["checkpoint"] = {"iteration": it, "file": f"{CHECKPOINTS}/{it:07d}_adapters.safetensors",
                                "optimizer": f"{CHECKPOINTS}/{it:07d}_optimizer.safetensors",
                                "random_key": random_key()}
        self.write()
        save_safetensors(ck / LAST_CHECKPOINT, weights)
        for pattern in ("*_adapters.safetensors", "*_optimizer.safetensors"):
            for old in sorted(ck.glob(pattern))[:-KEEP_CHECKPOINTS]:
                old.unlink()
        reached("train-checkpoint-saved")

    def write(self) -> None:
        """The manifest (with the time spent so far) and loss.png, from rank 0."""
        self.m["duration_s"] = round(self.m.get("previous_duration_s", 0.0) + time.time() - self.start, 1)
        if not self.rank0:
            return
        write_manifest(self.run_dir, self.m)
        with contextlib.suppress(Exception):  # a picture is never worth failing a run
            metrics = self.m["metrics"]
            loss_plot(self.run_dir / LOSS_PLOT, [(r["iteration"], r["train_loss"]) for r in metrics["train"]],
                      [(r["iteration"], r["val_loss"]) for r in metrics["valid"]], self.m.get("base_val_loss"),
                      # [learn-from-use] a preference run's reward margin beside its loss
                      margin=[(r["iteration"], r["reward_margin"]) for r in metrics["train"] if "reward_margin" in r],
                      valid_margin=[(r["iteration"], r["reward_margin"]) for r in metrics["valid"] if "reward_margin" in r],
                      method=(self.m.get("preference") or {}).get("method", ""))

    def show(self, it: int, newline: bool = False) -> None:
        """The live line on stderr: redrawn in place on a terminal, every few reports otherwise."""
        if not self.progress or not self.rank0:
            return
        now = time.time()
        if self.t0_iter is None:
            self.t0_iter = (now, it)
        t0, i0 = self.t0_iter
        rate = (it - i0) / (now - t0) if it > i0 and now > t0 else 0.0
        line = progress_line(it, self.sched, self.m, rate)
        if sys.stderr.isatty():
            stderr("\r" + line.ljust(len(self.last_line)), nl=newline)
        elif newline or it % (self.sched.steps_per_report * 5) == 0:
            stderr(line)
        self.last_line = "" if newline else line

    def end_line(self) -> None:
        """Finish a live line left open on the terminal."""
        if self.progress and self.last_line:
            stderr()


# --- one pass of the trainer ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrainerOutcome:
    """How mlx-lm's trainer ended: early stop, or an error (Ctrl-C, NaNLoss, OOM...) or neither."""

    stopped_early: bool
    error: BaseException | None
    peak_memory_gb: float
    warnings: list[str] = field(default_factory=list)

    @property
    def nan_iteration(self) -> int | None:
        """The iteration whose loss was NaN, when that is what stopped the run."""
        return self.error.iteration if isinstance(self.error, NaNLoss) else None


def run_trainer(model: Any, opt: Any, data: Data, sched: Schedule, s: TrainSettings, offset: int,
                monitor: Monitor, objective: Any = None) -> TrainerOutcome:
    """Train from iteration `offset` to the end; every way out is caught and returned.

    `objective` (train/preference.py, --method orpo|dpo) brings its own loss and batches."""
    final = monitor.run_dir / CHECKPOINTS / TRAINER_FINAL
    args = trainer.TrainingArgs(
        batch_size=s.batch_size, iters=sched.iters - offset, val_batches=s.val_batches,
        steps_per_report=sched.steps_per_report, steps_per_eval=sched.steps_per_eval,
        steps_per_save=sched.iters + 1,  # our callback checkpoints (with the optimizer state)
        # mlx-lm writes its final weights in place (not atomically): somewhere nothing reads.
        adapter_file=str(final), max_seq_length=s.max_seq_length,
        grad_checkpoint=s.grad_checkpoint, grad_accumulation_steps=s.grad_accumulation,
    )
    mx.reset_peak_memory()
    warnings: list[str] = []
    error: BaseException | None = None
    stopped_early = False
    try:
        with quiet_trainer(warnings), terminate_like_ctrl_c():
            if args.iters > 0:
                trainer.train(model=model, optimizer=opt, train_dataset=data.train, val_dataset=data.valid,
                              args=args, training_callback=monitor,
                              # [learn-from-use] preference tuning: its loss and its batches
                              **({"loss": objective.loss, "iterate_batches": objective.batches(offset)} if objective
                                 else {"iterate_batches": batch_order(s, offset)}))
        if args.iters > 0:
            monitor.checkpoint(sched.iters)
        with contextlib.suppress(OSError):
            final.unlink()
    except EarlyStop:
        stopped_early = True
    except (KeyboardInterrupt, Exception) as exc:  # Ctrl-C, NaN, OOM, the unforeseen: files kept
        error = exc
    finally:
        monitor.end_line()
    return TrainerOutcome(stopped_early, error, mx.get_peak_memory() / GB, warnings)
