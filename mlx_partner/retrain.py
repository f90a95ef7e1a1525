"""`mlx-partner retrain` and `mlx-partner runs`: new coursework in, a better partner out, and proof.

    changes = pending_changes(ws, settings)          # what is new since the latest run (pure read)
    result = run_retrain(ws, settings)               # generate -> dataset -> train -> fuse -> eval
    rows = list_runs(ws)                             # every run with its key metrics

`retrain` runs the whole chain after documents are added or changed, but only where something
changed: generation sends requests only for batches whose source hashes changed (generate's own
ledger decides), the dataset is rebuilt with the earlier test pairs pinned to the test split, a new
run is trained (from the base model, or from the latest adapters with `continue_`), fused and
evaluated on the same held-out pairs as the previous run, so the two can be compared side by side.
With nothing new it says so and spends nothing, unless forced.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Settings
from .corrections import corrections_since, read_corrections
from .dataset.manifest import dataset_hash, load_manifest
from .dataset.pairs import pair_files, read_pairs
from .dataset.write import run_dataset
from .errors import DatasetError, PartnerError, TrainingError
from .evaluate.report import comparison_rows
from .evaluate.run import read_metrics, run_eval
from .fuse import run_fuse
from .generate.plan import prepare
from .generate.report import format_summary
from .generate.runner import retire, run_generate
from .recipe import Recipe, from_run, repeat_recipe, runnable_base, setting_origins
from .runs import find_run, read_manifest
from .sources.records import write_source_hashes
from .textfmt import table
from .train.run import TrainResult, run_train
from .workspace import Workspace, workspace_lock

Echo = Callable[[str], None]


# --- what changed since the latest run ---------------------------------------------------------


@dataclass(frozen=True)
class Changes:
    """What is new since the latest run, read from the workspace without writing anything."""

    latest_run: str | None
    new_documents: tuple[str, ...] = ()
    changed_documents: tuple[str, ...] = ()
    removed_documents: tuple[str, ...] = ()
    batches_to_generate: tuple[str, ...] = ()  # batch ids with requests still to send
    requests: int = 0
    stale_pairs: int = 0  # pairs to retire: a document they cite changed or is gone
    dataset_outdated: bool = False  # pairs on disk differ from those the latest run trained on
    settings_changed: tuple[str, ...] = ()  # training settings that differ from the latest run's
    new_corrections: int = 0  # corrections made in chat (/fix, /good) since the latest run started
    reasons: tuple[str, ...] = ()
    not_generated: tuple[str, ...] = ()  # document changes left for a later retrain (--no-generate)

    @property
    def anything(self) -> bool:
        return bool(self.reasons)


def _latest(ws: Workspace) -> tuple[Path, dict[str, Any]] | None:
    try:
        run_dir = find_run(ws)
    except TrainingError:
        return None
    return run_dir, read_manifest(run_dir)


def describe_documents(previous: dict[str, str], current: dict[str, str]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(new, changed, removed) document ids between two {doc_id: sha256} maps."""
    new = tuple(sorted(d for d in current if d not in previous))
    changed = tuple(sorted(d for d in current if d in previous and previous[d] != current[d]))
    removed = tuple(sorted(d for d in previous if d not in current))
    return new, changed, removed


def extra_pair_files(ws: Workspace, built: dict[str, Any]) -> list[Path]:
    """Pair files the last dataset read besides data/pairs/ (`dataset --pairs FILE`), if they still exist.

    A rebuild reads them again, so hand-written pairs are not lost when `retrain` rebuilds.
    """
    pairs_dir = ws.pairs_dir.resolve()
    out = []
    for name in built.get("files") or []:
        path = Path(name)
        parent = path.resolve().parent
        # Generated pairs are re-read from data/pairs/ anyway, also when the workspace was moved
        # or copied (dataset.json then names the old folder's data/pairs/).
        if parent == pairs_dir or (parent.name == "pairs" and parent.parent.name == "data"):
            continue
        if path.is_file():
            out.append(path)
    return out


def _dataset_outdated(ws: Workspace, manifest: dict[str, Any] | None) -> str:
    """Why the latest run's training data differs from the pairs now on disk ('' if it does not)."""
    if manifest is None:
        return ""
    try:
        built = load_manifest(ws)
    except DatasetError:
        return "there is no dataset yet"
    trained_on = (manifest.get("dataset") or {}).get("dataset_json_hash")
    if trained_on and trained_on != built.get("hash"):
        return f"the dataset was rebuilt after run {manifest.get('run')} was trained"
    if built.get("hash") and dataset_hash(ws) != built.get("hash"):
        return "the split files were changed after `dataset` wrote them"
    # The pairs as `dataset` reads them (ids included: hand-written pairs get content ids there).
    pairs = read_pairs(pair_files(ws, extra_pair_files(ws, built))).pairs
    active_ids = {p.id for p in pairs} | {c.id for c in read_corrections(ws).corrections}  # chat's, as pairs
    ids = {i for split in (built.get("ids") or {}).values() for i in split}
    if ids - active_ids:
        return f"{len(ids - active_ids)} pairs the dataset holds are no longer in data/pairs/ or data/corrections.jsonl"
    if len(pairs) > int(built.get("pairs_read") or 0):
        return f"{len(pairs) - int(built.get('pairs_read') or 0)} pairs in data/pairs/ are not in the dataset yet"
    return ""


def retrain_recipe(ws: Workspace, settings: Settings, manifest: dict[str, Any],
                   train_flags: dict[str, Any] | None = None) -> Recipe:
    """The latest run's recipe (base model and training settings), with the flags given and the
    settings changed in partner.toml or the environment since it trained (see `recipe`)."""
    recipe = repeat_recipe(manifest, settings.train, setting_origins(ws.config_path), train_flags)
    if recipe.sources["base_model"] == from_run(recipe.from_run):
        base = runnable_base(recipe.settings.base_model, manifest.get("base_model_path"), ws.root)
        recipe = dataclasses.replace(recipe, settings=dataclasses.replace(recipe.settings, base_model=base))
    return recipe


def _settings_reason(recipe: Recipe) -> str:
    """Why the training settings count as a change ('' when the retrain repeats the run's)."""
    keys = [k for k in recipe.differs_from_run if not (k == "base_model" and recipe.sources[k] == from_run(recipe.from_run))]
    if not keys:
        return ""
    shown = ", ".join(f"{k} {recipe.ran.get(k)!r} -> {getattr(recipe.settings, k)!r} ({recipe.sources[k]})" for k in keys)
    return f"training settings differ from {from_run(recipe.from_run)}'s: {shown}"


def pending_changes(ws: Workspace, settings: Settings, train_flags: dict[str, Any] | None = None, *,
                    generate: bool = True) -> Changes:
    """Documents, generation rounds, pairs and training settings that are new since the latest run;
    nothing is written. With generate=False the documents' changes are not reasons: the retrain
    is then about the pairs, corrections and settings alone (nothing is sent, nothing retired)."""
    latest = _latest(ws)
    prep = prepare(ws, settings.generate, settings.sources)
    new, changed, removed = describe_documents(prep.previous_hashes, prep.hashes)
    todo = [p for p in prep.plans if p.todo]
    outdated = _dataset_outdated(ws, latest[1] if latest else None)
    documents = []
    if new or changed or removed:
        documents.append(f"documents: {len(new)} new, {len(changed)} changed, {len(removed)} removed")
    if todo:
        documents.append(f"{sum(len(p.todo) for p in todo)} generation requests to send for {', '.join(p.batch.id for p in todo)}")
    if prep.stale:
        documents.append(f"{len(prep.stale)} pairs to retire (their sources changed or were removed)")
    reasons = list(documents) if generate else []
    if outdated:
        reasons.append(outdated)
    fresh = corrections_since(ws, str(latest[1].get("started") or "")) if latest else []
    if fresh:
        reasons.append(f"{len(fresh)} new correction{'s' if len(fresh) != 1 else ''} from chat since run {latest[0].name}")
    recipe = retrain_recipe(ws, settings, latest[1], train_flags) if latest else None
    settings_reason = _settings_reason(recipe) if recipe else ""
    if settings_reason:
        reasons.append(settings_reason)
    return Changes(
        latest_run=latest[0].name if latest else None,
        new_documents=new, changed_documents=changed, removed_documents=removed,
        batches_to_generate=tuple(p.batch.id for p in todo),
        requests=sum(len(p.todo) for p in todo),
        stale_pairs=len(prep.stale),
        dataset_outdated=bool(outdated),
        settings_changed=tuple(recipe.differs_from_run) if settings_reason and recipe else (),
        new_corrections=len(fresh),
        reasons=tuple(reasons),
        not_generated=() if generate else tuple(documents),
    )


# --- the chain ---------------------------------------------------------------------------------


@dataclass
class RetrainResult:
    changes: Changes
    old_run: str | None = None
    new_run: str | None = None
    requests_sent: int = 0
    pairs_accepted: int = 0
    fused_path: Path | None = None
    old_metrics: dict[str, Any] | None = None
    new_metrics: dict[str, Any] | None = None
    recipe: Recipe | None = None  # what the new run trained with, and where each setting came from
    notes: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> bool:
        return self.new_run is None


def run_retrain(ws: Workspace, settings: Settings, *, force: bool = False, continue_: bool = False,
                run_name: str | None = None, fuse: bool = True, limit: int | None = None,
                max_tokens: int | None = None, progress: bool = True, echo: Echo | None = None,
                train_flags: dict[str, Any] | None = None, generate: bool = True) -> RetrainResult:
    """Generate what changed, rebuild the dataset (test pairs kept), train, fuse and evaluate.

    The new run repeats the latest run's recipe (base model and training settings) except where
    `train_flags` (None = not given) or a setting changed since that run say otherwise. With
    generate=False nothing is sent or retired: the pairs and corrections on disk are the data.
    """
    say: Echo = echo or (lambda _s: None)
    with workspace_lock(ws, "retrain"):
        latest = _latest(ws)
        if latest is None:
            raise TrainingError(
                f"There is no earlier run in {ws.root} to retrain; build the first one with "
                f"`mlx-partner generate`, `mlx-partner dataset` and `mlx-partner train`."
            )
        old_dir, old_manifest = latest
        changes = pending_changes(ws, settings, train_flags, generate=generate)
        recipe = retrain_recipe(ws, settings, old_manifest, train_flags)
        result = RetrainResult(changes=changes, old_run=old_dir.name, recipe=recipe)
        if not changes.anything and not force:
            return result
        for reason in changes.reasons:
            say(f"Changed: {reason}.")
        for skipped in changes.not_generated:
            say(f"Not generating (--no-generate): {skipped}; a later `mlx-partner retrain` without it takes them up.")

        # 1. Generation, only for what changed (generate skips every request its ledger has done).
        if generate:
            _generate_changes(ws, settings, changes, result, say)

        # 2. The dataset, with the earlier test pairs pinned so the two runs are scored alike.
        for line in recipe.lines():
            say(line)
        train_settings = dataclasses.replace(settings, train=recipe.settings)
        _rebuild_dataset(ws, train_settings, say)

        # 3. A new run, from the base model or from the latest adapters, with the latest run's recipe.
        trained = _train_new_run(ws, train_settings, run_name, old_dir.name if continue_ else None, progress, say,
                                 recipe.record())
        result.new_run = trained.run
        result.notes += trained.notes

        # 4. Fuse (optional: eval uses the adapters directly, which give the same greedy output).
        if fuse:
            result.fused_path = _fuse(ws, trained.run, say)

        # 5. Evaluate both runs on the same held-out pairs.
        result.old_metrics, result.new_metrics = _evaluate_both(
            ws, settings, old_dir.name, trained.run, limit=limit, max_tokens=max_tokens, progress=progress, say=say,
        )
        return result


def _generate_changes(ws: Workspace, settings: Settings, changes: Changes, result: RetrainResult, say: Echo) -> None:
    """Send the generation requests still to do; with none, retire the pairs whose sources changed."""
    if changes.requests:
        say(f"Generating: {changes.requests} requests for {', '.join(changes.batches_to_generate)}.")
        gen = run_generate(ws, settings.generate, settings.sources, echo=say)
        result.requests_sent, result.pairs_accepted = gen.requests, gen.accepted
        say(format_summary(gen))
        if gen.failed:
            raise PartnerError(
                f"Generation failed for {', '.join(sorted(gen.failed))}; the pairs that arrived are kept: "
                f"fix the cause and run `mlx-partner retrain` again (finished requests are not sent twice)."
            )
    elif changes.stale_pairs or changes.removed_documents or changes.changed_documents:
        _retire_without_requests(ws, settings)


def _rebuild_dataset(ws: Workspace, train_settings: Settings, say: Echo) -> None:
    """The dataset again, from data/pairs/ and the last dataset's extra pair files, test pairs kept."""
    try:
        extra = extra_pair_files(ws, load_manifest(ws))
    except DatasetError:
        extra = []
    report = run_dataset(ws, train_settings, extra_pairs=extra, keep_test=True)
    say(f"Dataset: {report.counts['train']} train, {report.counts['valid']} valid, {report.counts['test']} test "
        f"(earlier test pairs kept in test).")


def _train_new_run(ws: Workspace, train_settings: Settings, run_name: str | None, continue_from: str | None,
                   progress: bool, say: Echo, recipe: dict[str, Any]) -> TrainResult:
    """A new run, from the base model or (continue_from) an earlier run's adapters; it must finish."""
    if continue_from:
        say(f"Training a new run from the adapters of {continue_from}.")
    trained = run_train(ws, train_settings, run_name=run_name, continue_from=continue_from, progress=progress,
                        recipe=recipe)
    if trained.status != "finished":
        raise TrainingError(f"Training {trained.run} {trained.status}; nothing was fused or evaluated.")
    return trained


def _evaluate_both(ws: Workspace, settings: Settings, old_run: str, new_run: str, *, limit: int | None,
                   max_tokens: int | None, progress: bool, say: Echo) -> tuple[dict[str, Any], dict[str, Any]]:
    """(old, new) metrics on the same held-out pairs; the old run is evaluated first if it never was."""
    kwargs: dict[str, Any] = {"progress": progress}
    if limit is not None:
        kwargs["limit"] = limit
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    old_metrics = read_metrics(ws, old_run)
    if old_metrics is None or (old_metrics.get("scores") or {}).get("tuned") is None:
        say(f"Evaluating {old_run} (it has no evaluation yet).")
        old_metrics = run_eval(ws, settings, old_run, **kwargs).metrics
    say(f"Evaluating {new_run} on the same held-out pairs.")
    return old_metrics, run_eval(ws, settings, new_run, compare_with=old_run, **kwargs).metrics


def _retire_without_requests(ws: Workspace, settings: Settings) -> None:
    """Documents changed or went away but nothing new is to be asked: retire the stale pairs only.

    Uses generate's own `prepare` and `retire`, and records the new source hashes as generate does,
    so no credentials are needed when no request is sent.
    """
    prep = prepare(ws, settings.generate, settings.sources)
    retire(ws, prep)
    write_source_hashes(ws, prep.hashes)


def _fuse(ws: Workspace, run: str, say: Echo) -> Path:
    fused = run_fuse(ws, run_name=run, log=say)
    for note in fused.notes:
        say(f"Note: {note}")
    return fused.model_dir


def format_comparison(result: RetrainResult) -> str:
    """The old and new runs side by side, over the held-out pairs both were scored on."""
    metrics = result.new_metrics or {}
    comparison = metrics.get("comparison")
    if not comparison:
        return ""
    head = (f"{comparison['new']} against {comparison['old']}, on the same held-out pairs "
            f"({comparison['shared_answers']} answers, {comparison['shared_test_loss']} test pairs for loss):")
    return head + "\n" + table(["metric", comparison["old"], comparison["new"], "better"], comparison_rows(comparison))


# --- runs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRow:
    name: str
    started: str
    base_model: str
    examples: int | None  # training examples
    best_val_loss: float | None
    status: str
    latest: bool
    continued_from: str | None = None
    f1: float | None = None
    rouge_l: float | None = None
    style: float | None = None
    grounded: float | None = None
    fused: bool = False


def list_runs(ws: Workspace) -> list[RunRow]:
    """Every run under adapters/ (oldest first), with its eval scores where it has been evaluated."""
    adapters = ws.adapters_dir
    if not adapters.is_dir():
        return []
    try:
        latest = find_run(ws).name
    except TrainingError:
        latest = None
    rows = []
    for path in sorted(adapters.glob("*/manifest.json")):
        run_dir = path.parent
        if run_dir.is_symlink():
            continue  # adapters/latest points at a real run listed under its own name
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            rows.append(RunRow(run_dir.name, "", "", None, None, "unreadable manifest", run_dir.name == latest))
            continue
        best = m.get("best") or {}
        counts = (m.get("dataset") or {}).get("counts") or {}
        tuned = ((read_metrics(ws, run_dir.name) or {}).get("summary") or {}).get("tuned") or {}
        rows.append(RunRow(
            name=str(m.get("run") or run_dir.name),
            started=str(m.get("started") or ""),
            base_model=str(m.get("base_model") or ""),
            examples=counts.get("train"),
            best_val_loss=best.get("val_loss"),
            status=str(m.get("status") or "unknown"),
            latest=run_dir.name == latest,
            continued_from=m.get("continued_from"),
            f1=tuned.get("f1"), rouge_l=tuned.get("rouge_l"), style=tuned.get("style"), grounded=tuned.get("grounded"),
            fused=(ws.models_dir / run_dir.name / "config.json").exists(),
        ))
    rows.sort(key=lambda r: (r.started, r.name))
    return rows


def format_runs(rows: list[RunRow]) -> str:
    def f(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    body = []
    for r in rows:
        name = r.name + (" *" if r.latest else "")
        started = r.started.replace("T", " ")[:16]
        status = r.status + (", fused" if r.fused else "") + (f", from {r.continued_from}" if r.continued_from else "")
        body.append([name, started, r.base_model, "-" if r.examples is None else str(r.examples),
                     f(r.best_val_loss), f(r.f1), f(r.rouge_l), f(r.style), f(r.grounded, 2), status])
    headers = ["run", "started", "base model", "train", "best val", "F1", "ROUGE-L", "style", "grounded", "status"]
    return table(headers, body) + "\n* latest: what `chat`, `fuse` and `eval` use by default."
