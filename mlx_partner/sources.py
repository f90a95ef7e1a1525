"""The author's documents: loading, chunking, themes and thematic batches.

    docs, skipped = load_documents(ws.sources_dir)
    batches = plan_batches(docs, token_budget=12000, seed=0)

INTERFACE DRAFT - being implemented; the types and signatures below are the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Document:
    id: str  # path under sources/, POSIX style, e.g. "ethics/attention.md" (stable id)
    path: Path
    text: str  # the body (front matter removed), newlines normalised to \n; quotes are checked against this
    title: str
    theme: str | None  # explicit theme: front matter `theme:` or first subfolder; None = automatic
    date: str | None
    words: int
    tokens: int  # estimate
    sha256: str  # hash of the normalised text


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    start: int  # offsets into Document.text
    end: int
    text: str
    tokens: int


@dataclass(frozen=True)
class Skipped:
    path: str  # relative to sources/
    reason: str


@dataclass(frozen=True)
class Batch:
    id: str  # filesystem-safe, stable for the same theme and documents, e.g. "ethics-1"
    theme: str
    chunks: tuple[Chunk, ...]
    tokens: int
    sha256: str  # hash over its documents' hashes and chunk offsets

    @property
    def doc_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.doc_id for c in self.chunks))


def estimate_tokens(text: str) -> int:
    """About 4 characters a token for English prose, as the Anthropic docs suggest."""
    return max(1, round(len(text) / 4)) if text else 0


def load_documents(sources_dir: Path) -> tuple[list[Document], list[Skipped]]:
    raise NotImplementedError


def plan_batches(documents: list[Document], token_budget: int, seed: int = 0, themes: int = 0) -> list[Batch]:
    raise NotImplementedError
