"""The side-effecting half of `train`: load, build LoRA, run mlx-lm's trainer with our callback.

Split from train.py (the pure planning, the run-folder contracts) to keep both readable. mlx-lm's
trainer draws its own progress table on stdout; we swap it for a silent one while it runs, because
stdout is for results and our live line on stderr says more (epoch, val loss, ETA, memory).
Stopping early, Ctrl-C and a NaN loss all leave the trainer through an exception raised from (or
through) the callback; whatever happens, the best adapters and the last checkpoint stay on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import TrainSettings
from .errors import TrainingError
from .lossplot import write_loss_png
from .memory import GB, make_plan
from .train import (
    KEEP_CHECKPOINTS,
    Schedule,
    TrainResult,
    _dataset_info,
    _machine,
    _new_run_name,
    _point_latest,
    _save,
    _versions,
    adapter_config,
    echo_err,
    header_lines,
    is_oom,
    knobs,
    load_data,
    plan_schedule,
    read_manifest,
    settings_record,
    should_stop,
)
from .workspace import Workspace, atomic_write_bytes, atomic_write_json, atomic_write_text


class _EarlyStop(Exception):
    pass


class _NaNLoss(Exception):
    def __init__(self, iteration: int):
        self.iteration = iteration


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
    def val_task(self, total: int) -> Iterator[Any]:
        yield lambda: None


@contextlib.contextmanager
def quiet_trainer(warnings: list[str]) -> Iterator[None]:
    from mlx_lm.tuner import trainer

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
def _terminate_like_ctrl_c() -> Iterator[None]:
    """SIGTERM (a `kill`, or a job scheduler) stops training the way Ctrl-C does, files kept."""
    import signal
    import threading

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


class Monitor:
    """Our TrainingCallback: metrics, best checkpoint, periodic checkpoints, manifest, live line."""

    def __init__(self, run_dir: Path, manifest: dict[str, Any], model: Any, optimizer: Any,
                 sched: Schedule, s: TrainSettings, offset: int, progress: bool) -> None:
        self.run_dir, self.m, self.model, self.opt = run_dir, manifest, model, optimizer
        self.sched, self.s, self.offset, self.progress = sched, s, offset, progress
        self.start = time.time()
        import mlx.core as mx

        # Under `mlx.launch` every process gets the callbacks; only rank 0 writes files and prints.
        self.rank0 = mx.distributed.init().rank() == 0
        self.t0_iter: tuple[float, int] | None = None
        self.last_line = ""

    # mlx-lm's hooks ------------------------------------------------------------------------

    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        it = info["iteration"] + self.offset
        rec = {
            "iteration": it, "train_loss": info["train_loss"], "learning_rate": info["learning_rate"],
            "tokens_per_second": info["tokens_per_second"], "iterations_per_second": info["iterations_per_second"],
            "trained_tokens": info["trained_tokens"],
            "peak_memory_gb": info["peak_memory"] * 1e9 / GB,  # mlx-lm reports 1e9 bytes; we use GiB throughout
            "time": time.time(),
        }
        self.m["metrics"]["train"].append(rec)
        if not math.isfinite(info["train_loss"]):
            raise _NaNLoss(it)
        if it % self.sched.steps_per_eval == 0 and it < self.sched.iters:
            self.checkpoint(it)
        self.show(it)

    def on_val_loss_report(self, info: dict[str, Any]) -> None:
        it = info["iteration"] + self.offset
        valid = self.m["metrics"]["valid"]
        if any(v["iteration"] == it for v in valid):
            return  # a resumed run validates its starting point again
        valid.append({"iteration": it, "val_loss": info["val_loss"], "val_time": info["val_time"], "time": time.time()})
        if it == 0 and self.m.get("base_val_loss") is None:
            self.m["base_val_loss"] = info["val_loss"]
        if not math.isfinite(info["val_loss"]):
            raise _NaNLoss(it)
        best = self.m.get("best")
        if it >= 1 and (best is None or info["val_loss"] < best["val_loss"]):
            if self.rank0:
                _save(self.run_dir / "adapters.safetensors", self.weights())
            self.m["best"] = {"iteration": it, "val_loss": info["val_loss"]}
        self.write()
        self.show(it, newline=True)
        if should_stop(valid, self.s.patience):
            raise _EarlyStop()

    # helpers -------------------------------------------------------------------------------

    def weights(self) -> dict[str, Any]:
        from mlx.utils import tree_flatten

        return dict(tree_flatten(self.model.trainable_parameters()))

    def checkpoint(self, it: int) -> None:
        """Save weights and optimizer state as iteration `it`, then name them in the manifest.

        The manifest is the commit point: a kill before it leaves the previous checkpoint named
        (and whole); `last.safetensors` is a convenience copy of the newest one, written after."""
        from mlx.utils import tree_flatten

        if not self.rank0:
            return
        ck = self.run_dir / "checkpoints"
        weights = self.weights()
        _save(ck / f"{it:07d}_adapters.safetensors", weights)
        _save(ck / f"{it:07d}_optimizer.safetensors", dict(tree_flatten(self.opt.state)))
        self.m["checkpoint"] = {"iteration": it, "file": f"checkpoints/{it:07d}_adapters.safetensors",
                                "optimizer": f"checkpoints/{it:07d}_optimizer.safetensors"}
        self.write()
        _save(ck / "last.safetensors", weights)
        for pattern in ("*_adapters.safetensors", "*_optimizer.safetensors"):
            for old in sorted(ck.glob(pattern))[:-KEEP_CHECKPOINTS]:
                old.unlink()

    def write(self) -> None:
        self.m["duration_s"] = round(self.m.get("previous_duration_s", 0.0) + time.time() - self.start, 1)
        if not self.rank0:
            return
        atomic_write_json(self.run_dir / "manifest.json", self.m)
        with contextlib.suppress(Exception):  # a picture is never worth failing a run
            metrics = self.m["metrics"]
            write_loss_png(self.run_dir / "loss.png", [(r["iteration"], r["train_loss"]) for r in metrics["train"]],
                           [(r["iteration"], r["val_loss"]) for r in metrics["valid"]], self.m.get("base_val_loss"))

    def show(self, it: int, newline: bool = False) -> None:
        if not self.progress or not self.rank0:
            return
        import sys

        now = time.time()
        if self.t0_iter is None:
            self.t0_iter = (now, it)
        t0, i0 = self.t0_iter
        rate = (it - i0) / (now - t0) if it > i0 and now > t0 else 0.0
        eta = (self.sched.iters - it) / rate if rate else 0.0
        train = self.m["metrics"]["train"]
        valid = self.m["metrics"]["valid"]
        parts = [f"iter {it}/{self.sched.iters}", f"epoch {it / self.sched.batches_per_epoch:.2f}"]
        if train:
            parts.append(f"train {train[-1]['train_loss']:.3f}")
        if valid:
            best = self.m.get("best")
            parts.append(f"val {valid[-1]['val_loss']:.3f}" + (f" (best {best['val_loss']:.3f} @{best['iteration']})" if best else ""))
        if train:
            parts += [f"{train[-1]['tokens_per_second']:.0f} tok/s", f"peak {train[-1]['peak_memory_gb']:.2f} GB"]
        if rate:
            parts.append(f"ETA {int(eta) // 60}m{int(eta) % 60:02d}s")
        line = " · ".join(parts)
        if sys.stderr.isatty():
            echo_err("\r" + line.ljust(len(self.last_line)), nl=newline)
        elif newline or it % (self.sched.steps_per_report * 5) == 0:
            echo_err(line)
        self.last_line = "" if newline else line


def _build(model: Any, s: TrainSettings) -> None:
    """Freeze the model and add LoRA/DoRA layers (or unfreeze the top layers for full)."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    n = len(model.layers)
    if s.fine_tune_type == "full":
        for layer in model.layers[-max(s.num_layers, 0) if s.num_layers >= 0 else 0:]:
            layer.unfreeze()
    elif s.fine_tune_type in ("lora", "dora"):
        params = {"rank": s.lora_rank, "scale": s.lora_scale, "dropout": s.lora_dropout}
        linear_to_lora_layers(model, s.num_layers if s.num_layers >= 0 else n, params, use_dora=s.fine_tune_type == "dora")
    else:
        raise TrainingError(f"Unknown fine-tune type '{s.fine_tune_type}'; use lora, dora or full.")


def _optimizer(s: TrainSettings, sched: Schedule) -> Any:
    import mlx.optimizers as optim

    lr = s.learning_rate
    decay = optim.cosine_decay(lr, max(sched.updates - sched.warmup, 1), lr * 0.1)
    if sched.warmup > 0:
        warm = optim.linear_schedule(lr * 0.01, lr, sched.warmup)
        decay = optim.join_schedules([warm, decay], [sched.warmup])
    return optim.Adam(learning_rate=decay)


def _restore_optimizer(opt: Any, model: Any, path: Path) -> bool:
    import mlx.core as mx
    from mlx.utils import tree_map_with_path

    if not path.exists():
        return False
    saved = mx.load(str(path))
    opt.init(model.trainable_parameters())
    opt.state = tree_map_with_path(lambda p, x: saved.get(p, x), opt.state)
    return True


def train_run(ws: Workspace, s: TrainSettings, *, run_name: str | None, resume: bool, memory_gb: float | None,
              continue_from: str | None, progress: bool) -> TrainResult:
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.trainer import TrainingArgs, train

    from .models import is_cpu_backend, load_model
    from .train import find_run

    adapters = ws.adapters_dir
    rank0 = mx.distributed.init().rank() == 0  # under `mlx.launch`, only rank 0 writes the run
    offset, previous = 0, None
    if resume:
        run_dir = _resumable(ws, run_name)
        previous = read_manifest(run_dir)
        s = TrainSettings(**{k: v for k, v in previous["settings"].items() if k in TrainSettings.__dataclass_fields__})
        offset = int((previous.get("checkpoint") or {}).get("iteration", 0))
    else:
        run_dir = adapters / (run_name or _new_run_name(adapters))
        if rank0 and run_dir.exists() and (run_dir / "manifest.json").exists():
            raise TrainingError(f"Run {run_dir.name} exists already; choose another --run name, or --resume it.")
    say = echo_err if progress and rank0 else (lambda *a, **k: None)
    src = None
    if continue_from:
        # The adapters must fit the layers they were trained for: take the earlier run's shape.
        src = find_run(ws, continue_from)
        shape = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
        lora = shape.get("lora_parameters") or {}
        s = dataclasses.replace(s, fine_tune_type=shape.get("fine_tune_type", s.fine_tune_type),
                                num_layers=int(shape.get("num_layers", s.num_layers)),
                                lora_rank=int(lora.get("rank", s.lora_rank)), lora_scale=float(lora.get("scale", s.lora_scale)),
                                lora_dropout=float(lora.get("dropout", s.lora_dropout)))

    loaded = load_model(s.base_model, workspace_root=ws.root)
    model, tokenizer = loaded.model, loaded.tokenizer
    if s.num_layers > len(model.layers):  # the default 16 on a smaller model means "all of them"
        s = dataclasses.replace(s, num_layers=len(model.layers))
    data = load_data(ws, tokenizer, s)
    sched = plan_schedule(len(data.train), s)
    on_cpu = is_cpu_backend()
    plan = make_plan(loaded.config, knobs(s), data.lengths, on_cpu, memory_gb)
    for line in header_lines(loaded.note, loaded.dtype) + data.notes + plan.lines():
        say(line)

    _build(model, s)
    if src is not None:
        earlier = read_manifest(src).get("base_model_path")
        if earlier and Path(earlier).resolve() != loaded.path.resolve():
            raise TrainingError(f"Run {src.name} was trained on {earlier}, not {loaded.path}; continue it with that base model.")
        try:
            model.load_weights(str(src / "adapters.safetensors"), strict=False)
        except (ValueError, OSError) as exc:
            raise TrainingError(f"The adapters of {src.name} do not fit this model ({exc}).") from None
        say(f"Starting from the adapters of {src.name}.")
    ck = (previous or {}).get("checkpoint") or {}
    if resume and offset:
        model.load_weights(str(run_dir / ck.get("file", "checkpoints/last.safetensors")), strict=False)
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    opt = _optimizer(s, sched)
    notes = list(data.notes)
    if resume and offset:
        if isinstance(ck.get("optimizer"), str) and _restore_optimizer(opt, model, run_dir / ck["optimizer"]):
            say(f"Resuming {run_dir.name} at iteration {offset}/{sched.iters} with its own settings and its optimizer "
                f"state (Adam moments, schedule step).")
        else:
            notes.append("The optimizer state was not saved with this checkpoint: Adam restarts from zero.")
            say(notes[-1])
    elif resume:
        say(f"{run_dir.name} has no checkpoint yet; starting it from the beginning.")

    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "system_prompt.txt", data.system_prompt)
        atomic_write_json(run_dir / "adapter_config.json", adapter_config(s, loaded.path, len(model.layers), sched))
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    if previous is not None:  # forget what happened after the checkpoint, except the best
        best_it = (previous.get("best") or {}).get("iteration")
        previous["metrics"] = {
            "train": [r for r in previous["metrics"]["train"] if r["iteration"] <= offset],
            "valid": [r for r in previous["metrics"]["valid"] if r["iteration"] <= offset or r["iteration"] == best_it],
        }
    m: dict[str, Any] = previous or {
        "run": run_dir.name, "base_model": s.base_model, "base_model_path": str(loaded.path),
        "system_prompt": data.system_prompt, "dataset": _dataset_info(ws, data),
        "settings": settings_record(s), "metrics": {"train": [], "valid": []}, "best": None,
        "base_val_loss": None, "continued_from": src.name if src is not None else None,
    }
    m.update({
        "status": "running", "dtype": loaded.dtype, "machine": _machine(on_cpu), "versions": _versions(),
        "schedule": sched.__dict__, "trainable_parameters": trainable,
        "memory_plan_gb": round(plan.estimate.total / GB, 3), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "previous_duration_s": (previous or {}).get("duration_s", 0.0),
    })
    monitor = Monitor(run_dir, m, model, opt, sched, s, offset, progress)
    monitor.write()

    mx.random.seed(s.seed + offset)
    np.random.seed(s.seed + offset)  # mlx-lm's batch order comes from numpy's global state
    args = TrainingArgs(
        batch_size=s.batch_size, iters=sched.iters - offset, val_batches=s.val_batches,
        steps_per_report=sched.steps_per_report, steps_per_eval=sched.steps_per_eval,
        steps_per_save=sched.iters + 1,  # our callback checkpoints (with the optimizer state)
        # mlx-lm writes its final weights in place (not atomically): somewhere nothing reads.
        adapter_file=str(run_dir / "checkpoints" / ".trainer-final.safetensors"), max_seq_length=s.max_seq_length,
        grad_checkpoint=s.grad_checkpoint, grad_accumulation_steps=s.grad_accumulation,
    )
    mx.reset_peak_memory()
    warnings: list[str] = []
    outcome: BaseException | None = None
    stopped_early = False
    try:
        with quiet_trainer(warnings), _terminate_like_ctrl_c():
            if args.iters > 0:
                train(model=model, optimizer=opt, train_dataset=data.train, val_dataset=data.valid,
                      args=args, training_callback=monitor)
        if args.iters > 0:
            monitor.checkpoint(sched.iters)
        with contextlib.suppress(OSError):
            (run_dir / "checkpoints" / ".trainer-final.safetensors").unlink()
    except _EarlyStop:
        stopped_early = True
    except KeyboardInterrupt as exc:
        outcome = exc
    except _NaNLoss as exc:
        outcome = exc
    except Exception as exc:  # OOM and anything unforeseen: record the failure, keep the files
        outcome = exc
    finally:
        if progress and monitor.last_line:
            echo_err()
    peak = mx.get_peak_memory() / GB
    for w in dict.fromkeys(warnings):
        say(w)
    done = max([r["iteration"] for r in m["metrics"]["train"]] + [offset])
    best = m.get("best")
    if best is None and outcome is None and rank0:
        # No validation after training began (a very short run): the final weights are all we have.
        # A temp file, fsynced, then renamed: a kill never leaves a half-copied adapters file.
        atomic_write_bytes(run_dir / "adapters.safetensors", (run_dir / "checkpoints" / "last.safetensors").read_bytes())
        notes.append("No validation ran after training began, so the adapters are the final weights.")
    status = "finished" if outcome is None else ("stopped" if isinstance(outcome, KeyboardInterrupt) else "failed")
    m.update({"status": status, "stopped_early": stopped_early, "iterations_done": done,
              "peak_memory_gb": round(peak, 3)})
    monitor.write()
    if status == "finished" and rank0:
        _point_latest(adapters, run_dir.name)
    base = m.get("base_val_loss")
    if best and base is not None and best["val_loss"] >= base:
        notes.append("The validation loss never went below the base model's: try a higher --learning-rate or more --epochs.")
    kept = (m.get("checkpoint") or {}).get("iteration")
    where = f"the last checkpoint (iteration {kept}) and the best adapters are kept" if kept else "the best adapters so far are kept"
    if isinstance(outcome, _NaNLoss):
        raise TrainingError(
            f"The loss became NaN at iteration {outcome.iteration}: lower the learning rate (e.g. "
            f"--learning-rate {s.learning_rate / 3:.0e}) and train again; {where} in {run_dir}."
        )
    if outcome is not None and not isinstance(outcome, KeyboardInterrupt) and not is_oom(outcome):
        raise outcome
    if outcome is not None and is_oom(outcome):
        fix = " ".join(plan.suggestion.flags) if plan.suggestion else "--batch-size 1 --grad-checkpoint --max-seq-length 512"
        raise TrainingError(
            f"Training ran out of memory ({str(outcome).strip()[:120]}); try {fix}, or check with "
            f"`mlx-partner train --plan`; {where} in {run_dir}."
        )
    return TrainResult(
        run=run_dir.name, run_dir=run_dir, status=status, plan=plan, iterations=done, total_iters=sched.iters,
        best_iteration=best["iteration"] if best else None, best_val_loss=best["val_loss"] if best else None,
        base_val_loss=base, stopped_early=stopped_early, duration_s=m["duration_s"], peak_memory_gb=peak,
        notes=notes,
    )


def _resumable(ws: Workspace, name: str | None) -> Path:
    """The named run, or the newest run that did not finish."""
    adapters = ws.adapters_dir
    if name:
        run_dir = adapters / name
        if not (run_dir / "manifest.json").exists():
            raise TrainingError(f"There is no run '{name}' in {adapters} to resume.")
    else:
        runs = sorted((p.parent for p in adapters.glob("*/manifest.json")), key=lambda p: p.stat().st_mtime)
        unfinished = [p for p in runs if read_manifest(p).get("status") != "finished"]
        if not unfinished:
            raise TrainingError(f"No stopped run to resume in {adapters}; start a new one with `mlx-partner train`.")
        run_dir = unfinished[-1]
    if read_manifest(run_dir).get("status") == "finished":
        raise TrainingError(f"Run {run_dir.name} finished already; start a new run, or continue from it with `--continue-from {run_dir.name}`.")
    return run_dir
