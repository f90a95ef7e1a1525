"""`mlx-partner train`: LoRA (or DoRA, or full) fine-tuning with mlx-lm's trainer, in process.

We build the model ourselves (mlx-lm's `lora.run()` would replace our callback), call
`mlx_lm.tuner.trainer.train` with our `TrainingCallback`, and keep everything about a run in
`adapters/<run>/`:

    adapters.safetensors, adapter_config.json   the best-validation weights, loadable by
                                                `python -m mlx_lm generate --adapter-path`
    checkpoints/                                 the last checkpoint (+ optimizer state) and a few
                                                 periodic ones, for `--resume`
    manifest.json, loss.png, system_prompt.txt  what was trained on what, and how it went

Small-data defaults: epochs become iterations, warmup then cosine decay, validation about 8
times a run over the whole valid set, early stopping with patience. `adapters/latest` (and the
plain-text `adapters/LATEST`, for file systems without symlinks) name the newest finished run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .config import Settings, TrainSettings
from .errors import DatasetError, ModelError, TrainingError
from .memory import Knobs, MemoryPlan, make_plan
from .workspace import Workspace, atomic_write_text, read_jsonl, workspace_lock

# The default learning rate (1e-4, in config.py) was chosen by experiment on SmolLM2-135M (float32,
# CPU) with the example data (examples/pairs.jsonl: 48 train, 6 valid; bench/lr_sweep.py, 4
# iterations at batch 1, answer-only validation loss from 3.852):
#     lr 1e-5 (mlx-lm's default) -> 3.823    lr 1e-4 -> 3.667    lr 3e-4 -> 3.597
# 1e-5 barely moves in a short run; 1e-4 moves 6x as far. 3e-4 goes a little further still in 4
# steps, but over a 3-epoch run on a few hundred pairs it overfits sooner, and an earlier, longer
# run (DESIGN.md) found 1e-4 took SmolLM2's val loss from 3.74 to 0.35 in 60 steps. So: 1e-4,
# with 10% warmup and cosine decay to 1e-5, the best validation checkpoint kept, early stopping.
VALIDATIONS_PER_RUN = 8
KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class Schedule:
    """How many iterations, and when to validate, report and checkpoint (all in iterations)."""

    iters: int
    batches_per_epoch: int
    updates: int  # optimizer steps: iters / grad_accumulation
    warmup: int  # in optimizer steps
    steps_per_eval: int
    steps_per_report: int


def plan_schedule(n_train: int, s: TrainSettings) -> Schedule:
    """Epochs -> iterations and the validation/report cadence for a dataset of n_train (pure)."""
    if s.batch_size < 1 or s.grad_accumulation < 1:
        raise TrainingError("--batch-size and --grad-accumulation must be at least 1.")
    if n_train < s.batch_size:
        raise TrainingError(
            f"The training set has {n_train} examples, fewer than the batch size {s.batch_size}; "
            f"use --batch-size {max(n_train, 1)} or less, or make more pairs with `mlx-partner generate`."
        )
    per_epoch = n_train // s.batch_size  # mlx-lm drops the leftover examples of each pass
    iters = s.iters if s.iters > 0 else max(1, math.ceil(s.epochs * per_epoch))
    ga = s.grad_accumulation
    iters = ga * math.ceil(iters / ga)  # an update every ga iterations: no gradient left unused
    updates = iters // ga
    warmup = min(round(s.warmup_fraction * updates), updates - 1) if s.warmup_fraction > 0 else 0
    every = s.steps_per_eval if s.steps_per_eval > 0 else max(1, iters // VALIDATIONS_PER_RUN)
    every = min(every, iters)
    report = next(d for d in range(min(10, max(1, iters // 50)), 0, -1) if every % d == 0)
    return Schedule(iters, per_epoch, updates, max(warmup, 0), every, report)


def best_checkpoint(valid: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The validation with the lowest loss after training began (iteration >= 1); first on ties."""
    best = None
    for v in valid:
        if v["iteration"] >= 1 and math.isfinite(v["val_loss"]) and (best is None or v["val_loss"] < best["val_loss"]):
            best = v
    return best


def should_stop(valid: list[dict[str, Any]], patience: int) -> bool:
    """True once `patience` validations in a row have not beaten the best one (pure)."""
    if patience <= 0:
        return False
    best = best_checkpoint(valid)
    if best is None:
        return False
    later = [v for v in valid if v["iteration"] > best["iteration"]]
    return len(later) >= patience


# --- runs on disk -----------------------------------------------------------------------------


def _root(ws: Workspace | Path | str) -> Path:
    return ws.root if isinstance(ws, Workspace) else Path(ws)


def find_run(ws: Workspace | Path | str, name: str | None = None) -> Path:
    """adapters/<name>, or the newest finished run (adapters/latest, or adapters/LATEST)."""
    adapters = _root(ws) / "adapters"
    if name:
        for path in (adapters / name, Path(name).expanduser()):
            if path.is_dir() and (path / "adapter_config.json").exists():
                return path.resolve()
        runs = sorted(p.name for p in adapters.glob("*/manifest.json") for p in [p.parent]) if adapters.is_dir() else []
        hint = f"runs there: {', '.join(runs)}" if runs else "there are none yet; run `mlx-partner train` first"
        raise TrainingError(f"No run named '{name}' in {adapters}; {hint}.")
    link = adapters / "latest"
    if link.is_dir():
        return link.resolve()
    with contextlib.suppress(OSError):
        named = (adapters / "LATEST").read_text(encoding="utf-8").strip()
        if named and (adapters / named).is_dir():
            return (adapters / named).resolve()
    raise TrainingError(f"No trained run yet in {_root(ws)}; run `mlx-partner train` first.")


def read_manifest(run_dir: Path | str) -> dict[str, Any]:
    path = Path(run_dir) / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"{path.parent} has no manifest.json, so it is not an mlx-partner run.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"Could not read {path} ({exc}).") from None


def _point_latest(adapters: Path, run: str) -> None:
    atomic_write_text(adapters / "LATEST", run + "\n")
    tmp = adapters / f".latest.{os.getpid()}"
    with contextlib.suppress(OSError):
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(run, target_is_directory=True)
        os.replace(tmp, adapters / "latest")


def _new_run_name(adapters: Path) -> str:
    base = time.strftime("run-%Y%m%d-%H%M%S")
    name, n = base, 2
    while (adapters / name).exists():
        name, n = f"{base}-{n}", n + 1
    return name


def _save(path: Path, arrays: dict[str, Any]) -> None:
    """mx.save_safetensors, atomically (a reader never sees half a file, even after a power cut)."""
    import mlx.core as mx

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


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    train: list  # (tokens, prompt_offset) per example, mlx-lm's processed chat format
    valid: list
    counts: dict[str, int]
    digest: str
    system_prompt: str
    notes: list[str]

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t, _ in self.train + self.valid]


def check_dataset_hash(ws: Workspace) -> None:
    """Refuse splits that data/dataset.json does not vouch for.

    `dataset` replaces train, valid and test one file at a time and writes dataset.json last, so a
    kill between two renames leaves splits from two different runs (an example can sit in both train
    and valid) beside the old manifest, whose hash then no longer matches. Splits made by hand,
    with no dataset.json, are taken as they are.
    """
    from .dataset import dataset_hash, load_manifest, manifest_path

    if not manifest_path(ws).exists():
        return
    recorded = load_manifest(ws).get("hash")
    if recorded and dataset_hash(ws) != recorded:
        raise DatasetError(
            f"The dataset files in {ws.data_dir} do not match data/dataset.json (an interrupted "
            "`mlx-partner dataset`?); run `mlx-partner dataset` again."
        )


def load_data(ws: Workspace, tokenizer: Any, s: TrainSettings) -> Data:
    """Read data/train.jsonl and valid.jsonl and tokenize them as mlx-lm's ChatDataset does."""
    from mlx_lm.tuner.datasets import ChatDataset

    train_path, valid_path = ws.split_path("train"), ws.split_path("valid")
    if not train_path.exists():
        raise DatasetError(f"No dataset in {ws.data_dir}: run `mlx-partner dataset` first.")
    check_dataset_hash(ws)
    sets, digest, notes = {}, hashlib.sha256(), []
    for split, path in (("train", train_path), ("valid", valid_path)):
        records, bad = read_jsonl(path)
        if bad:
            raise DatasetError(f"{bad[0]}; rebuild the dataset with `mlx-partner dataset`.")
        for n, r in enumerate(records, 1):
            msgs = r.get("messages")
            if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
                raise DatasetError(f"{path}:{n}: not a chat example ending with an assistant message; rebuild it with `mlx-partner dataset`.")
        ds = ChatDataset(records, tokenizer, mask_prompt=s.mask_prompt)
        try:
            items = [ds.process(r) for r in records]
        except Exception as exc:  # chat templates raise their own errors (e.g. no system role)
            raise TrainingError(f"The base model's chat template rejects {path.name} ({exc}); choose another base model.") from None
        keep = [(t, o) for t, o in items if min(len(t), s.max_seq_length) > o]
        if len(keep) < len(items):
            notes.append(f"{len(items) - len(keep)} {split} examples have no answer left within --max-seq-length {s.max_seq_length}; skipped.")
        sets[split] = keep
        digest.update(path.read_bytes() if path.exists() else b"")
    if not sets["valid"]:
        raise DatasetError(f"No validation examples in {valid_path}: run `mlx-partner dataset` (valid_fraction > 0).")
    if len(sets["valid"]) < s.batch_size:
        raise TrainingError(
            f"The validation set has {len(sets['valid'])} examples, fewer than the batch size {s.batch_size}; "
            f"use --batch-size {len(sets['valid'])} or less, or a larger valid_fraction in `mlx-partner dataset`."
        )
    prompt_path = ws.system_prompt_path
    if prompt_path.exists():
        system = prompt_path.read_text(encoding="utf-8")
    else:
        first = (read_jsonl(train_path)[0] or [{}])[0].get("messages", [{}])[0]
        system = first.get("content", "") if first.get("role") == "system" else ""
    counts = {"train": len(sets["train"]), "valid": len(sets["valid"])}
    test, _ = read_jsonl(ws.split_path("test"))
    counts["test"] = len(test)
    return Data(sets["train"], sets["valid"], counts, digest.hexdigest(), system, notes)


def _dataset_info(ws: Workspace, data: Data) -> dict[str, Any]:
    """The dataset's hash as `dataset` wrote it in dataset.json (so `retrain` can compare), else ours."""
    info: dict[str, Any] = {"hash": f"sha256:{data.digest}", "files_sha256": data.digest,
                            "counts": data.counts, "path": str(ws.data_dir)}
    with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
        meta = json.loads((ws.data_dir / "dataset.json").read_text(encoding="utf-8"))
        if meta.get("hash"):
            info["hash"] = meta["hash"]
    return info


# --- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    run: str
    run_dir: Path | None
    status: str  # planned | finished | stopped | failed
    plan: MemoryPlan
    iterations: int = 0
    total_iters: int = 0
    best_iteration: int | None = None
    best_val_loss: float | None = None
    base_val_loss: float | None = None
    stopped_early: bool = False
    duration_s: float = 0.0
    peak_memory_gb: float = 0.0
    notes: list[str] = field(default_factory=list)


def _machine(on_cpu: bool) -> dict[str, Any]:
    from . import blas
    from .memory import GB, available_memory

    return {
        "system": platform.system(), "release": platform.release(), "machine": platform.machine(),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "memory_gb": round(available_memory()[0] / GB, 1), "backend": "cpu" if on_cpu else "gpu",
        "blas": blas.status_line(),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"mlx_partner": __version__}
    for key, dist in (("mlx", "mlx"), ("mlx_lm", "mlx-lm")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "unknown"
    return out


def run_train(ws: Workspace | Path | str, settings: Settings | TrainSettings, *, run_name: str | None = None,
              resume: bool = False, plan_only: bool = False, memory_gb: float | None = None,
              continue_from: str | None = None, progress: bool = True) -> TrainResult:
    """Fine-tune the base model on data/ into adapters/<run>/ (or only plan it, with plan_only)."""
    ws = ws if isinstance(ws, Workspace) else Workspace.at(ws)
    s = settings.train if isinstance(settings, Settings) else settings
    if plan_only:
        return _plan(ws, s, memory_gb)
    import mlx.core as mx

    # Under `mlx.launch` (data-parallel over several Macs) rank 0 holds the lock for them all.
    rank0 = mx.distributed.init().rank() == 0
    with workspace_lock(ws, "train") if rank0 else contextlib.nullcontext():
        from .trainloop import train_run

        return train_run(ws, s, run_name=run_name, resume=resume, memory_gb=memory_gb,
                         continue_from=continue_from, progress=progress)


def _plan(ws: Workspace, s: TrainSettings, memory_gb: float | None) -> TrainResult:
    """The memory plan from config.json and the tokenized data, without loading the weights."""
    from mlx_lm.utils import load_tokenizer

    from .models import is_cpu_backend, read_config, resolve_model

    path = resolve_model(s.base_model, ws.root)
    config = read_config(path)
    try:
        tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    except Exception as exc:
        raise ModelError(f"Could not load the tokenizer of {path} ({type(exc).__name__}: {exc}).") from None
    data = load_data(ws, tokenizer, s)
    plan_schedule(len(data.train), s)
    plan = make_plan(config, knobs(s), data.lengths, is_cpu_backend(), memory_gb)
    return TrainResult("", None, "planned", plan, notes=data.notes)


def knobs(s: TrainSettings) -> Knobs:
    return Knobs(s.batch_size, s.grad_accumulation, s.max_seq_length, s.num_layers,
                 s.fine_tune_type, s.lora_rank, s.grad_checkpoint)


def settings_record(s: TrainSettings) -> dict[str, Any]:
    return dataclasses.asdict(s)


def adapter_config(s: TrainSettings, model_path: Path, n_layers: int, schedule: Schedule) -> dict[str, Any]:
    """adapter_config.json in mlx-lm's shape (what `load_adapters` and `mlx_lm lora -c` read)."""
    return {
        "model": str(model_path),  # absolute: a relative path breaks once the cwd changes
        "base_model": s.base_model,
        "fine_tune_type": s.fine_tune_type,
        "num_layers": n_layers if s.num_layers < 0 else min(s.num_layers, n_layers),
        "lora_parameters": {"rank": s.lora_rank, "scale": s.lora_scale, "dropout": s.lora_dropout},
        "batch_size": s.batch_size,
        "iters": schedule.iters,
        "learning_rate": s.learning_rate,
        "lr_schedule": {"name": "cosine_decay", "warmup": schedule.warmup, "warmup_init": s.learning_rate * 0.01,
                        "arguments": [s.learning_rate, max(schedule.updates - schedule.warmup, 1), s.learning_rate * 0.1]},
        "grad_accumulation_steps": s.grad_accumulation,
        "max_seq_length": s.max_seq_length,
        "mask_prompt": s.mask_prompt,
        "grad_checkpoint": s.grad_checkpoint,
        "seed": s.seed,
        "optimizer": "adam",
        "data": "data",
    }


def header_lines(loaded_note: str, dtype: str) -> list[str]:
    from . import blas

    line = blas.status_line()
    return [f"Backend: {loaded_note}"] + ([line] if line else []) + ([f"Compute dtype: {dtype}."] if dtype else [])


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "memory" in str(exc).lower())


def echo_err(text: str = "", nl: bool = True) -> None:
    sys.stderr.write(text + ("\n" if nl else ""))
    sys.stderr.flush()
