"""Replies -> pairs, pure: read a Messages API reply (tool call or JSON in text), turn each raw
item into a pair record, and check it (grounding, kinds, near-duplicate questions).

    raws, how = parse_reply(message, mode="tool")
    reviewed = review_pairs(raws, batch, rnd, Context(model, hashes), seen=QuestionIndex())

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

from ..grounding import KINDS, QuestionIndex, Rejection, check_pair, question_key
from ..sources.documents import Batch
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


def parse_reply(message: Mapping[str, Any], mode: str) -> tuple[list[Any], str]:
    """(raw pairs, how they came) from a reply as a dict; raises ValueError if it is unusable.

    "how" is "tool", "json", or "text-fallback" when a tool request got JSON in text instead.
    """
    if message.get("stop_reason") == "max_tokens":
        raise ValueError("the reply was cut off at max_tokens")
    blocks = message.get("content") or []
    how = mode
    payload: Any = None
    if mode == "tool":
        uses = [b for b in blocks if b.get("type") == "tool_use" and b.get("name") == TOOL_NAME]
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
    if not isinstance(payload, dict) or not isinstance(payload.get("pairs"), list):
        raise ValueError('the reply has no "pairs" list')
    if not payload["pairs"]:
        raise ValueError("the reply has an empty pairs list")
    return payload["pairs"], how


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
        "quotes": item.get("quotes"),
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


def review_pairs(
    raws: Sequence[Any],
    batch: Batch,
    rnd: Round,
    ctx: Context,
    seen: QuestionIndex,
    already: Container[int] = (),
) -> list[tuple[dict[str, Any], Rejection | None]]:
    """Check each raw pair of a reply; accepted questions are added to `seen` (the batch's index).

    Positions in `already` were accepted when this very request was answered before (a run killed
    before its ledger line): they pass as they are, their questions being in `seen` already.
    """
    texts = batch_texts(batch)
    out = []
    for position, raw in enumerate(raws):
        record = make_record(raw, batch, rnd, position, ctx)
        if position in already:
            out.append((record, None))
            continue
        why = check_pair(raw, texts, ctx.kinds) if isinstance(raw, dict) else Rejection("missing-field", "the pair is not an object")
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
