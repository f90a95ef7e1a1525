"""Token lengths of the training examples: mean, median, p95, max, a histogram, the too-long ones.

Pure: the lengths come in as {pair id: tokens}, counted the way mlx-lm's trainer tokenizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LengthStats:
    """How long the examples are, in tokens, against the training's max_seq_length."""

    count: int
    mean: float
    p50: int
    p95: int
    max: int
    max_seq_length: int
    too_long: list[tuple[str, int]]  # (pair id, tokens) over max_seq_length
    histogram: list[tuple[int, int, int]]  # (from, to, count)


def _percentile(sorted_values: Sequence[int], q: float) -> int:
    if not sorted_values:
        return 0
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return int(sorted_values[k])


def length_stats(lengths: dict[str, int], max_seq_length: int, bins: int = 10) -> LengthStats:
    """The statistics of `lengths` ({pair id: tokens}) in `bins` equal-width histogram bins."""
    values = sorted(lengths.values())
    if not values:
        return LengthStats(0, 0.0, 0, 0, 0, max_seq_length, [], [])
    lo, hi = values[0], values[-1]
    width = max(1, math.ceil((hi - lo + 1) / bins))
    hist = []
    for b in range(bins):
        start = lo + b * width
        if start > hi:
            break
        end = start + width - 1
        hist.append((start, end, sum(1 for v in values if start <= v <= end)))
    too_long = sorted(((i, n) for i, n in lengths.items() if n > max_seq_length), key=lambda x: -x[1])
    return LengthStats(len(values), round(sum(values) / len(values), 1), _percentile(values, 50),
                       _percentile(values, 95), hi, max_seq_length, too_long, hist)


def suggested_max_seq_length(longest: int) -> int:
    """The next multiple of 256 that fits the longest example."""
    return 256 * math.ceil(longest / 256)
