"""Seeded train/valid/test splits, pure: per theme within one of its share, kinds balanced,
near-duplicates kept together, every theme left a training example, an earlier test split pinned.

    groups = group_pairs(pairs, max_size=split_capacity(len(pairs), 0.1, 0.1)).groups  # duplicates.py
    plan = plan_splits(pairs, groups, valid_fraction=0.1, test_fraction=0.1, seed=0, batch_size=4)
    plan.assignment["theme0-003"]   # "train", "valid" or "test"
    plan.warnings                   # e.g. "The test split is empty: ..." with the cause
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .pairs import Pair

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
    """Each pair id's split, notes on what had to give (e.g. valid raised to a full batch), and
    warnings: a split left empty, or a theme left with no training example, each with its cause."""

    assignment: dict[str, str]  # pair id -> split
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def split_capacity(n: int, valid_fraction: float, test_fraction: float) -> int:
    """The most pairs a near-duplicate group may hold: what the smallest held-out split is meant to
    take (a larger group could only ever go to train, or swamp the split it went to)."""
    sizes = [_round(n * f) for f in (valid_fraction, test_fraction) if f > 0]
    return max(1, min(sizes)) if sizes else max(1, n)


class _Planner:
    """The groups of one plan and the split each is assigned so far (unassigned: train).

    A group belongs to the (theme, kind) cell most of its members are in. Every random draw goes
    through the one seeded `rng`, in a fixed order, so a seed always gives the same plan. Held-out
    splits never take a theme's last training example.
    """

    def __init__(self, pairs: Sequence[Pair], groups: Sequence[Sequence[int]], rng: random.Random) -> None:
        self.groups = groups
        self.rng = rng
        self.cell_of = [Counter((pairs[i].theme, pairs[i].kind) for i in g).most_common(1)[0][0] for g in groups]
        self.theme_n = Counter(p.theme for p in pairs)
        self.assignment: dict[int, str] = {}  # group index -> split

    def count(self, split: str, theme: str | None = None) -> int:
        return sum(len(self.groups[gi]) for gi, s in self.assignment.items()
                   if s == split and (theme is None or self.cell_of[gi][0] == theme))

    def room(self, theme: str) -> int:
        """How many more of a theme's pairs may be held out: all but one stay for training."""
        return self.theme_n[theme] - 1 - sum(len(self.groups[gi]) for gi in self.assignment
                                             if self.cell_of[gi][0] == theme)

    def unassigned(self) -> list[int]:
        return [gi for gi in range(len(self.groups)) if gi not in self.assignment]

    def fill(self, split: str, fraction: float, total: int) -> None:
        """Assign about `total` examples to `split`: each theme the floor or the ceiling of its
        exact share, n_theme * fraction, less what the split already holds of it."""
        free = self.unassigned()
        if total <= 0 or not free:
            return
        per_theme = round_shares({t: self.theme_n[t] * fraction for t in self.theme_n}, total, self.rng)
        # Kinds are balanced within each theme and, through the running deficit, across themes.
        expected: Counter[str] = Counter()
        got: Counter[str] = Counter()
        for theme in sorted(per_theme):
            want = min(per_theme[theme] - self.count(split, theme), self.room(theme))
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
        when the training set can spare it. Returns a note when valid had to grow.

        Groups that would overshoot the target are passed over, and so, while another will do,
        are groups that hold the last training pairs of their theme."""
        floor_valid = 1 if n > 1 else 0
        want_valid = max(floor_valid, min(batch_size, n - batch_size - self.count("test")))
        before = self.count("valid")
        candidates = sorted(self.unassigned(), key=lambda gi: (len(self.groups[gi]) > self.room(self.cell_of[gi][0]),
                                                               len(self.groups[gi]),
                                                               -self.theme_n[self.cell_of[gi][0]], self.rng.random()))
        for gi in candidates:
            have = self.count("valid")
            if have >= want_valid:
                break
            size = len(self.groups[gi])
            if have + size > want_valid or (have >= floor_valid and size > self.room(self.cell_of[gi][0])):
                continue
            if have >= floor_valid and n - have - self.count("test") - size < batch_size:
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
    Near-duplicate groups move as one, and every theme keeps a training example. Pinned ids (an
    earlier test split) stay in test. An empty split, or a theme with no training example, is a
    warning that names the cause.
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
    warnings = _split_warnings(plan, pairs, {"valid": valid_fraction, "test": test_fraction}, batch_size, pinned)
    return SplitPlan(by_id, [note] if note else [], warnings)


# --- what went wrong, and why ----------------------------------------------------------------------


def _empty_cause(plan: _Planner, split: str, fraction: float, n: int, batch_size: int) -> str:
    """Why `split` came out empty, in words a user can act on."""
    setting = f"{split}_fraction"
    if split == "test" and _round(n * fraction) == 0:
        return f"{setting} = {fraction} of {n} pairs rounds to none; add pairs or raise {setting} in [dataset]"
    sizes = sorted(len(plan.groups[gi]) for gi in plan.unassigned())
    largest_share = max((math.ceil(plan.theme_n[t] * fraction) for t in plan.theme_n), default=0)
    if split == "valid":
        largest_share = max(largest_share, min(batch_size, n - batch_size))
    if sizes and sizes[0] > largest_share:
        return (f"every near-duplicate group is larger than a theme's share of it (the smallest holds {sizes[0]} "
                f"pairs, a share at most {largest_share}): the pairs repeat each other; vary the questions")
    if all(plan.room(t) <= 0 for t in plan.theme_n):
        return "each theme keeps its last pairs for training and no theme has more to spare; add pairs"
    if split == "valid":
        return (f"train needs at least batch_size = {batch_size} examples and {n} pairs leave none to spare; "
                f"add pairs or lower batch_size in [train]")
    return f"no group fitted the theme shares of {setting} = {fraction}; add pairs or raise {setting}"


def _split_warnings(plan: _Planner, pairs: Sequence[Pair], fractions: dict[str, float], batch_size: int,
                    pinned: set[str]) -> list[str]:
    n = len(pairs)
    out = []
    for split in ("valid", "test"):
        if plan.count(split) == 0 and n > 1 and (split == "valid" or fractions[split] > 0):
            out.append(f"The {split} split is empty: {_empty_cause(plan, split, fractions[split], n, batch_size)}.")
    for theme in sorted(plan.theme_n):
        if plan.count("valid", theme) + plan.count("test", theme) < plan.theme_n[theme]:
            continue
        held = {s: plan.count(s, theme) for s in ("valid", "test")}
        n_pinned = sum(1 for p in pairs if p.theme == theme and p.id in pinned)
        if n_pinned:
            cause = (f"{n_pinned} of them are pinned to test by the earlier test split (dataset --keep-test, retrain); "
                     f"add pairs to this theme or rebuild without --keep-test")
        else:
            cause = "mlx-lm needs a valid example and no other theme could spare one; add pairs to this theme"
        out.append(f"Theme {theme} has no training examples: its {plan.theme_n[theme]} pair(s) went to "
                   f"valid {held['valid']} / test {held['test']}; {cause}.")
    return out
