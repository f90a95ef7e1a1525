"""The ledger and the pairs on disk -> what is left to do: finished requests, pairs whose sources
changed, message batches a killed run left behind, and the rounds each batch still needs.

    done = finished_requests(read_jsonl(ws.ledger_path)[0])
    plans = plan_generation(batches, load_active_pairs(ws), done, settings.generate)
    append_ledger(ws, [record])      # every line gets "version": LEDGER_VERSION
    tools_failed_before(ledger, url, model)   # a resumed run starts in JSON in text

A request's key (batch id @ batch hash # round / prompt version) is what makes a run resumable:
a key with an ok ledger record is never sent again. This module owns data/ledger.jsonl: one line
per request (tokens, cost, status, source hashes) or event (`reset`, `message_batch`,
`message_batch_done`, and `probes`: the probe request, which has no key because data/probes.jsonl
itself says whether it is done). A request's line says `"boundary": true` for a boundary round. Lines written before the ledger carried a version read as version 1.
All pure but `pair_files` and `load_active_pairs`, which only read, and `append_ledger`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import GenerateSettings
from ..grounding import BOUNDARY
from ..sources.documents import Batch
from ..workspace import BadLine, Workspace, append_jsonl, read_jsonl
from .requests import (
    PROMPT_VERSION,
    Round,
    allocate,
    batch_words,
    boundary_count,
    default_total,
    normalise_mix,
    plan_rounds,
)

# The format of a ledger line. Readers accept lines without a "version" (written before it had
# one) as version 1; a later format bumps this and reads the older lines as they are.
LEDGER_VERSION = 1


def append_ledger(ws: Workspace, records: Iterable[Mapping[str, Any]]) -> None:
    """Append records to data/ledger.jsonl, each with a "version" unless it carries one."""
    append_jsonl(ws.ledger_path, [{"version": LEDGER_VERSION, **r} for r in records])


def finished_requests(ledger: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """{request key: its ok record}. A `reset` event (from --force) forgets a batch's requests."""
    done: dict[str, Mapping[str, Any]] = {}
    for rec in ledger:
        if rec.get("event") == "reset":
            prefix = f"{rec.get('batch')}@"
            for key in [k for k in done if k.startswith(prefix)]:
                del done[key]
        elif rec.get("status") == "ok" and rec.get("key"):
            done[rec["key"]] = rec
    return done


def stale_pairs(pairs: Iterable[Mapping[str, Any]], hashes: Mapping[str, str]) -> list[tuple[Mapping[str, Any], str]]:
    """Pairs citing a document that changed or is gone, with the reason."""
    out = []
    for pair in pairs:
        for doc_id, sha in (pair.get("source_hashes") or {}).items():
            if doc_id not in hashes:
                out.append((pair, f"source removed: {doc_id}"))
                break
            if hashes[doc_id] != sha:
                out.append((pair, f"source changed: {doc_id}"))
                break
    return out


def unfinished_message_batches(ledger: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Message batches a run submitted but never collected (it was killed while polling)."""
    records = list(ledger)
    done = {r.get("id") for r in records if r.get("event") == "message_batch_done"}
    return [dict(r) for r in records if r.get("event") == "message_batch" and r.get("id") not in done]


def tools_failed_before(ledger: Iterable[Mapping[str, Any]], generator: str, model: str) -> bool:
    """True when an earlier run's tool requests to this generator (its URL) and model failed and
    it went on in JSON in text, with no tool reply accepted since: a resumed run starts in JSON,
    so it neither spends a (slow, local) request finding that out again nor asks a round
    differently from the run it resumes."""
    state = ""
    for r in ledger:
        if not generator or r.get("generator") != generator or r.get("model") != model or "mode" not in r:
            continue
        status = r.get("status", r.get("result"))
        if r["mode"] == "tool" and status == "ok":
            state = ""
        elif r["mode"] == "tool" and status in ("invalid", "error"):  # malformed, or tools refused
            state = "failed"  # (a network failure says nothing about tool use)
        elif r["mode"] == "json" and state == "failed":
            state = "switched"
    return state == "switched"


def from_planned_rounds(pair: Mapping[str, Any], batch: Batch) -> bool:
    """Whether a pair on disk came from one of the rounds planned now (this batch version, this
    prompt version); the others are kept pairs, which the planned rounds only top up."""
    return pair.get("batch_sha") == batch.sha256 and pair.get("prompt_version") == PROMPT_VERSION


@dataclass(frozen=True)
class BatchPlan:
    """One batch: how many pairs it should have, and the rounds still to send."""

    batch: Batch
    target: int
    kept: int  # active pairs from an earlier version of this batch or prompt, still grounded
    rounds: tuple[Round, ...]
    todo: tuple[Round, ...]


def plan_generation(
    batches: Sequence[Batch],
    active: Mapping[str, Sequence[Mapping[str, Any]]],
    done: Mapping[str, Any],
    settings: GenerateSettings,
) -> list[BatchPlan]:
    """Each batch's share of the pairs, its rounds, and those not yet done (in `done`).

    Kept pairs count against their own part of the target: kept answers against the answer
    kinds, kept boundary pairs against the boundary pairs. So a batch generated before boundary
    pairs existed (an older prompt version) is asked for its boundary round alone.
    """
    mix = normalise_mix(settings.mix)
    total = settings.pairs_total if settings.pairs_total > 0 else default_total(batches)
    targets = allocate(total, [batch_words(b) for b in batches])
    plans = []
    for batch, target in zip(batches, targets, strict=True):
        kept = [p for p in active.get(batch.id, ()) if not from_planned_rounds(p, batch)]
        kept_boundary = sum(1 for p in kept if p.get("type") == BOUNDARY)
        boundary = boundary_count(target, mix)
        n_boundary = max(0, boundary - kept_boundary)
        n_answers = max(0, target - boundary - (len(kept) - kept_boundary))
        rounds = plan_rounds(batch, n_answers + n_boundary, settings.pairs_per_round, mix, boundary=n_boundary)
        todo = tuple(r for r in rounds if r.key not in done)
        plans.append(BatchPlan(batch, target, len(kept), tuple(rounds), todo))
    return plans


def asked_before(plan: BatchPlan, rnd: Round, active: Sequence[Mapping[str, Any]], done: Mapping[str, Any]) -> list[str]:
    """Questions to list in `rnd`: kept pairs of earlier versions, then each finished round's."""
    asked = [p["question"] for p in active if not from_planned_rounds(p, plan.batch)]
    for earlier in plan.rounds[: rnd.index]:
        asked += list((done.get(earlier.key) or {}).get("questions", []))
    return asked


def pair_files(ws: Workspace) -> Iterator[tuple[Path, list[dict[str, Any]], list[BadLine]]]:
    """(path, records, torn lines) of each data/pairs/<batch>.jsonl, in name order."""
    if ws.pairs_dir.is_dir():
        for path in sorted(ws.pairs_dir.glob("*.jsonl")):
            records, bad = read_jsonl(path)
            yield path, records, bad


def load_active_pairs(ws: Workspace) -> dict[str, list[dict[str, Any]]]:
    """{batch id: its pairs on disk}, batches with none left out."""
    return {path.stem: records for path, records, _bad in pair_files(ws) if records}
