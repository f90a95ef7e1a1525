"""Pictures, drawn with matplotlib: a training run's loss.png and the grouped bar charts of `eval`.

matplotlib is imported inside each function (it takes a moment, and `--help` should not wait),
and we draw on a `Figure` with the Agg canvas, never through pyplot: no GUI backend, no global
figure state, safe under threads. Each picture is rendered to bytes, then written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .workspace import atomic_write_bytes

TRAIN_COLOR = "#1f77b4"
VALID_COLOR = "#ff7f0e"
MARGIN_COLOR = "#2ca02c"
SERIES_COLORS = ("#969696", "#2e6ebe", "#e68228", "#3ca05a")
SIZE = (6.4, 4.0)  # inches, at DPI: loss.png is 640x400 pixels
DPI = 100


def _figure(size: tuple[float, float] = SIZE) -> tuple[Any, Any]:
    """A figure on the Agg canvas and its one set of axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())


def _finite(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points if math.isfinite(y)]


def loss_plot(path: Path, train: Sequence[tuple[int, float]], valid: Sequence[tuple[int, float]],
              base: float | None = None, *, margin: Sequence[tuple[int, float]] = (),
              valid_margin: Sequence[tuple[int, float]] = (), method: str = "") -> None:
    """Train and validation loss against iteration, and the base model's validation loss, as a PNG.

    Points with a NaN or infinite loss are left out, so a run that diverged still gets a picture.
    A preference run (`method` orpo or dpo) plots its preference loss, and the reward margin
    (chosen minus rejected) on a second axis at the right.
    """
    train, valid = _finite(train), _finite(valid)
    margin, valid_margin = _finite(margin), _finite(valid_margin)
    fig, ax = _figure()
    if train:
        ax.plot(*zip(*train, strict=True), label="train", color=TRAIN_COLOR)
    if valid:
        ax.plot(*zip(*valid, strict=True), "o-", label="validation", color=VALID_COLOR)
    if base is not None and math.isfinite(base):
        ax.axhline(base, ls="--", color="grey", label="base model (validation)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{method} preference loss" if method else "loss")
    ax.set_title(f"Preference tuning ({method}): loss and reward margin" if method else "Training loss")
    handles, labels = ax.get_legend_handles_labels()
    if margin or valid_margin:
        right = ax.twinx()
        if margin:
            right.plot(*zip(*margin, strict=True), ":", color=MARGIN_COLOR, label="reward margin (train batch)")
        if valid_margin:
            right.plot(*zip(*valid_margin, strict=True), "s-", color=MARGIN_COLOR, label="reward margin (validation)")
        right.axhline(0.0, ls="-", lw=0.5, color=MARGIN_COLOR, alpha=0.5)
        right.set_ylabel("reward margin: chosen - rejected", color=MARGIN_COLOR)
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:
        ax.legend(handles, labels, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def bar_chart(path: Path, title: str, groups: Sequence[str], series: dict[str, Sequence[float | None]],
              ylabel: str, *, ylim: tuple[float, float] | None = None,
              value_format: str = "{:.2f}") -> None:
    """Grouped bars as a PNG: one group per label in `groups`, one bar per series in each.

    `series` maps a legend name to one value per group (None or NaN draws no bar). Each bar is
    labelled with its value through `value_format` (e.g. "{:.0%}"); `ylim` fixes the value axis.
    """
    fig, ax = _figure((max(SIZE[0], 2.0 + 1.2 * len(groups)), SIZE[1]))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        shift = (i - (len(series) - 1) / 2) * width
        heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar([g + shift for g in range(len(groups))], heights, width, label=name,
                      color=SERIES_COLORS[i % len(SERIES_COLORS)])
        labels = [value_format.format(v) if v is not None and math.isfinite(v) else "" for v in values]
        ax.bar_label(bars, labels=labels, fontsize=8, padding=2)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if series:
        ax.legend()
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    _save(fig, path)
