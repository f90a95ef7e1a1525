"""Seeded train/valid/test splits, pure: per theme within one of its share, kinds balanced,
near-duplicates kept together, an earlier test split pinned.

    groups = near_duplicate_groups([p.question for p in pairs])
    plan = plan_splits(pairs, groups, valid_fraction=0.1, test_fraction=0.1, seed=0, batch_size=4)
    plan.assignment["theme0-003"]   # "train", "valid" or "test"
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .. import grounding
from ..grounding import DUPLICATE_THRESHOLD, content_words, similarity
from .pairs import Pair, duplicate_key

# --- near-duplicate groups -----------------------------------------------------------------------


def near_duplicate_groups(texts: Sequence[str], threshold: float | None = None) -> list[list[int]]:
    """Indices grouped so that near-duplicate texts (transitively) share a group.

    "Near-duplicate" is `generate`'s definition (grounding.similarity: cosine of character
    4-gram counts, at grounding.DUPLICATE_THRESHOLD), but every pair above it is linked, not
    only the closest, so that no two near-duplicates can land in different splits. Candidates
    come from an inverted index on content words (a pair must share half of them), so
    thousands of texts stay fast.
    """
    limit = DUPLICATE_THRESHOLD if threshold is None else threshold
    vocab = [content_words(t) or set(duplicate_key(t).split()) for t in texts]
    # similarity() rebuilds both vectors on every call; build each once (same vectors, same
    # cosine: 5x faster on 3,000 questions).
    vectors = [grounding.question_grams(t) for t in texts]
    norms = [math.sqrt(sum(v * v for v in g.values())) for g in vectors] if vectors else []

    def close(i: int, j: int) -> bool:
        if vectors is None:
            return similarity(texts[i], texts[j]) >= limit
        a, b = vectors[i], vectors[j]
        if not norms[i] or not norms[j]:
            return False
        return sum(v * b.get(k, 0) for k, v in a.items()) / (norms[i] * norms[j]) >= limit
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    index: dict[str, list[int]] = defaultdict(list)
    for i, words in enumerate(vocab):
        shared: Counter[int] = Counter()
        for w in words:
            for j in index[w]:
                shared[j] += 1
        for j, common in shared.items():
            if common * 2 < min(len(words), len(vocab[j])):
                continue  # under half the content words in common: not the same question
            if find(i) != find(j) and close(i, j):
                parent[find(i)] = find(j)
        for w in words:
            index[w].append(i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(texts)):
        groups[find(i)].append(i)
    return sorted(groups.values(), key=lambda g: g[0])


# --- shares --------------------------------------------------------------------------------------


def round_shares(shares: dict[str, float], total: int, rng: random.Random,
                 priority: dict[str, float] | None = None, capacity: dict[str, int] | None = None) -> dict[str, int]:
    """Whole numbers summing to `total`, each the floor of its share or one more (largest remainder).

    `priority` (e.g. how far behind its share a key is so far) is added to the remainder when
    handing out the extra units, ties are broken at random, and no key gets more than its
    `capacity`. With shares summing to about `total`, every key stays within one of its share.
    """
    out = {k: math.floor(q) for k, q in shares.items()}
    bonus = priority or {}
    keys = sorted(shares, key=lambda k: (-(shares[k] - out[k] + bonus.get(k, 0.0)), rng.random()))
    keys = [k for k in keys if capacity is None or out[k] < capacity.get(k, 0)]
    for k in keys[: max(0, total - sum(out.values()))]:
        out[k] += 1
    return out


def apportion(total: int, weights: dict[str, float], rng: random.Random,
              priority: dict[str, float] | None = None, capacity: dict[str, int] | None = None) -> dict[str, int]:
    """Split `total` over keys in proportion to `weights` (see `round_shares`)."""
    mass = sum(weights.values())
    if total <= 0 or mass <= 0:
        return {k: 0 for k in weights}
    return round_shares({k: total * w / mass for k, w in weights.items()}, total, rng, priority, capacity)


def _round(x: float) -> int:
    return math.floor(x + 0.5)


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitPlan:
    """Each pair id's split, and notes on what had to give (e.g. valid raised to a full batch)."""

    assignment: dict[str, str]  # pair id -> split
    notes: list[str] = field(default_factory=list)


class _Planner:
    """The groups of one plan and the split each is assigned so far (unassigned: train).

    A group belongs to the (theme, kind) cell most of its members are in. Every random draw goes
    through the one seeded `rng`, in a fixed order, so a seed always gives the same plan.
    """

    def __init__(self, pairs: Sequence[Pair], groups: Sequence[Sequence[int]], rng: random.Random) -> None:
        self.groups = groups
        self.rng = rng
        self.cell_of = [Counter((pairs[i].theme, pairs[i].kind) for i in g).most_common(1)[0][0] for g in groups]
        self.theme_n = Counter(p.theme for p in pairs)
        self.assignment: dict[int, str] = {}  # group index -> split

    def count(self, split: str) -> int:
        return sum(len(self.groups[gi]) for gi, s in self.assignment.items() if s == split)

    def unassigned(self) -> list[int]:
        return [gi for gi in range(len(self.groups)) if gi not in self.assignment]

    def fill(self, split: str, fraction: float, total: int) -> None:
        """Assign about `total` examples to `split`: each theme the floor or the ceiling of its
        exact share, n_theme * fraction, less what the split already holds of it."""
        free = self.unassigned()
        if total <= 0 or not free:
            return
        taken: Counter[str] = Counter()
        for gi, s in self.assignment.items():
            if s == split:
                taken[self.cell_of[gi][0]] += len(self.groups[gi])
        per_theme = round_shares({t: self.theme_n[t] * fraction for t in self.theme_n}, total, self.rng)
        # Kinds are balanced within each theme and, through the running deficit, across themes.
        expected: Counter[str] = Counter()
        got: Counter[str] = Counter()
        for theme in sorted(per_theme):
            want = per_theme[theme] - taken[theme]
            if want > 0:
                in_theme = [gi for gi in free if self.cell_of[gi][0] == theme]
                self._fill_theme(split, in_theme, want, expected, got)

    def _fill_theme(self, split: str, in_theme: list[int], want: int, expected: Counter[str],
                    got: Counter[str]) -> None:
        """`want` examples of one theme's groups to `split`, each kind its proportional share."""
        kind_n: Counter[str] = Counter()
        for gi in in_theme:
            kind_n[self.cell_of[gi][1]] += len(self.groups[gi])
        deficit = {k: expected[k] - got[k] for k in kind_n}
        per_kind = apportion(want, dict(kind_n), self.rng, priority=deficit, capacity=dict(kind_n))
        for k, n_k in kind_n.items():
            expected[k] += want * n_k / sum(kind_n.values())
            got[k] += per_kind[k]
        leftover = 0
        for kind in sorted(per_kind):
            cell = [gi for gi in in_theme if self.cell_of[gi][1] == kind]
            self.rng.shuffle(cell)
            leftover = self._take(split, cell, per_kind[kind] + leftover)  # large groups pass it on

    def _take(self, split: str, cell: list[int], need: int) -> int:
        """Assign groups of `cell` that fit in `need` examples; returns what is still needed."""
        for gi in cell:
            if need <= 0:
                break
            if len(self.groups[gi]) <= need:
                self.assignment[gi] = split
                need -= len(self.groups[gi])
        return need

    def raise_valid(self, n: int, batch_size: int) -> str | None:
        """mlx-lm validates over whole batches: give valid at least one example, and a full batch
        when the training set can spare it. Returns a note when valid had to grow."""
        floor_valid = 1 if n > 1 else 0
        want_valid = max(floor_valid, min(batch_size, n - batch_size - self.count("test")))
        before = self.count("valid")
        candidates = sorted(self.unassigned(), key=lambda gi: (len(self.groups[gi]),
                                                               -self.theme_n[self.cell_of[gi][0]], self.rng.random()))
        for gi in candidates:
            if self.count("valid") >= want_valid:
                break
            train_left = n - self.count("valid") - self.count("test") - len(self.groups[gi])
            if self.count("valid") >= floor_valid and train_left < batch_size:
                break
            self.assignment[gi] = "valid"
        if self.count("valid") > before:
            return (f"valid raised from {before} to {self.count('valid')} example(s) so that mlx-lm can validate "
                    f"(it needs a full batch of {batch_size}).")
        return None


def plan_splits(
    pairs: Sequence[Pair],
    groups: Sequence[Sequence[int]],
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    batch_size: int,
    pinned_test_ids: Iterable[str] = (),
) -> SplitPlan:
    """Assign every pair to train, valid or test.

    Per theme the valid and test counts are the theme's share of the total, rounded so that each
    theme is within one of its exact share; within a theme, kinds get their proportional share.
    Near-duplicate groups move as one. Pinned ids (an earlier test split) stay in test.
    """
    n = len(pairs)
    pinned = set(pinned_test_ids)
    plan = _Planner(pairs, groups, random.Random(seed))
    for gi, g in enumerate(groups):
        if any(pairs[i].id in pinned for i in g):
            plan.assignment[gi] = "test"
    if test_fraction > 0:
        plan.fill("test", test_fraction, _round(n * test_fraction))
    elif pinned:
        for gi in [gi for gi, s in plan.assignment.items() if s == "test"]:
            del plan.assignment[gi]
    plan.fill("valid", valid_fraction, _round(n * valid_fraction))
    note = plan.raise_valid(n, batch_size)
    by_id = {pairs[i].id: plan.assignment.get(gi, "train") for gi, g in enumerate(groups) for i in g}
    return SplitPlan(by_id, [note] if note else [])
