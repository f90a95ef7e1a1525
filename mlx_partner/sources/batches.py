"""Thematic batches: one request's worth of the author's documents, grouped by theme.

    batches = plan_batches(docs, token_budget=12000, seed=0)

Each theme becomes one batch, or several when it exceeds the per-request token budget; documents
longer than the budget are cut into chunks (`chunking.py`) and spread over the theme's batches,
balanced. A batch's id and hash are stable for the same theme and documents, so generate can tell
a finished batch from a changed one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter

from ..errors import SourceError
from .chunking import chunk_document
from .documents import Batch, Chunk, Document
from .themes import assign_themes, slug

MIN_TOKEN_BUDGET = 200


def _batch_hash(chunks: list[Chunk], hashes: dict[str, str]) -> str:
    key = json.dumps([[c.doc_id, hashes[c.doc_id], c.start, c.end] for c in chunks])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _bins(units: list[list[Chunk]], budget: int) -> list[list[list[Chunk]]]:
    """Spread units (a whole document, or one chunk of a long one) over as few batches as fit,
    balanced: largest first into the emptiest batch with room (worst-fit decreasing)."""
    sizes = [sum(c.tokens for c in u) for u in units]
    k = max(1, math.ceil(sum(sizes) / budget))
    order = sorted(range(len(units)), key=lambda i: (-sizes[i], units[i][0].doc_id, units[i][0].start))
    while True:
        loads, bins = [0] * k, [[] for _ in range(k)]
        for i in order:
            j = min(range(k), key=lambda b: (loads[b], b))
            if loads[j] + sizes[i] > budget:
                break
            loads[j] += sizes[i]
            bins[j].append(i)
        else:
            break
        k += 1
    ordered = [sorted(b) for b in bins if b]
    ordered.sort(key=lambda b: b[0])
    return [[units[i] for i in b] for b in ordered]


def plan_batches(documents: list[Document], token_budget: int, seed: int = 0, themes: int = 0) -> list[Batch]:
    """Thematic batches: one per theme, or several when a theme exceeds `token_budget` tokens."""
    if token_budget < MIN_TOKEN_BUDGET:
        raise SourceError(f"The token budget is {token_budget}; set sources.token_budget to at least {MIN_TOKEN_BUDGET} (12000 suits most models).")
    if not documents:
        return []
    assigned = assign_themes(documents, token_budget, seed, themes)
    # "Bread" in front matter and a bread/ folder are one theme, under its most used spelling.
    spellings: dict[str, Counter[str]] = {}
    for theme, _ in assigned.values():
        spellings.setdefault(slug(theme), Counter())[theme] += 1
    canonical = {key: min(c, key=lambda t: (-c[t], t)) for key, c in spellings.items()}
    assigned = {i: (canonical[slug(theme)], auto) for i, (theme, auto) in assigned.items()}
    hashes = {d.id: d.sha256 for d in documents}
    by_theme: dict[str, list[Document]] = {}
    for d in sorted(documents, key=lambda d: d.id):
        by_theme.setdefault(assigned[d.id][0], []).append(d)
    batches: list[Batch] = []
    used: set[str] = set()
    for theme in sorted(by_theme, key=lambda t: (slug(t), t)):
        members = by_theme[theme]
        auto = assigned[members[0].id][1]
        units: list[list[Chunk]] = []
        for d in members:
            chunks = chunk_document(d, token_budget)
            units.extend([chunks] if len(chunks) == 1 else [[c] for c in chunks])
        groups = _bins(units, token_budget)
        base = name = slug(theme)
        n = 2
        while name in used or f"{name}-1" in used:  # themes that slug alike ("Ethics", "ethics") stay apart
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        for i, group in enumerate(groups, start=1):
            chunks = [c for unit in group for c in unit]
            used.add(f"{name}-{i}")
            batches.append(
                Batch(
                    id=name if len(groups) == 1 else f"{name}-{i}",
                    theme=theme,
                    chunks=tuple(chunks),
                    tokens=sum(c.tokens for c in chunks),
                    sha256=_batch_hash(chunks, hashes),
                    auto=auto,
                )
            )
    return batches
