"""The pure half of `train`: epochs -> iterations, the learning-rate schedule, early stopping.

Nothing here touches a file or MLX, so every rule is a table-driven test (tests/test_train_plan.py).
Small-data defaults: epochs become iterations, warmup then cosine decay, validation about 8 times
a run over the whole valid set, the best validation kept, early stopping with patience (counted
in validations) once at least half the planned iterations are done.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TrainSettings
from ..errors import TrainingError
from ..memory import Knobs

# The defaults (config.py: lr 1e-4, 3 epochs, 10% warmup, cosine to 1e-5) were held against raw
# mlx-lm's defaults run to a plateau (bench/time_to_quality.py; README "The training recipe") on
# SmolLM2-135M (float32, CPU) with the example workspace (56 train, 7 valid, all 7 validated):
#     raw mlx-lm, lr 1e-5 constant: best 3.432 at iteration 109, 1304 s
#     lr 1e-4 x 3 epochs (default): 3.400 at 29, raw's best reached at ~270 s (0.2x)
#     lr 2e-4 x 3: 3.405, 372 s    lr 5e-5 x 4: 3.406, 339 s    default + dropout 0.1: 3.399, 278 s
# Neither rate nor dropout beat the default, so it stands. (An older 4-step sweep, bench/lr_sweep.py,
# picked 1e-4 first: 1e-5 barely moves in a short run.)
VALIDATIONS_PER_RUN = 8
KEEP_CHECKPOINTS = 2  # periodic checkpoints kept on disk (each: adapters + optimizer state)
WARMUP_START = 0.01  # warmup begins at this share of the peak learning rate
DECAY_END = 0.1  # cosine decay ends at this share of it


@dataclass(frozen=True)
class Schedule:
    """How many iterations, and when to validate, report and checkpoint (all in iterations)."""

    iters: int
    batches_per_epoch: int
    updates: int  # optimizer steps: iters / grad_accumulation
    warmup: int  # in optimizer steps
    steps_per_eval: int
    steps_per_report: int


@dataclass(frozen=True)
class LRSchedule:
    """Linear warmup from `start` to `peak` over `warmup` updates, then cosine decay to `end`."""

    start: float
    peak: float
    warmup: int
    decay_steps: int
    end: float


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


def lr_schedule(s: TrainSettings, sched: Schedule) -> LRSchedule:
    """The learning rate over the run's updates: what the optimizer follows and the config records."""
    lr = s.learning_rate
    return LRSchedule(lr * WARMUP_START, lr, sched.warmup, max(sched.updates - sched.warmup, 1), lr * DECAY_END)


def best_checkpoint(valid: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The validation with the lowest loss after training began (iteration >= 1); first on ties."""
    best = None
    for v in valid:
        if v["iteration"] >= 1 and math.isfinite(v["val_loss"]) and (best is None or v["val_loss"] < best["val_loss"]):
            best = v
    return best


def earliest_stop(s: TrainSettings, sched: Schedule) -> int:
    """The first iteration at which early stopping may fire: `min_steps_fraction` of the planned
    iterations (0 = from the start). Before it a warmup-and-cosine run is still at a high learning
    rate, where a few validations without improvement say little about where it ends up."""
    fraction = min(max(s.min_steps_fraction, 0.0), 1.0)
    return math.ceil(fraction * sched.iters)


def should_stop(valid: list[dict[str, Any]], patience: int, earliest: int = 0) -> bool:
    """True once `patience` validations in a row have not beaten the best one, and the latest
    validation is at iteration `earliest` or later (pure).

    Patience counts validations, not iterations, and it counts those before `earliest` too: a run
    whose best is long past stops at the first validation from `earliest` on.
    """
    if patience <= 0 or not valid or valid[-1]["iteration"] < earliest:
        return False
    best = best_checkpoint(valid)
    if best is None:
        return False
    later = [v for v in valid if v["iteration"] > best["iteration"]]
    return len(later) >= patience


def knobs(s: TrainSettings) -> Knobs:
    """The settings that move peak memory, for the memory plan. A preference step (orpo, dpo)
    puts each example through the model twice, chosen and rejected: twice the activations."""
    return Knobs(s.batch_size, s.grad_accumulation, s.max_seq_length, s.num_layers,
                 s.fine_tune_type, s.lora_rank, s.grad_checkpoint,
                 rows_per_example=1 if s.method == "sft" else 2)


def fit_layers(s: TrainSettings, n_layers: int) -> TrainSettings:
    """The default 16 layers on a smaller model means "all of them"."""
    return dataclasses.replace(s, num_layers=n_layers) if s.num_layers > n_layers else s


def settings_from_adapters(s: TrainSettings, shape: dict[str, Any]) -> TrainSettings:
    """`s` with the adapter shape of an earlier run's adapter_config.json, so its weights fit."""
    lora = shape.get("lora_parameters") or {}
    return dataclasses.replace(
        s, fine_tune_type=shape.get("fine_tune_type", s.fine_tune_type),
        num_layers=int(shape.get("num_layers", s.num_layers)),
        lora_rank=int(lora.get("rank", s.lora_rank)), lora_scale=float(lora.get("scale", s.lora_scale)),
        lora_dropout=float(lora.get("dropout", s.lora_dropout)))


def settings_from_record(record: dict[str, Any]) -> TrainSettings:
    """The settings a manifest recorded (keys this release does not know are ignored)."""
    return TrainSettings(**{k: v for k, v in record.items() if k in TrainSettings.__dataclass_fields__})


def adapter_config(s: TrainSettings, model_path: Path, n_layers: int, sched: Schedule) -> dict[str, Any]:
    """adapter_config.json in mlx-lm's shape (what `load_adapters` and `mlx_lm lora -c` read)."""
    lr = lr_schedule(s, sched)
    return {
        "model": str(model_path),  # absolute: a relative path breaks once the cwd changes
        "base_model": s.base_model,
        "fine_tune_type": s.fine_tune_type,
        "num_layers": n_layers if s.num_layers < 0 else min(s.num_layers, n_layers),
        "lora_parameters": {"rank": s.lora_rank, "scale": s.lora_scale, "dropout": s.lora_dropout},
        "batch_size": s.batch_size,
        "iters": sched.iters,
        "learning_rate": s.learning_rate,
        "lr_schedule": {"name": "cosine_decay", "warmup": lr.warmup, "warmup_init": lr.start,
                        "arguments": [lr.peak, lr.decay_steps, lr.end]},
        "grad_accumulation_steps": s.grad_accumulation,
        "max_seq_length": s.max_seq_length,
        "mask_prompt": s.mask_prompt,
        "grad_checkpoint": s.grad_checkpoint,
        "seed": s.seed,
        "optimizer": "adam",
        "data": "data",
    }


def is_oom(exc: BaseException) -> bool:
    """Whether an exception from the trainer means it ran out of memory."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "memory" in str(exc).lower())
