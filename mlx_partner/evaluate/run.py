"""`mlx-partner eval`, the side-effecting part: score a run and its base model, write eval/<run>/.

    result = run_eval(ws, settings, run="run-3", limit=20)
    metrics = read_metrics(ws, "run-3")       # what an earlier eval wrote, or None

Both the base model and base + the run's adapters are scored deterministically (greedy decoding,
a seeded selection of held-out pairs), on held-out pairs, near-domain probes (data/probes.jsonl,
when `generate` wrote one) and far probes; retrieval over her documents is measured once (it does
not depend on the model). A run trained with passages before each question (`[dataset] passages =
true`) is asked every question, held-out and probe, as `chat --rag` asks it: the passages its
retrieval finds, before the question; metrics.json's "passages" says so. eval/<run>/ gets
metrics.json (summary plus every answer, with a "version"), report.md and chart.png. `run_eval`
holds the workspace lock itself, so a Python caller is protected as the CLI is; the lock is
re-entrant, so `retrain` calls it under its own. `mlx` is imported inside `run_eval`, so `--help`
stays instant.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..corrections import Correction
from ..dataset.system_prompt import load_system_prompt
from ..errors import DatasetError, ModelError, TrainingError
from ..models import load_model, resolve_model
from ..prompts import RAG_PASSAGES
from ..retrieval import SourceIndex, build_index
from ..runs import SYSTEM_PROMPT, find_run, read_manifest
from ..sources.documents import load_documents
from ..textfmt import stderr, utc_now
from ..workspace import Workspace, atomic_write_json, atomic_write_text, workspace_lock
from .contradiction import add_contradictions, contradiction_method
from .corrections import (
    answer_corrections,
    compare_corrections,
    corrections_section,
    fixes_to_measure,
    score_corrections,
)
from .examples import (
    EvalExample,
    carries_passages,
    load_examples,
    plain_question,
    select_examples,
    split_meta,
)
from .grounded import (
    passages_ask,
    passages_record,
    probe_coverage,
    quote_record,
    retrieval_accuracy,
)
from .metrics import StyleModel, fit_style
from .probes import PROBES_FILE, NearProbes, probe_questions, read_near_probes
from .report import render_report, write_chart
from .scoring import adapter_hash, cached_records, fingerprint, score_model
from .summary import compare, mean, summarize

__all__ = [
    "CHART_FILE", "DEFAULT_LIMIT", "DEFAULT_LOSS_LIMIT", "DEFAULT_MAX_TOKENS", "DEFAULT_PROBES", "METRICS_FILE",
    "METRICS_VERSION", "REPORT_FILE", "EvalResult", "read_metrics", "run_eval", "write_outputs",
]

DEFAULT_LIMIT = 20
DEFAULT_PROBES = 6
DEFAULT_MAX_TOKENS = 96  # generation dominates eval time on a CPU; 96 tokens is about 70 words
DEFAULT_LOSS_LIMIT = 40  # pairs per split scored for loss: a forward pass each (a whole typical test split)

# eval/<run>/: what an eval writes. metrics.json carries a "version"; one written before versions
# existed has none and reads as version 1, the same layout.
METRICS_FILE = "metrics.json"
# 2: near-domain probes (scores.*.near_probes), answers' expects_decline and quotes, the decline and
# quote figures in the summary, "retrieval" and "near_probes" at the top. 3: "corrections" at the top
# and scores.*.corrections (evaluate/corrections.py); an older file has none, read as not measured.
# Still 3, added without a bump since nothing else moved: "contradiction" at the top and each answer's
# "contradictions" (evaluate/contradiction.py; None for a decline); a file without them reads as not measured.
METRICS_VERSION = 3  # bump when the layout changes, and teach read_metrics the older ones
REPORT_FILE = "report.md"
CHART_FILE = "chart.png"


@dataclass(frozen=True)
class EvalResult:
    """What `run_eval` wrote: the run's name, its eval/<run>/ folder and the metrics.json record."""

    run: str
    out_dir: Path
    metrics: dict[str, Any]  # what metrics.json holds

    @property
    def report_path(self) -> Path:
        return self.out_dir / REPORT_FILE


def read_metrics(ws: Workspace, run: str) -> dict[str, Any] | None:
    """eval/<run>/metrics.json with "version" filled in, or None if the run has no readable eval."""
    path = ws.eval_dir / run / METRICS_FILE
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict):
        return None
    if metrics.setdefault("version", 1) < 2:  # version 1: no near-domain probes, no retrieval
        for record in (metrics.get("scores") or {}).values():
            if isinstance(record, dict):
                record.setdefault("near_probes", {})
    return metrics


def write_outputs(out_dir: Path, metrics: dict[str, Any]) -> None:
    """metrics.json, chart.png and report.md, each written atomically."""
    atomic_write_json(out_dir / METRICS_FILE, metrics)
    write_chart(out_dir / CHART_FILE, metrics)
    atomic_write_text(out_dir / REPORT_FILE, render_report(metrics))


def _run_and_manifest(ws: Workspace, run: str | None) -> tuple[Path, dict[str, Any]]:
    try:
        run_dir = find_run(ws, run)
    except TrainingError:
        if run is None:
            raise ModelError(f"There is no trained run in {ws.root} to evaluate; run `mlx-partner train` first.") from None
        raise
    return run_dir, read_manifest(run_dir)


def _base_ref(ws: Workspace, run_name: str, manifest: dict[str, Any]) -> str:
    """The run's base model as a loadable reference, or a clear error if it is gone."""
    refs = [r for r in (manifest.get("base_model_path"), manifest.get("base_model")) if r]
    if not refs:
        raise ModelError(f"The manifest of run {run_name} does not name its base model; train it again.")
    problem = ""
    for ref in refs:
        try:
            return str(resolve_model(str(ref), ws.root))
        except ModelError as exc:
            problem = str(exc).rstrip(".")
    raise ModelError(
        f"Run {run_name} was trained on base model {manifest.get('base_model') or refs[0]}, which is not available "
        f"here ({problem}); restore or import that model, then run eval again."
    )


def _system_prompt(ws: Workspace, run_dir: Path, manifest: dict[str, Any]) -> str:
    if manifest.get("system_prompt"):
        return str(manifest["system_prompt"])
    path = run_dir / SYSTEM_PROMPT
    if path.exists():
        return path.read_text(encoding="utf-8")
    return load_system_prompt(ws)


@dataclass(frozen=True)
class HeldOut:
    """The examples of one eval: those answered, those scored for loss, and the whole held-out split."""

    answered: list[EvalExample]
    loss: list[EvalExample]
    split: list[EvalExample]  # every example of the split answers come from (for retrieval)


def _held_out(ws: Workspace, limit: int, loss_limit: int, seed: int, previous: dict[str, Any] | None) -> HeldOut:
    """The examples to answer and to score for loss; an earlier eval's pairs come first."""
    meta = split_meta(ws)
    test = load_examples(ws.split_path("test"), "test", meta.get("test"))
    valid = load_examples(ws.split_path("valid"), "valid", meta.get("valid"))
    if not test and not valid:
        raise DatasetError(f"There are no test or valid examples in {ws.data_dir}; run `mlx-partner dataset` first.")
    prefer = [e["key"] for e in (previous or {}).get("examples", [])]
    held_out = test or valid  # a dataset built with test_fraction = 0 has no test split
    gen_examples = select_examples(held_out, limit, seed, prefer)
    loss_examples = select_examples(test, loss_limit, seed, prefer) + select_examples(valid, loss_limit, seed, prefer)
    return HeldOut(gen_examples, loss_examples, held_out)


def _near_probes(ws: Workspace, limit: int | None) -> NearProbes:
    """data/probes.jsonl's questions (the first `limit` of them; None: all)."""
    found = read_near_probes(ws.data_dir / PROBES_FILE)
    if limit is not None:
        found = NearProbes(found.path, found.questions[: max(0, limit)], found.skipped)
    return found


def _index(ws: Workspace, documents: list[Any]) -> SourceIndex:
    """An index over every document, its threshold calibrated on the questions the author answered."""
    meta = split_meta(ws)
    answerable = [plain_question(ex.question) for split in ("train", "valid", "test")
                  for ex in load_examples(ws.split_path(split), split, meta.get(split)) if not ex.expects_decline]
    return build_index(documents, answerable=answerable)


def _add_quotes(scores: dict[str, Any], texts: list[str], questions: dict[str, str]) -> None:
    """Each generated answer's quoted spans, and whether her writing holds them (in place)."""
    for record in scores.values():
        for key, item in record["answers"].items():
            item["quotes"] = quote_record(item["answer"], texts, questions.get(key, ""))
        for group in ("probes", "near_probes"):
            for question, item in record.get(group, {}).items():
                item["quotes"] = quote_record(item["answer"], texts, question)


def _score_both(ws: Workspace, run_name: str, run_dir: Path, base_ref: str, common: dict[str, Any], seed: int,
                score: dict[str, Any], fixes: Sequence[Correction] = ()) -> dict[str, Any]:
    """Score the base model, then base + the run's adapters; `score` holds score_model's arguments.
    Each model also answers the corrected questions in `fixes` (evaluate/corrections.py).

    Earlier evals of the same models under the same settings are reused item by item: this run's
    own earlier eval, and for the base model any run's eval.
    """
    import mlx.core as mx

    specs = [
        ("base", None, fingerprint(model=base_ref, **common)),
        ("tuned", run_dir, fingerprint(model=base_ref, adapters=adapter_hash(run_dir), **common)),
    ]
    earlier = [m for m in (read_metrics(ws, p.name) for p in sorted(ws.eval_dir.glob("*")) if p.is_dir()) if m]
    scores: dict[str, Any] = {}
    for label, adapter_path, fp in specs:
        cached: dict[str, dict[str, Any]] = {}
        for m in earlier:
            if label == "base" or m.get("run") == run_name:
                cached.update(cached_records(m, label, fp))
        mx.random.seed(seed)
        loaded = load_model(base_ref, adapter_path=adapter_path, workspace_root=ws.root)
        record = score_model(loaded, **score, label="base" if label == "base" else run_name, cached=cached)
        answers = answer_corrections(loaded, fixes, score["system_prompt"], max_tokens=score["max_tokens"],
                                     label="base" if label == "base" else run_name, cached=cached,
                                     progress=score["progress"], ask=score.get("ask"))
        record["corrections"] = score_corrections(fixes, answers, score["style"])
        scores[label] = {"fingerprint": fp, **record}
        del loaded
        mx.clear_cache()
    return scores


def run_eval(ws: Workspace, settings: Settings, run: str | None = None, *, limit: int = DEFAULT_LIMIT,
             probes: int = DEFAULT_PROBES, max_tokens: int = DEFAULT_MAX_TOKENS, seed: int = 0,
             loss_limit: int = DEFAULT_LOSS_LIMIT, compare_with: str | None = None,
             near_probes: int | None = None, progress: bool = True) -> EvalResult:
    """Score the base model and the run's adapters; write eval/<run>/{metrics.json,report.md,chart.png}.

    `probes` far probes are asked, and the first `near_probes` questions of data/probes.jsonl
    (None: all of them). With `compare_with` (another run's name, already evaluated), the same test
    pairs that run was scored on come first, and the report gains a side-by-side table over the
    pairs both share.
    """
    with workspace_lock(ws, "eval"):
        run_dir, manifest = _run_and_manifest(ws, run)
        run_name = str(manifest.get("run") or run_dir.name)
        base_ref = _base_ref(ws, run_name, manifest)
        system_prompt = _system_prompt(ws, run_dir, manifest)
        previous = read_metrics(ws, compare_with) if compare_with else None
        held = _held_out(ws, limit, loss_limit, seed, previous)
        if compare_with and previous is None:
            raise DatasetError(f"Run {compare_with} has no evaluation to compare with; "
                               f"run `mlx-partner eval --run {compare_with}` first.")

        documents, _skipped = load_documents(ws.sources_dir)
        texts = [d.text for d in documents]
        style = fit_style(texts)
        near = _near_probes(ws, near_probes)
        index = _index(ws, documents)
        # [grounded-chat] a run trained with passages is asked as `chat --rag` asks (grounded.passages_ask)
        ask = passages_ask(index) if carries_passages(held.split) else None
        max_seq_length = int(getattr(settings.train, "max_seq_length", 2048))
        common = {"max_tokens": max_tokens, "max_seq_length": max_seq_length, "system": system_prompt,
                  **({"passages": f"rag:{RAG_PASSAGES}"} if ask else {})}  # no earlier eval's answers without
        score = {"loss_examples": held.loss, "gen_examples": held.answered,
                 "probes": probe_questions(texts, probes, seed), "near_probes": near.questions,
                 "system_prompt": system_prompt, "style": style, "ask": ask,
                 "max_tokens": max_tokens, "max_seq_length": max_seq_length, "progress": progress}
        found = fixes_to_measure(ws)  # [learn-from-use] chat's /fix answers
        scores = _score_both(ws, run_name, run_dir, base_ref, common, seed, score, found.fixes)
        _add_quotes(scores, texts, {ex.key: plain_question(ex.question) for ex in held.answered})
        add_contradictions(scores, held.answered, documents, index)  # from the answers, cached or not
        retrieval = {**retrieval_accuracy(index, held.split), "probes": probe_coverage(index, near.questions)}

        settings_used = {"limit": limit, "probes": probes, "near_probes": near_probes, "max_tokens": max_tokens,
                         "seed": seed, "loss_limit": loss_limit, "decoding": "greedy"}
        metrics = _metrics(run_name, manifest, base_ref, settings_used, held.answered, system_prompt, style, scores)
        metrics["near_probes"] = {"file": near.path, "questions": len(near.questions), "skipped": near.skipped}
        metrics["retrieval"] = retrieval
        metrics["contradiction"] = contradiction_method()
        metrics["passages"] = passages_record(ask is not None)
        metrics["corrections"] = corrections_section(found, {k: v["corrections"] for k, v in scores.items()}, style,
                                                     passages=score.get("ask") is not None)
        if previous is not None and compare_with:
            metrics["comparison"] = compare(previous, metrics)
            old = _compared_corrections(ws, compare_with, previous, found.fixes, max_tokens, progress, score.get("ask"))
            metrics["comparison"]["corrections"] = compare_corrections(
                str(previous.get("run") or compare_with), run_name, score_corrections(found.fixes, old, style),
                metrics["corrections"], scores["tuned"]["corrections"])
        out_dir = ws.eval_dir / run_name
        write_outputs(out_dir, metrics)
    return EvalResult(run_name, out_dir, metrics)


def _compared_corrections(ws: Workspace, run: str, previous: dict[str, Any], fixes: Sequence[Correction],
                          max_tokens: int, progress: bool, ask: Any = None) -> dict[str, dict[str, Any]]:
    """The compared run's answers to the corrected questions: from its own eval where it answered
    them, the rest generated now (a correction made after that eval, as `retrain` meets it). A run
    whose adapters or base model are gone answers none: the comparison then shares fewer questions."""
    import mlx.core as mx

    answers = dict(((previous.get("scores") or {}).get("tuned") or {}).get("corrections") or {})
    missing = [c for c in fixes if c.id not in answers]
    if missing:
        try:
            run_dir, manifest = _run_and_manifest(ws, run)
            base_ref = _base_ref(ws, run, manifest)
        except (ModelError, TrainingError) as exc:
            stderr(f"Note: {run} cannot answer the {len(missing)} correction(s) its eval predates ({exc}); "
                   "they are left out of the comparison.")
            return {c.id: answers[c.id] for c in fixes if c.id in answers}
        loaded = load_model(base_ref, adapter_path=run_dir, workspace_root=ws.root)
        answers.update(answer_corrections(loaded, missing, _system_prompt(ws, run_dir, manifest),
                                          max_tokens=max_tokens, label=run, progress=progress, ask=ask))
        del loaded
        mx.clear_cache()
    return {c.id: answers[c.id] for c in fixes if c.id in answers}


def _metrics(run_name: str, manifest: dict[str, Any], base_ref: str, settings_used: dict[str, Any],
             gen_examples: list[EvalExample], system_prompt: str, style: StyleModel,
             scores: dict[str, Any]) -> dict[str, Any]:
    """The metrics.json record."""
    return {
        "version": METRICS_VERSION,
        "run": run_name,
        "base_model": manifest.get("base_model") or base_ref,
        "created": utc_now(),
        "settings": settings_used,
        "dataset": manifest.get("dataset"),
        "summary": {label: summarize(scores[label]) for label in scores},
        "reference_style": mean(style.similarity(ex.reference) for ex in gen_examples),
        # (With a template that has no system role the system text starts the question: drop it.)
        "examples": [{"key": ex.key, "split": ex.split, "kind": ex.kind,
                      "question": plain_question(ex.question.removeprefix(system_prompt).strip()),
                      "reference": ex.reference} for ex in gen_examples],
        "scores": scores,
    }
