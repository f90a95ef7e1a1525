"""`mlx-partner train`, the side-effecting stage: lock, plan, write the run folder, train, report.

`run_train` is the one entry point. It takes the workspace lock, opens adapters/<run>/ (a new
run, a resumed one, or one continuing an earlier run's adapters), loads the base model and the
data, prints the memory plan, has `loop` run mlx-lm's trainer, and records the outcome in the
manifest (see `runs` for the folder's layout). A finished run becomes adapters/latest. The
run's index of the author's writing (`index`: chat's citations) goes to adapters/<run>/retrieval/
before training starts.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import blas
from ..config import Settings, TrainSettings
from ..errors import ModelError, TrainingError
from ..memory import GB, MemoryPlan, make_plan
from ..models import LoadedModel, is_cpu_backend, load_model, read_config, resolve_model
from ..recipe import train_record  # [learn-from-use] the run's recipe
from ..runs import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CHECKPOINTS,
    LAST_CHECKPOINT,
    MANIFEST,
    SYSTEM_PROMPT,
    find_run,
    machine_info,
    new_run_name,
    point_latest,
    read_manifest,
    run_dirs,
    versions,
)
from ..textfmt import stderr, utc_now
from ..workspace import (
    Workspace,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    workspace_lock,
)
from .data import Data, dataset_info, load_data
from .schedule import (
    Schedule,
    adapter_config,
    fit_layers,
    is_oom,
    knobs,
    plan_schedule,
    settings_from_adapters,
    settings_from_record,
)

if TYPE_CHECKING:  # loop imports mlx at load; _fine_tune imports it once training starts
    from .loop import TrainerOutcome


@dataclass(frozen=True)
class TrainResult:
    """What a run did, for the CLI's summary (the manifest holds the whole record)."""

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
    primary: bool = True  # False on the other ranks under mlx.launch: rank 0 reports for all
    duration_s: float = 0.0
    peak_memory_gb: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Start:
    """Where a run starts: its folder, its settings, and what it resumes or continues from."""

    run_dir: Path
    settings: TrainSettings
    previous: dict[str, Any] | None = None  # the manifest of the run being resumed
    offset: int = 0  # the iteration it resumes at
    source: Path | None = None  # the earlier run whose adapters it starts from
    recipe: dict[str, Any] | None = None  # [learn-from-use] manifest["recipe"], when retrain gives one


def run_train(ws: Workspace | Path | str, settings: Settings | TrainSettings, *, run_name: str | None = None,
              resume: bool = False, plan_only: bool = False, memory_gb: float | None = None,
              continue_from: str | None = None, progress: bool = True,
              recipe: dict[str, Any] | None = None) -> TrainResult:
    """Fine-tune the base model on data/ into adapters/<run>/ (or only plan it, with plan_only)."""
    ws = ws if isinstance(ws, Workspace) else Workspace.at(ws)
    s = settings.train if isinstance(settings, Settings) else settings
    if plan_only:
        return _memory_plan(ws, s, memory_gb)
    import mlx.core as mx

    # Under `mlx.launch` (data-parallel over several Macs) rank 0 holds the lock for them all.
    rank0 = mx.distributed.init().rank() == 0
    with workspace_lock(ws, "train") if rank0 else contextlib.nullcontext():
        start = replace(_open_run(ws, s, run_name, resume, continue_from, rank0), recipe=recipe)
        return _fine_tune(ws, start, memory_gb, progress, rank0)


def _memory_plan(ws: Workspace, s: TrainSettings, memory_gb: float | None) -> TrainResult:
    """The memory plan from config.json and the tokenized data, without loading the weights."""
    from mlx_lm.utils import load_tokenizer

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


# --- opening the run folder -----------------------------------------------------------------------


def _open_run(ws: Workspace, s: TrainSettings, run_name: str | None, resume: bool,
              continue_from: str | None, rank0: bool) -> Start:
    """A new run folder, or the run to resume with its own settings; the adapters to start from."""
    adapters = ws.adapters_dir
    previous, offset = None, 0
    if resume:
        run_dir = _resumable(ws, run_name)
        previous = read_manifest(run_dir)
        s = settings_from_record(previous["settings"])
        offset = int((previous.get("checkpoint") or {}).get("iteration", 0))
    else:
        run_dir = adapters / (run_name or new_run_name(adapters))
        if rank0 and (run_dir / MANIFEST).exists():
            raise TrainingError(f"Run {run_dir.name} exists already; choose another --run name, or --resume it.")
    source = None
    if continue_from:
        # The adapters must fit the layers they were trained for: take the earlier run's shape.
        source = find_run(ws, continue_from)
        s = settings_from_adapters(s, json.loads((source / ADAPTER_CONFIG).read_text(encoding="utf-8")))
    return Start(run_dir, s, previous, offset, source)


def _resumable(ws: Workspace, name: str | None) -> Path:
    """The named run, or the newest run that did not finish."""
    adapters = ws.adapters_dir
    if name:
        run_dir = adapters / name
        if not (run_dir / MANIFEST).exists():
            raise TrainingError(f"There is no run '{name}' in {adapters} to resume.")
    else:
        runs = sorted(run_dirs(ws), key=lambda p: p.stat().st_mtime)
        unfinished = [p for p in runs if read_manifest(p).get("status") != "finished"]
        if not unfinished:
            raise TrainingError(f"No stopped run to resume in {adapters}; start a new one with `mlx-partner train`.")
        run_dir = unfinished[-1]
    if read_manifest(run_dir).get("status") == "finished":
        raise TrainingError(f"Run {run_dir.name} finished already; start a new run, or continue from it "
                            f"with `--continue-from {run_dir.name}`.")
    return run_dir


def _load_source_adapters(model: Any, source: Path, base_path: Path) -> None:
    """Start from an earlier run's adapters, refusing ones trained on another base model."""
    earlier = read_manifest(source).get("base_model_path")
    if earlier and Path(earlier).resolve() != base_path.resolve():
        raise TrainingError(f"Run {source.name} was trained on {earlier}, not {base_path}; "
                            "continue it with that base model.")
    from .resume import load_adapter_weights  # imports mlx: only once training starts

    try:
        load_adapter_weights(model, source / ADAPTER_WEIGHTS)
    except TrainingError as exc:
        raise TrainingError(f"The adapters of {source.name} do not fit this model: {exc}") from None


def _header_lines(loaded: LoadedModel) -> list[str]:
    line = blas.status_line()
    return ([f"Backend: {loaded.note}"] + ([line] if line else [])
            + ([f"Compute dtype: {loaded.dtype}."] if loaded.dtype else []))


def _start_manifest(ws: Workspace, start: Start, s: TrainSettings, loaded: LoadedModel,
                    data: Data) -> dict[str, Any]:
    """A new run's manifest, or the resumed one without what happened after its checkpoint."""
    previous = start.previous
    if previous is None:
        return {
            "run": start.run_dir.name, "base_model": s.base_model,
            "base_model_path": str(loaded.path), "system_prompt": data.system_prompt,
            "dataset": dataset_info(ws, data), "settings": asdict(s), "metrics": {"train": [], "valid": []},
            "best": None, "base_val_loss": None,
            "continued_from": start.source.name if start.source is not None else None,
            # [learn-from-use] where each setting came from (see mlx_partner/recipe.py)
            "recipe": start.recipe or train_record(ws, start.settings, shape_from=start.source.name if start.source else None),
        }
    best_it = (previous.get("best") or {}).get("iteration")  # the best is kept, whenever it was
    previous["metrics"] = {
        "train": [r for r in previous["metrics"]["train"] if r["iteration"] <= start.offset],
        "valid": [r for r in previous["metrics"]["valid"] if r["iteration"] <= start.offset or r["iteration"] == best_it],
    }
    return previous


# --- training -----------------------------------------------------------------------------------


def _fine_tune(ws: Workspace, start: Start, memory_gb: float | None, progress: bool, rank0: bool) -> TrainResult:
    """Load, plan, add adapters, train, and record the outcome (under the workspace lock)."""
    # loop imports mlx and mlx-lm (about a second): here, once training really starts.
    from . import loop, resume
    from .index import save_run_index  # retrieval loads numpy: not at --help time

    say = stderr if progress and rank0 else _silent
    loaded = load_model(start.settings.base_model, workspace_root=ws.root)
    model = loaded.model
    s = fit_layers(start.settings, len(model.layers))
    data = load_data(ws, loaded.tokenizer, s)
    sched = plan_schedule(len(data.train), s)
    distributed = loop.distributed_info(s)  # refuses a batch that does not split over the processes
    on_cpu = is_cpu_backend()
    plan = make_plan(loaded.config, knobs(s), data.lengths, on_cpu, memory_gb)
    for line in _header_lines(loaded) + data.notes + plan.lines():
        say(line)
    # [learn-from-use] --method orpo|dpo (train/preference.py); for sft the data and schedule stay as they are
    from .preference import setup
    data, sched, objective = setup(ws, loaded, data, s, sched, say)  # before the adapters: base answers

    loop.add_adapters(model, s)
    if start.source is not None:
        _load_source_adapters(model, start.source, loaded.path)
        say(f"Starting from the adapters of {start.source.name}.")
    opt = loop.make_optimizer(s, sched)
    run_dir = start.run_dir
    checkpoint = (start.previous or {}).get("checkpoint") or {}
    restored = bool(start.offset) and resume.restore_checkpoint(model, opt, run_dir, checkpoint)
    notes = list(data.notes) + _resume_notes(start, restored, sched, say)
    index = None
    if rank0:
        _write_run_files(run_dir, data.system_prompt, adapter_config(s, loaded.path, len(model.layers), sched))
        index, line = save_run_index(ws, run_dir)  # the passages chat cites (train/index.py)
        say(line)
    m = _start_manifest(ws, start, s, loaded, data)
    m.update({
        "retrieval": index,
        "status": "running", "dtype": loaded.dtype, "machine": machine_info(on_cpu), "versions": versions(),
        "schedule": asdict(sched), "trainable_parameters": loop.count_trainable(model),
        "distributed": distributed,
        "memory_plan_gb": round(plan.estimate.total / GB, 3), "started": utc_now(),
        "previous_duration_s": (start.previous or {}).get("duration_s", 0.0),
    })
    monitor = (objective.monitor if objective else loop.Monitor)(run_dir, m, model, opt, sched, s, start.offset, progress)
    monitor.write()
    outcome = loop.run_trainer(model, opt, data, sched, s, start.offset, monitor, objective)
    for w in dict.fromkeys(outcome.warnings):
        say(w)
    _record_outcome(start, m, outcome, notes, rank0)
    monitor.write()
    if m["status"] == "finished" and rank0:  # the manifest says finished before latest names it
        point_latest(ws.adapters_dir, run_dir.name)
    _raise_for_failure(outcome, s, plan, m, run_dir)
    best, base = m.get("best"), m.get("base_val_loss")
    if best and base is not None and best["val_loss"] >= base:
        notes.append("The validation loss never went below the base model's: try a higher --learning-rate or more --epochs.")
    return TrainResult(
        run=run_dir.name, run_dir=run_dir, status=m["status"], plan=plan, iterations=m["iterations_done"],
        total_iters=sched.iters, best_iteration=best["iteration"] if best else None,
        best_val_loss=best["val_loss"] if best else None, base_val_loss=base,
        stopped_early=outcome.stopped_early, primary=rank0, duration_s=m["duration_s"], peak_memory_gb=outcome.peak_memory_gb,
        notes=notes,
    )


def _resume_notes(start: Start, restored: bool, sched: Schedule, say: Callable[[str], None]) -> list[str]:
    """Say how a resumed run picks up; the note for its result when Adam has to restart."""
    if start.previous is None:
        return []
    name = start.run_dir.name
    if not start.offset:
        say(f"{name} has no checkpoint yet; starting it from the beginning.")
        return []
    if restored:
        say(f"Resuming {name} at iteration {start.offset}/{sched.iters} with its own settings "
            "and its optimizer state (Adam moments, schedule step).")
        return []
    note = "The optimizer state was not saved with this checkpoint: Adam restarts from zero."
    say(note)
    return [note]


def _write_run_files(run_dir: Path, system_prompt: str, config: dict[str, Any]) -> None:
    """The files a run has from its start: system_prompt.txt, adapter_config.json, checkpoints/."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / SYSTEM_PROMPT, system_prompt)
    atomic_write_json(run_dir / ADAPTER_CONFIG, config)
    (run_dir / CHECKPOINTS).mkdir(exist_ok=True)


def _silent(text: str = "", nl: bool = True) -> None:
    pass


def _record_outcome(start: Start, m: dict[str, Any], outcome: TrainerOutcome, notes: list[str],
                    rank0: bool) -> None:
    """Status, iterations and peak memory into the manifest (and the final weights, if no best)."""
    run_dir = start.run_dir
    if m.get("best") is None and outcome.error is None and rank0:
        # No validation after training began (a very short run): the final weights are all we have.
        # A temp file, fsynced, then renamed: a kill never leaves a half-copied adapters file.
        last = (run_dir / CHECKPOINTS / LAST_CHECKPOINT).read_bytes()
        atomic_write_bytes(run_dir / ADAPTER_WEIGHTS, last)
        notes.append("No validation ran after training began, so the adapters are the final weights.")
    error = outcome.error
    status = "finished" if error is None else ("stopped" if isinstance(error, KeyboardInterrupt) else "failed")
    m.update({"status": status, "stopped_early": outcome.stopped_early,
              "iterations_done": max([r["iteration"] for r in m["metrics"]["train"]] + [start.offset]),
              "peak_memory_gb": round(outcome.peak_memory_gb, 3)})


def _raise_for_failure(outcome: TrainerOutcome, s: TrainSettings, plan: MemoryPlan, m: dict[str, Any],
                       run_dir: Path) -> None:
    """A NaN loss or running out of memory becomes advice; other failures are re-raised as they are."""
    error = outcome.error
    if error is None or isinstance(error, KeyboardInterrupt):
        return
    kept = (m.get("checkpoint") or {}).get("iteration")
    where = (f"the last checkpoint (iteration {kept}) and the best adapters are kept" if kept
             else "the best adapters so far are kept")
    if outcome.nan_iteration is not None:
        raise TrainingError(
            f"The loss became NaN at iteration {outcome.nan_iteration}: lower the learning rate (e.g. "
            f"--learning-rate {s.learning_rate / 3:.0e}) and train again; {where} in {run_dir}."
        )
    if not is_oom(error):
        raise error
    fix = " ".join(plan.suggestion.flags) if plan.suggestion else "--batch-size 1 --grad-checkpoint --max-seq-length 512"
    raise TrainingError(
        f"Training ran out of memory ({str(error).strip()[:120]}); try {fix}, or check with "
        f"`mlx-partner train --plan`; {where} in {run_dir}."
    )
