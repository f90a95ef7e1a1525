"""The held-out examples eval scores: conversations from the test and valid splits.

    meta = split_meta(ws)                                   # each line's kind and cited documents
    test = load_examples(ws.split_path("test"), "test", meta.get("test"))
    picked = select_examples(test, limit=20, seed=0, prefer=earlier_keys)

Each example is keyed by a hash of its user and assistant turns (not the system prompt), so an
example keeps its key across dataset rebuilds and a later eval can ask the same questions. The
split files are mlx-lm's chat format, which has no room for a pair's kind or sources; those come
from data/dataset.json, line for line, when its hash vouches for the files as they are. Without
it, an example whose reference answer declines is taken for a boundary pair.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dataset.duplicates import BOUNDARY
from ..dataset.manifest import SPLITS, dataset_hash, load_manifest
from ..decline import is_decline
from ..errors import DatasetError
from ..prompts import question_of
from ..workspace import Workspace, read_jsonl

__all__ = ["EvalExample", "carries_passages", "example_key", "load_examples", "plain_question", "select_examples", "split_meta"]



@dataclass(frozen=True)
class EvalExample:
    """One training-format conversation from a split; the last assistant turn is the reference."""

    key: str  # content hash of its user and assistant turns: stable across dataset rebuilds
    split: str
    messages: tuple[dict[str, str], ...]
    kind: str = ""  # the pair's kind (genuine, ..., boundary); "" when dataset.json does not say
    sources: tuple[str, ...] = ()  # the documents the pair cites

    @property
    def expects_decline(self) -> bool:
        """A boundary pair: the author's answer declines, so declining is right here."""
        return self.kind == BOUNDARY if self.kind else is_decline(self.reference)

    @property
    def system(self) -> str:
        return next((m["content"] for m in self.messages if m.get("role") == "system"), "")

    @property
    def question(self) -> str:
        return next(m["content"] for m in reversed(self.messages) if m.get("role") == "user")

    @property
    def reference(self) -> str:
        return self.messages[-1]["content"]


def example_key(messages: Sequence[dict[str, str]]) -> str:
    """A stable id for a conversation: the system prompt is left out, so a new profile keeps ids."""
    turns = [[m.get("role", ""), m.get("content", "")] for m in messages if m.get("role") != "system"]
    return hashlib.sha256(repr(turns).encode("utf-8")).hexdigest()[:16]


def plain_question(question: str) -> str:
    """The question without the passages `[dataset] passages = true` puts before it
    (`prompts.question_of`, stripped); retrieval is measured on the question itself."""
    asked = question_of(question)
    return asked.strip() if asked != question else question


def carries_passages(examples: Sequence[EvalExample]) -> bool:
    """True when the examples' questions have passages before them: a dataset built with
    `[dataset] passages = true`, so the run trained on it expects passages in every prompt."""
    return any(plain_question(ex.question) != ex.question for ex in examples)


def split_meta(ws: Workspace) -> dict[str, list[dict[str, Any]]]:
    """{split: [{"id", "kind", "sources", ...} per line]} from data/dataset.json, or {} when it is
    missing, unreadable, or does not vouch for the split files as they are now."""
    try:
        manifest = load_manifest(ws)
    except DatasetError:
        return {}
    if manifest.get("hash") != dataset_hash(ws):
        return {}
    examples = manifest.get("examples") or {}
    return {s: list(examples.get(s) or []) for s in SPLITS}


def load_examples(path: Path, split: str, meta: Sequence[dict[str, Any]] | None = None) -> list[EvalExample]:
    """Conversations ending in an assistant answer, from one mlx-lm chat JSONL file; `meta` (the
    manifest's records for this split, line for line) adds each one's kind and cited documents."""
    records, bad = read_jsonl(path)
    aligned = meta is not None and not bad and len(meta) == len(records)
    out = []
    for n, record in enumerate(records):
        messages = record.get("messages")
        if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
            continue
        if not any(m.get("role") == "user" for m in messages):
            continue
        info = meta[n] if aligned and meta is not None and isinstance(meta[n], dict) else {}
        sources = tuple(str(s) for s in info.get("sources") or () if isinstance(s, str))
        out.append(EvalExample(example_key(messages), split, tuple(messages), str(info.get("kind") or ""), sources))
    return out


def select_examples(examples: Sequence[EvalExample], limit: int, seed: int = 0,
                    prefer: Sequence[str] = ()) -> list[EvalExample]:
    """A deterministic subset: keys in `prefer` first (to match an earlier eval), then a seeded order."""
    if limit <= 0:
        return []
    rank = {key: i for i, key in enumerate(prefer)}

    def order(ex: EvalExample) -> tuple[int, str]:
        if ex.key in rank:
            return (0, f"{rank[ex.key]:08d}")
        return (1, hashlib.sha256(f"{seed}:{ex.key}".encode()).hexdigest())

    unique = {ex.key: ex for ex in examples}
    return sorted(unique.values(), key=order)[:limit]
