"""`run_dataset`: the pairs written as mlx-lm chat JSONL, with the system prompt and dataset.json.

    report = run_dataset(ws, settings, extra_pairs=[Path("mine.jsonl")], keep_test=True)
    print(format_report(report, ws))

Each pair becomes `{"messages": [system, user, assistant]}` through `prompts.chat_messages`
(for a template with no system role, such as Gemma's, the system text is folded into the user
turn), so `chat` shows the model exactly what training did. The splits are written first, then
`data/system_prompt.txt`, then `data/dataset.json`, which vouches for them; `train` refuses split
files the manifest does not match. The whole stage holds the workspace lock.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import DatasetSettings, Settings, TrainSettings
from ..errors import DatasetError, ModelError
from ..grounding import KINDS
from ..prompts import (
    Check,
    chat_messages,
    hygiene_checks,
    load_base_tokenizer,
    template_has_system_role,
    training_tokens,
)
from ..testhooks import reached
from ..textfmt import table, utc_now
from ..workspace import (
    Workspace,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    workspace_lock,
)
from .corrected import place_corrections, with_corrections  # [learn-from-use] chat's /fix and /good
from .duplicates import BOUNDARY, Grouping, drop_boundary_echoes, group_pairs
from .manifest import (
    MANIFEST_VERSION,
    SPLITS,
    dataset_hash,
    manifest_path,
    previous_test_ids,
)
from .pairs import Pair, PairsRead, drop_duplicates, duplicate_key, pair_files, read_pairs
from .passages import passage_questions  # [grounded-chat]
from .splits import plan_splits, split_capacity
from .stats import LengthStats, length_stats, suggested_max_seq_length
from .system_prompt import resolve_system_prompt


@dataclass(frozen=True)
class DatasetReport:
    """What `dataset` did; `to_dict()` is what `--json` prints and what dataset.json holds."""

    files: list[str]
    pairs_read: int
    duplicates_dropped: int
    duplicates: list[str]  # "id (file:line)" of each dropped pair
    malformed: list[str]
    counts: dict[str, int]
    by_theme: dict[str, dict[str, int]]
    by_kind: dict[str, dict[str, int]]
    kind_shares: dict[str, float]  # each kind's share of all examples (boundary included)
    boundary_dropped: list[str]  # boundary pairs dropped: an answered pair asks the same question
    near_duplicate_groups: int
    near_duplicates_held_apart: int  # links left unjoined: the group would outgrow a split
    system_prompt: str
    system_prompt_source: str
    system_role: bool | None  # None: not known (no tokenizer)
    base_model: str
    lengths: LengthStats | None
    hygiene: list[Check]
    warnings: list[str]
    notes: list[str]
    content_hash: str
    ids: dict[str, list[str]]

    @property
    def hygiene_ok(self) -> bool:
        return all(c.status != "fail" for c in self.hygiene)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hygiene_ok"] = self.hygiene_ok
        return d


# --- the steps -----------------------------------------------------------------------------------


def _check_fractions(ds: DatasetSettings) -> None:
    for name, value in (("valid_fraction", ds.valid_fraction), ("test_fraction", ds.test_fraction)):
        if not 0 <= value < 1:
            raise DatasetError(f"dataset.{name} is {value}; it must be at least 0 and below 1.")
    if ds.valid_fraction + ds.test_fraction >= 0.9:
        raise DatasetError(
            f"valid ({ds.valid_fraction}) and test ({ds.test_fraction}) together leave too little to train on; lower them."
        )


def _read(ws: Workspace, extra: Sequence[Path]) -> tuple[PairsRead, list[Pair], list[Pair], list[str]]:
    """(what was read, the pairs kept, the duplicates dropped, warnings), or DatasetError if none."""
    read = read_pairs(pair_files(ws, extra))
    if not read.pairs:
        where = f"{ws.pairs_dir}" + (f" or {', '.join(str(p) for p in extra)}" if extra else "")
        raise DatasetError(
            f"No pairs found in {where}; run `mlx-partner generate` first, or add your own with --pairs FILE."
        )
    pairs, dropped = drop_duplicates(read.pairs)
    warnings = list(read.warnings)
    first = {p.id: p for p in pairs}
    clashes = [d for d in dropped if d.id in first and duplicate_key(first[d.id].question) != duplicate_key(d.question)]
    if clashes:
        warnings.append(
            f"{len(clashes)} pair(s) reuse an id with a different question and were dropped, e.g. {clashes[0].id} at "
            f"{clashes[0].origin} (first at {first[clashes[0].id].origin}); give hand-written pairs their own ids."
        )
    if read.malformed:
        warnings.append(f"{len(read.malformed)} malformed line(s) skipped, e.g. {read.malformed[0]}")
    return read, pairs, dropped, warnings


def _measure(tokenizer: Any, split_pairs: dict[str, list[Pair]], examples: dict[str, list[dict]],
             system_prompt: str, tr: TrainSettings, warnings: list[str],
             progress: Callable[[int, int], None] | None) -> tuple[LengthStats, list[Check]]:
    """Token lengths of every example, and template hygiene on the first training example."""
    lengths: dict[str, int] = {}
    everything = [(p, e) for s in SPLITS for p, e in zip(split_pairs[s], examples[s], strict=True)]
    for done, (p, e) in enumerate(everything, 1):
        lengths[p.id] = len(training_tokens(tokenizer, e, mask_prompt=False)[0])
        if progress is not None:
            progress(done, len(everything))
    stats = length_stats(lengths, tr.max_seq_length)
    if stats.too_long:
        names = ", ".join(f"{i} ({n})" for i, n in stats.too_long[:5])
        more = f" and {len(stats.too_long) - 5} more" if len(stats.too_long) > 5 else ""
        warnings.append(
            f"{len(stats.too_long)} example(s) are longer than max_seq_length={tr.max_seq_length} tokens and would be "
            f"truncated: {names}{more}; set max_seq_length = {suggested_max_seq_length(stats.max)} in [train]."
        )
    sample = split_pairs["train"][0]
    try:
        hygiene = hygiene_checks(tokenizer, system_prompt, sample.question, sample.answer, tr.mask_prompt)
    except Exception as exc:  # a template that fails on ordinary messages is itself the finding
        hygiene = [Check("render", "fail", f"the chat template failed ({type(exc).__name__}: {exc})")]
    for c in hygiene:
        if c.status == "fail":
            warnings.append(f"Template hygiene failed: {c.name}: {c.detail}.")
    return stats, hygiene


def _write_splits(ws: Workspace, examples: dict[str, list[dict]], system_prompt: str) -> None:
    """The splits first, then the prompt (the manifest that vouches for them comes last)."""
    for split in SPLITS:
        path = ws.split_path(split)
        if examples[split]:
            atomic_write_jsonl(path, examples[split])
            reached("dataset-split-written")  # test-only handshake (testhooks.py): between the renames
        elif path.exists():
            path.unlink()  # mlx-lm fails on an empty split file; no file means no split
    atomic_write_text(ws.system_prompt_path, system_prompt)


def _counts_by(pairs: Sequence[Pair], split_pairs: dict[str, list[Pair]], key: str,
               order: Callable[[str], Any] | None = None) -> dict[str, dict[str, int]]:
    """{theme or kind: {split: pairs}}, the values in sorted order (or by `order`)."""
    values = sorted({getattr(p, key) for p in pairs}, key=order)
    return {v: {s: sum(1 for p in split_pairs[s] if getattr(p, key) == v) for s in SPLITS} for v in values}


def _kind_order(kind: str) -> tuple[bool, int, str]:
    """The known kinds first, in their own order (boundary last of them), then the others alphabetically."""
    known = tuple(dict.fromkeys((*KINDS, BOUNDARY)))
    return (kind not in known, known.index(kind) if kind in known else 0, kind)


def _kind_shares(pairs: Sequence[Pair]) -> dict[str, float]:
    """{kind: share of all examples}, in the report's kind order."""
    counts = {k: sum(1 for p in pairs if p.kind == k) for k in sorted({p.kind for p in pairs}, key=_kind_order)}
    return {k: round(n / len(pairs), 4) for k, n in counts.items()} if pairs else {}


def _held_apart_notes(grouping: Grouping, pairs: Sequence[Pair]) -> list[str]:
    if not grouping.held_apart:
        return []
    i, j = grouping.examples[0]
    return [f"{grouping.held_apart} near-duplicate link(s) left unjoined so that no group outgrows "
            f"{grouping.max_size} pairs (what the smallest held-out split holds), e.g. {pairs[i].id} and "
            f"{pairs[j].id}: such pairs may land in different splits."]


def _write_manifest(ws: Workspace, report: DatasetReport, ds: DatasetSettings,
                    split_pairs: dict[str, list[Pair]]) -> None:
    manifest = {"version": MANIFEST_VERSION, **report.to_dict()}
    manifest["hash"] = report.content_hash  # what `train` records with each run
    manifest["created"] = utc_now()
    manifest["settings"] = asdict(ds)
    # In the order of each split file's lines: eval reads a held-out example's kind and cited
    # documents from here (while the manifest's hash vouches for the files).
    manifest["examples"] = {s: [{"id": p.id, "theme": p.theme, "kind": p.kind, "sources": list(p.sources)}
                                for p in split_pairs[s]] for s in SPLITS}
    atomic_write_json(manifest_path(ws), manifest)


# --- the stage -----------------------------------------------------------------------------------


def run_dataset(
    ws: Workspace,
    settings: Settings,
    extra_pairs: Iterable[Path] = (),
    base_model: str | None = None,
    pinned_test_ids: Iterable[str] | None = None,
    keep_test: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetReport:
    """Build data/{train,valid,test}.jsonl, system_prompt.txt and dataset.json from the pairs.

    `pinned_test_ids` (or `keep_test=True`, which reads them from the last dataset.json) keeps
    those pairs in the test split, so evaluations stay comparable across re-training.
    `progress(done, total)` is called while examples are tokenized. Holds the workspace lock
    (re-entrant: `demo` and `retrain` call this under their own).
    """
    with workspace_lock(ws, "dataset"):
        return _run(ws, settings, list(extra_pairs), base_model, pinned_test_ids, keep_test, progress)


def _run(ws: Workspace, settings: Settings, extra: list[Path], base_model: str | None,
         pinned_test_ids: Iterable[str] | None, keep_test: bool,
         progress: Callable[[int, int], None] | None) -> DatasetReport:
    ds, tr = settings.dataset, settings.train
    _check_fractions(ds)
    read, pairs, dropped, warnings = _read(ws, extra)
    pairs, fixes, more = with_corrections(ws, pairs)  # [learn-from-use] /good joins here (dataset/corrected.py)
    warnings += more
    pairs, echoes = drop_boundary_echoes(pairs)
    if echoes:
        warnings.append(f"{len(echoes)} boundary pair(s) dropped: an answered pair asks the same question "
                        f"(the answered one wins), e.g. {echoes[0].describe()}.")
    grouping = group_pairs(pairs, max_size=split_capacity(len(pairs), ds.valid_fraction, ds.test_fraction))
    pinned = list(pinned_test_ids or [])
    if keep_test:
        pinned += previous_test_ids(ws)
    plan = plan_splits(pairs, grouping.groups, ds.valid_fraction, ds.test_fraction, ds.seed, tr.batch_size, pinned)
    warnings += plan.warnings
    notes = plan.notes + _held_apart_notes(grouping, pairs)
    split_pairs = {s: [p for p in pairs if plan.assignment[p.id] == s] for s in SPLITS}
    # [learn-from-use] /fix corrections: train only, never one asking a test question (dataset/corrected.py)
    split_pairs, pairs, more, fix_notes = place_corrections(fixes, split_pairs, pairs)
    warnings, notes = warnings + more, notes + fix_notes
    if len(split_pairs["train"]) < tr.batch_size:
        raise DatasetError(
            f"Only {len(split_pairs['train'])} training example(s) for a batch size of {tr.batch_size}: add pairs "
            f"(mlx-partner generate, or --pairs FILE), lower batch_size in [train], or lower the valid/test fractions."
        )

    system_prompt, prompt_source = resolve_system_prompt(ws, settings)
    model_ref = base_model or tr.base_model
    tokenizer = None
    try:
        tokenizer, _ = load_base_tokenizer(model_ref, ws.root)
    except ModelError as exc:
        warnings.append(f"Length stats and template hygiene skipped: base model {model_ref}: {str(exc).rstrip('.')}.")

    # [grounded-chat] `[dataset] passages = true`: passages of her writing before each question (passages.py)
    asked = passage_questions(ws, pairs, ds.seed) if ds.passages else {}

    def example(p: Pair) -> dict[str, Any]:
        turns = [{"role": "user", "content": asked.get(p.id, p.question)}, {"role": "assistant", "content": p.answer}]
        return {"messages": chat_messages(system_prompt, turns, tokenizer)}

    examples = {s: [example(p) for p in split_pairs[s]] for s in SPLITS}
    stats: LengthStats | None = None
    hygiene: list[Check] = []
    if tokenizer is not None:
        stats, hygiene = _measure(tokenizer, split_pairs, examples, system_prompt, tr, warnings, progress)
    _write_splits(ws, examples, system_prompt)

    report = DatasetReport(
        files=read.files,
        pairs_read=len(read.pairs),
        duplicates_dropped=len(dropped),
        duplicates=[f"{d.id} ({d.origin})" for d in dropped],
        malformed=read.malformed,
        counts={s: len(split_pairs[s]) for s in SPLITS},
        by_theme=_counts_by(pairs, split_pairs, "theme"),
        by_kind=_counts_by(pairs, split_pairs, "kind", order=_kind_order),
        kind_shares=_kind_shares(pairs),
        boundary_dropped=[e.describe() for e in echoes],
        near_duplicate_groups=grouping.joined,
        near_duplicates_held_apart=grouping.held_apart,
        system_prompt=system_prompt,
        system_prompt_source=prompt_source,
        system_role=None if tokenizer is None else template_has_system_role(tokenizer),
        base_model=model_ref,
        lengths=stats,
        hygiene=hygiene,
        warnings=warnings,
        notes=notes,
        content_hash=dataset_hash(ws),
        ids={s: [p.id for p in split_pairs[s]] for s in SPLITS},
    )
    _write_manifest(ws, report, ds, split_pairs)
    return report


# --- the report as text --------------------------------------------------------------------------


def _table(title: str, rows: dict[str, dict[str, int]], shares: dict[str, float] | None = None) -> list[str]:
    """One count per split for each theme or kind; with `shares`, a column of each one's share."""
    headers = [title, *SPLITS, *(["share"] if shares is not None else [])]
    body = [[key, *(c[s] for s in SPLITS), *([f"{shares.get(key, 0.0):.0%}"] if shares is not None else [])]
            for key, c in rows.items()]
    return textwrap.indent(table(headers, body), "  ").splitlines()


def format_report(report: DatasetReport, ws: Workspace) -> str:
    """The report as `mlx-partner dataset` prints it: counts, tables, lengths, hygiene, prompt."""
    c = report.counts
    total = sum(c.values())
    out = [
        f"Pairs: {report.pairs_read} read from {len(report.files)} file(s), {report.duplicates_dropped} duplicate(s) dropped, "
        f"{len(report.malformed)} malformed line(s) skipped, {report.near_duplicate_groups} near-duplicate group(s) kept together"
        + (f", {len(report.boundary_dropped)} boundary pair(s) dropped as answered elsewhere." if report.boundary_dropped
           else "."),
        f"Examples: {total} = train {c['train']} / valid {c['valid']} / test {c['test']}",
        "",
        *_table("theme", report.by_theme),
        "",
        *_table("kind", report.by_kind, report.kind_shares),
        "",
    ]
    s = report.lengths
    if s is not None:
        out.append(f"Tokens per example ({report.base_model}): mean {s.mean}, median {s.p50}, p95 {s.p95}, max {s.max} "
                   f"(max_seq_length {s.max_seq_length})")
        peak = max((n for _, _, n in s.histogram), default=1) or 1
        for lo, hi, n in s.histogram:
            out.append(f"  {lo:>6}-{hi:<6} {'#' * max(1 if n else 0, round(30 * n / peak)):<30} {n}")
        out.append("")
        out.append("Template hygiene (one training example vs one chat turn):")
        for check in report.hygiene:
            out.append(f"  [{check.status:^4}] {check.name}: {check.detail}")
        out.append("")
    for note in report.notes:
        out.append(f"Note: {note}")
    out.append(f"System prompt (from {report.system_prompt_source}):")
    out += [f"  | {line}" for line in report.system_prompt.splitlines()]
    out.append("")
    written = [str(ws.split_path(s).relative_to(ws.root)) for s in SPLITS if c[s]]
    prompt = ws.system_prompt_path.relative_to(ws.root)
    out.append(f"Wrote {', '.join(written)}, {prompt} and {manifest_path(ws).relative_to(ws.root)} "
               f"({report.content_hash[:19]}).")
    return "\n".join(out)
