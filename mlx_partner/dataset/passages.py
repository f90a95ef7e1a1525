"""Training questions with passages of her writing before them (`[dataset] passages = true`).

    asked = passage_questions(ws, pairs, seed)      # {pair id: the user turn to train on}
    choose_passages(index, question, cited, quotes, key)   # pure: the passages for one pair

Each question is shown `prompts.RAG_PASSAGES` passages, rendered by `prompts.with_passages`,
the renderer `chat --rag` uses, so training and chat show the model the same thing: the pair's
own passage (the one holding its first quote; for a boundary pair that is the pointer to what
she did write, and there may be none) and distractors, the passages of *other* documents that
BM25 ranks closest to the question (what retrieval would wrongly offer in chat), in an order
shuffled per pair, so the model learns to use the passage that fits, wherever it is, and to
decline when none does. Off by default until measured against fine-tuning alone.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DatasetError, PartnerError
from ..grounding import normalise
from ..prompts import RAG_PASSAGES, with_passages
from ..workspace import Workspace
from .pairs import Pair

if TYPE_CHECKING:  # retrieval and sources load numpy; write.py (imported by the CLI) imports this
    from ..retrieval import Passage, SourceIndex

POOL = 20  # BM25's top passages searched for distractors


def own_passage(index: SourceIndex, cited: Sequence[str], quotes: Sequence[str], question: str) -> Passage | None:
    """The passage a pair rests on: the one of a cited document holding its first quote that one
    passage holds, else the cited documents' passage closest to the quote (or the question)."""
    cited_set = set(cited)
    candidates = [p for p in index.passages if p.doc_id in cited_set]
    for quote in quotes:
        needle = normalise(quote).strip(" .,;:\"'")
        for p in candidates:
            if needle and needle in normalise(p.text):
                return p
    query = " ".join(quotes) or question
    for hit in index.search(query, k=len(index.passages)):
        if hit.passage.doc_id in cited_set:
            return hit.passage
    return None


def choose_passages(index: SourceIndex, question: str, cited: Sequence[str], quotes: Sequence[str],
                    key: str, k: int = RAG_PASSAGES) -> list[Passage]:
    """`k` passages for one training question: its own (if any) and distractors from documents it
    does not cite, shuffled with a seed of `key` (the same order on every run)."""
    own = own_passage(index, cited, quotes, question) if (cited or quotes) else None
    chosen = [own] if own is not None else []
    others = [h.passage for h in index.search(question, k=POOL) if h.passage.doc_id not in set(cited)]
    rng = random.Random(key)
    spare = [p for p in index.passages if p.doc_id not in set(cited) and p not in others]
    rng.shuffle(spare)
    for p in others + spare:
        if len(chosen) >= k:
            break
        if p not in chosen:
            chosen.append(p)
    rng.shuffle(chosen)
    return chosen


def pair_citations(pairs: Sequence[Pair]) -> dict[str, tuple[list[str], list[str]]]:
    """{pair id: (cited documents, quote texts)}, read back from each pair's file:line (Pair keeps
    neither the quotes nor, in older records, the sources)."""
    lines: dict[str, list[str]] = {}
    out: dict[str, tuple[list[str], list[str]]] = {}
    for pair in pairs:
        path, _, number = pair.origin.rpartition(":")
        try:
            if path not in lines:
                lines[path] = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
            record = json.loads(lines[path][int(number) - 1])
        except (OSError, ValueError, IndexError):
            continue
        sources = [s for s in record.get("sources") or [] if isinstance(s, str)]
        quotes = [q.get("text", "") for q in record.get("quotes") or [] if isinstance(q, dict)]
        out[pair.id] = (sources, [q for q in quotes if isinstance(q, str) and q.strip()])
    return out


def passage_questions(ws: Workspace, pairs: Sequence[Pair], seed: int = 0) -> dict[str, str]:
    """{pair id: its question with passages before it}, over an index of the workspace's sources."""
    from ..retrieval import build_index  # numpy (through sources): only when the setting is on
    from ..sources.documents import load_documents

    try:
        documents, _skipped = load_documents(ws.sources_dir)
    except PartnerError as exc:
        raise DatasetError(f"[dataset] passages = true needs your documents: {str(exc).rstrip('.')}.") from None
    index = build_index(documents)
    citations = pair_citations(pairs)
    out = {}
    for pair in pairs:
        cited, quotes = citations.get(pair.id, (list(getattr(pair, "sources", ())), []))
        chosen = choose_passages(index, pair.question, cited, quotes, f"{seed}:{pair.id}")
        out[pair.id] = with_passages(pair.question, chosen)
    return out
