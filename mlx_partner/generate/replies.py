"""Replies -> pairs, pure: read a Messages API reply (tool call or JSON in text), turn each raw
item into a pair record, and check it (grounding, kinds, near-duplicate questions).

    raws, how = parse_reply(message, mode="tool")
    reviewed = review_pairs(raws, batch, rnd, Context(model, hashes), seen=QuestionIndex())
    reviewed = review_pairs(raws, batch, boundary_round, ctx, seen, absence=check)   # boundary pairs

A boundary round's pairs must be boundary pairs, the answer kinds' rounds must not be; a boundary
pair is also checked absent from the whole corpus (`boundary.AbsenceCheck`) and records its
coverage and the threshold that admitted it.

A reply that cannot be used raises ValueError with the reason, which the runner sends back
to the model as the note of a re-ask.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..grounding import BOUNDARY, KINDS, QuestionIndex, Rejection, check_pair, question_key
from ..sources.documents import Batch
from .boundary import AbsenceCheck
from .requests import PROMPT_VERSION, TOOL_NAME, Round, batch_texts


def _json_from_text(text: str) -> Any:
    text = text.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.S)
    if fence:
        text = fence.group(1)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the reply")
    return json.loads(text[start : end + 1])


def parse_reply(message: Mapping[str, Any], mode: str, tool: str = TOOL_NAME, field: str = "pairs") -> tuple[list[Any], str]:
    """(raw pairs, how they came) from a reply as a dict; raises ValueError if it is unusable.

    "how" is "tool", "json", or "text-fallback" when a tool request got JSON in text instead.
    `tool` and `field` name the tool and its list (the probe request's are record_probes, questions).
    """
    if message.get("stop_reason") == "max_tokens":
        raise ValueError("the reply was cut off at max_tokens")
    blocks = message.get("content") or []
    how = mode
    payload: Any = None
    if mode == "tool":
        uses = [b for b in blocks if b.get("type") == "tool_use" and b.get("name") == tool]
        if uses:
            payload = uses[0].get("input")
            if isinstance(payload, str):  # some compatible endpoints send the input as a string
                try:
                    payload = json.loads(payload)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"the tool input is not valid JSON ({exc.msg})") from None
        else:
            how = "text-fallback"
    if payload is None:
        text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        if not text.strip():
            raise ValueError("the reply has no tool call and no text")
        try:
            payload = _json_from_text(text)
        except (ValueError, json.JSONDecodeError) as exc:
            what = "no tool call and no" if how == "text-fallback" else "no"
            raise ValueError(f"{what} valid JSON in the reply ({exc})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get(field), list):
        raise ValueError(f'the reply has no "{field}" list')
    if not payload[field]:
        raise ValueError(f"the reply has an empty {field} list")
    return payload[field], how


def pair_id(batch_id: str, question: str) -> str:
    return hashlib.sha256(f"{batch_id}\n{question_key(question)}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Context:
    """What every pair record of one run carries about how it was made."""

    model: str
    hashes: Mapping[str, str]  # doc_id -> sha256
    kinds: tuple[str, ...] = KINDS


def make_record(raw: Any, batch: Batch, rnd: Round, position: int, ctx: Context) -> dict[str, Any]:
    """A pair record from one raw item of a reply (which may be malformed; checks come later)."""
    item = raw if isinstance(raw, dict) else {}
    question = item.get("question") if isinstance(item.get("question"), str) else ""
    sources = item.get("sources") if isinstance(item.get("sources"), list) else []
    cited = [s.strip() for s in sources if isinstance(s, str)]
    record: dict[str, Any] = {
        "id": pair_id(batch.id, question) if question.strip() else f"{batch.id}-r{rnd.index}-{position}",
        "batch": batch.id,
        "theme": batch.theme,
        "type": item.get("type"),
        "question": question.strip(),
        "answer": item.get("answer").strip() if isinstance(item.get("answer"), str) else item.get("answer"),
        "sources": cited,
        "quotes": item.get("quotes", [] if item.get("type") == BOUNDARY else None),
        "model": ctx.model,
        "prompt_version": PROMPT_VERSION,
        "source_hashes": {d: ctx.hashes[d] for d in cited if d in ctx.hashes},
        "round": rnd.index,
        "position": position,
        "batch_sha": batch.sha256,
    }
    if not isinstance(raw, dict):
        record["raw"] = raw
    return record


def check_absent(record: dict[str, Any], absence: AbsenceCheck | None, held_out: QuestionIndex | None) -> Rejection | None:
    """A boundary question her writing must not answer, nor a probe's repeat; notes the coverage."""
    if absence is None:
        return Rejection("answerable", "no absence check was available for this boundary pair")
    coverage, hit = absence.score(record["question"])
    record["coverage"], record["threshold"] = coverage, absence.threshold
    if coverage >= absence.threshold:
        return Rejection("answerable", absence.detail(coverage, hit))
    twin = held_out.find(record["question"]) if held_out is not None else None
    if twin is not None:
        return Rejection("held-out", f"nearly repeats the probe {twin[1]!r} ({twin[2]:.2f}), which is never trained on")
    return None


def review_pairs(
    raws: Sequence[Any],
    batch: Batch,
    rnd: Round,
    ctx: Context,
    seen: QuestionIndex,
    already: Container[int] = (),
    *,
    absence: AbsenceCheck | None = None,
    held_out: QuestionIndex | None = None,
) -> list[tuple[dict[str, Any], Rejection | None]]:
    """Check each raw pair of a reply; accepted questions are added to `seen` (the batch's index).

    Positions in `already` were accepted when this very request was answered before (a run killed
    before its ledger line): they pass as they are, their questions being in `seen` already.
    A boundary round's pairs go through `check_absent` against `absence` and `held_out` (the probes).
    """
    texts = batch_texts(batch)
    kinds = (BOUNDARY,) if rnd.boundary else tuple(k for k in ctx.kinds if k != BOUNDARY)
    out = []
    for position, raw in enumerate(raws):
        record = make_record(raw, batch, rnd, position, ctx)
        if position in already:
            out.append((record, None))
            continue
        why = check_pair(raw, texts, kinds) if isinstance(raw, dict) else Rejection("missing-field", "the pair is not an object")
        if why is None and rnd.boundary:
            why = check_absent(record, absence, held_out)
        if why is None:
            twin = seen.find(record["question"])
            if twin is not None:
                why = Rejection("duplicate", f"nearly repeats {twin[1]!r} ({twin[2]:.2f})")
        if why is None:
            seen.add(record["question"], batch.id)
        out.append((record, why))
    return out


def cross_batch_duplicates(pairs: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    """Indexes of pairs that nearly repeat an earlier pair of another batch, with the detail.

    `pairs` must be in a fixed order (batch order, then round, then position): the first of two
    near-duplicates stays, whatever order the replies arrived in.
    """
    index = QuestionIndex()
    losers = []
    for i, pair in enumerate(pairs):
        twin = index.find(pair["question"])
        if twin is not None and twin[0] != pair["batch"]:
            losers.append((i, f"nearly repeats {twin[1]!r} of batch {twin[0]} ({twin[2]:.2f})"))
            continue
        index.add(pair["question"], pair["batch"])
    return losers
