"""Near-duplicate pairs, pure: which pairs must share a split, and which boundary pairs repeat an answer.

    grouping = group_pairs(pairs, max_size=split_capacity(len(pairs), 0.1, 0.1))
    grouping.groups            # [[0, 5], [1], ...]: indices into `pairs`; a group moves as one
    kept, echoes = drop_boundary_echoes(pairs)   # boundary questions an answered pair already asks

Two pairs are near-duplicates when their questions *and* their answers are: the same question
asked twice with two different answers is two examples, and templated questions ("Question 12
about X: what do you make of point 3?") with different answers are not one group. Groups are
joined transitively (a ~ b and b ~ c put all three together, so no near-duplicate can straddle
two splits), but a group never grows past `max_size`, what a held-out split holds: a link that
would make it larger is left unjoined and counted, so one run of look-alike pairs cannot pull a
whole theme into valid.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..grounding import DUPLICATE_THRESHOLD, QuestionIndex, content_words, question_grams
from .pairs import Pair, duplicate_key

__all__ = [
    "ANSWER_DUPLICATE_THRESHOLD",
    "BOUNDARY",
    "BoundaryEcho",
    "Grouping",
    "drop_boundary_echoes",
    "group_pairs",
    "near_duplicate_groups",
]

BOUNDARY = "boundary"  # the pair kind whose answer declines (see grounding.KINDS)

# Answers are compared like questions (cosine of the character 4-grams of their content words).
# Measured on examples/pairs.jsonl: its 60 distinct answers, five per essay, are at most 0.52
# alike; one of them rewritten sentence by sentence in other words still scores 0.84 against it.
ANSWER_DUPLICATE_THRESHOLD = 0.7


@dataclass(frozen=True)
class Grouping:
    """Near-duplicate groups (indices, each sorted, groups in order of their first index)."""

    groups: list[list[int]]
    held_apart: int = 0  # near-duplicate links left unjoined because a group would pass max_size
    max_size: int | None = None
    examples: list[tuple[int, int]] = field(default_factory=list)  # a few (i, j) links held apart

    @property
    def joined(self) -> int:
        """How many groups hold more than one pair."""
        return sum(1 for g in self.groups if len(g) > 1)


class _Vectors:
    """Each text's 4-gram counts and norm, built once (similarity() would rebuild them per call)."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.grams = [question_grams(t) for t in texts]
        self.norms = [math.sqrt(sum(v * v for v in g.values())) for g in self.grams]

    def cosine(self, i: int, j: int) -> float:
        a, b = self.grams[i], self.grams[j]
        if not self.norms[i] or not self.norms[j]:
            return 0.0
        return sum(v * b.get(k, 0) for k, v in a.items()) / (self.norms[i] * self.norms[j])


def _candidates(questions: Sequence[str]) -> list[tuple[int, int]]:
    """(j, i) with j < i whose questions share at least half their content words, in a fixed order.

    An inverted index on content words, so thousands of questions stay fast."""
    vocab = [content_words(t) or set(duplicate_key(t).split()) for t in questions]
    index: dict[str, list[int]] = defaultdict(list)
    out: list[tuple[int, int]] = []
    for i, words in enumerate(vocab):
        shared: Counter[int] = Counter()
        for w in words:
            for j in index[w]:
                shared[j] += 1
        out += [(j, i) for j, common in sorted(shared.items()) if common * 2 >= min(len(words), len(vocab[j]))]
        for w in words:
            index[w].append(i)
    return out


def near_duplicate_groups(questions: Sequence[str], answers: Sequence[str] | None = None, *,
                          threshold: float | None = None, answer_threshold: float | None = None,
                          max_size: int | None = None) -> Grouping:
    """Indices grouped so that near-duplicate pairs (transitively) share a group.

    A link needs the questions at `threshold` (grounding.DUPLICATE_THRESHOLD, `generate`'s
    definition) and, when `answers` are given, the answers at `answer_threshold`
    (ANSWER_DUPLICATE_THRESHOLD). No group grows past `max_size` pairs (None: no limit).
    """
    q_limit = DUPLICATE_THRESHOLD if threshold is None else threshold
    a_limit = ANSWER_DUPLICATE_THRESHOLD if answer_threshold is None else answer_threshold
    qv = _Vectors(questions)
    av = _Vectors(answers) if answers is not None else None
    parent = list(range(len(questions)))
    size = [1] * len(questions)
    held_apart: list[tuple[int, int]] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for j, i in _candidates(questions):
        ri, rj = find(i), find(j)
        if ri == rj or qv.cosine(i, j) < q_limit or (av is not None and av.cosine(i, j) < a_limit):
            continue
        if max_size is not None and size[ri] + size[rj] > max_size:
            held_apart.append((j, i))
            continue
        parent[ri] = rj
        size[rj] += size[ri]
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(questions)):
        groups[find(i)].append(i)
    return Grouping(sorted(groups.values(), key=lambda g: g[0]), len(held_apart), max_size, held_apart[:3])


def group_pairs(pairs: Sequence[Pair], max_size: int | None = None) -> Grouping:
    """`near_duplicate_groups` over the pairs' questions and answers."""
    return near_duplicate_groups([p.question for p in pairs], [p.answer for p in pairs], max_size=max_size)


# --- boundary pairs that repeat an answered question ---------------------------------------------


@dataclass(frozen=True)
class BoundaryEcho:
    """A boundary pair dropped because an answered pair asks (nearly) the same question."""

    dropped: Pair
    answered: Pair
    similarity: float

    def describe(self) -> str:
        return (f"{self.dropped.id} ({self.dropped.origin}) asks what {self.answered.id} answers "
                f"(similarity {self.similarity:.2f})")


def drop_boundary_echoes(pairs: Sequence[Pair]) -> tuple[list[Pair], list[BoundaryEcho]]:
    """(kept, dropped): a boundary question that is a near-duplicate of an answered pair's question
    is dropped, and the answered pair wins; declining a question the author did answer would teach
    the partner to decline what she wrote about. Questions only: the answers differ by design."""
    index = QuestionIndex()
    answered = [p for p in pairs if p.kind != BOUNDARY]
    for n, pair in enumerate(answered):
        index.add(pair.question, label=str(n))
    kept: list[Pair] = []
    echoes: list[BoundaryEcho] = []
    for pair in pairs:
        hit = index.find(pair.question) if pair.kind == BOUNDARY else None
        if hit is None:
            kept.append(pair)
        else:
            echoes.append(BoundaryEcho(pair, answered[int(hit[0])], hit[2]))
    return kept, echoes
