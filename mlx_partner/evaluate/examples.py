"""The held-out examples eval scores: conversations from the test and valid splits.

    test = load_examples(ws.split_path("test"), "test")
    picked = select_examples(test, limit=20, seed=0, prefer=earlier_keys)

Each example is keyed by a hash of its user and assistant turns (not the system prompt), so an
example keeps its key across dataset rebuilds and a later eval can ask the same questions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..workspace import read_jsonl

__all__ = ["EvalExample", "example_key", "load_examples", "select_examples"]


@dataclass(frozen=True)
class EvalExample:
    """One training-format conversation from a split; the last assistant turn is the reference."""

    key: str  # content hash of its user and assistant turns: stable across dataset rebuilds
    split: str
    messages: tuple[dict[str, str], ...]

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


def load_examples(path: Path, split: str) -> list[EvalExample]:
    """Conversations ending in an assistant answer, from one mlx-lm chat JSONL file."""
    records, _bad = read_jsonl(path)
    out = []
    for record in records:
        messages = record.get("messages")
        if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
            continue
        if not any(m.get("role") == "user" for m in messages):
            continue
        out.append(EvalExample(example_key(messages), split, tuple(messages)))
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
