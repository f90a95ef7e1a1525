"""loss.png for a training run: train and valid loss curves.

Uses matplotlib when it is installed (the `plot` extra); otherwise draws the curves itself with
numpy and writes the PNG with zlib, so a run always gets a picture without a plotting dependency.
The fallback labels itself in a small pixel font: blue is train loss, orange (with dots) is
validation loss, the dashed grey line is the base model's validation loss.
"""

from __future__ import annotations

from pathlib import Path

TRAIN = (31, 119, 180)
VALID = (255, 127, 14)
GRID = (225, 225, 225)
AXIS = (90, 90, 90)


def write_loss_png(path: Path, train: list[tuple[int, float]], valid: list[tuple[int, float]],
                   base: float | None = None) -> None:
    """Plot (iteration, loss) series to `path`; best effort, never raises for bad numbers."""
    train = [(i, v) for i, v in train if v == v and abs(v) != float("inf")]
    valid = [(i, v) for i, v in valid if v == v and abs(v) != float("inf")]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _write_png(path, _draw(train, valid, base))
        return
    fig, ax = plt.subplots(figsize=(6.4, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train", color="#1f77b4")
    if valid:
        ax.plot(*zip(*valid, strict=True), "o-", label="valid", color="#ff7f0e")
    if base is not None:
        ax.axhline(base, ls="--", color="grey", label="base model (valid)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _draw(train, valid, base, width: int = 640, height: int = 400):
    import numpy as np

    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 40, width - 20, 20, height - 30
    points = train + valid
    xs = [i for i, _ in points] or [0, 1]
    ys = [v for _, v in points] + ([base] if base is not None else [])
    ys = ys or [0.0, 1.0]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(i: float, v: float) -> tuple[int, int]:
        x = left + (i - x0) / (x1 - x0) * (right - left)
        y = bottom - (v - y0) / (y1 - y0) * (bottom - top)
        return int(round(x)), int(round(y))

    for k in range(1, 5):  # horizontal grid
        y = top + k * (bottom - top) // 5
        img[y, left:right] = GRID
    img[top:bottom + 1, left] = AXIS
    img[bottom, left:right + 1] = AXIS
    if base is not None:
        _, y = px(x0, base)
        for x in range(left, right, 8):
            img[y, x:x + 4] = AXIS
    for series, color, dots in ((train, TRAIN, False), (valid, VALID, True)):
        pts = [px(i, v) for i, v in series]
        for a, b in zip(pts, pts[1:], strict=False):
            _line(img, a, b, color)
        if dots or len(pts) == 1:
            for x, y in pts:
                img[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = color
    _labels(img, (x0, x1), (y0, y1), (left, right, top, bottom), base is not None)
    return img


def _labels(img, xrange, yrange, box, with_base: bool) -> None:
    """Axis ranges and a legend in the small pixel font."""
    from .png import draw_text, text_width

    left, right, top, bottom = box
    draw_text(img, 2, top - 2, f"{yrange[1]:.2f}", AXIS, scale=1)
    draw_text(img, 2, bottom - 4, f"{yrange[0]:.2f}", AXIS, scale=1)
    draw_text(img, left, bottom + 8, f"{xrange[0]:g}", AXIS, scale=1)
    label = f"ITERATION {xrange[1]:g}"
    draw_text(img, right - text_width(label, 1), bottom + 8, label, AXIS, scale=1)
    x = left + 10
    for name, color in (("TRAIN", TRAIN), ("VALID", VALID)) + ((("BASE VALID", AXIS),) if with_base else ()):
        img[top + 2:top + 8, x:x + 10] = color
        draw_text(img, x + 14, top + 2, name, AXIS, scale=1)
        x += 14 + text_width(name, 1) + 16


def _line(img, a: tuple[int, int], b: tuple[int, int], color: tuple[int, int, int]) -> None:
    """A 2-pixel-thick straight line, sampled densely enough to leave no gaps."""
    n = max(abs(b[0] - a[0]), abs(b[1] - a[1]), 1)
    h, w = img.shape[:2]
    for t in range(n + 1):
        x = a[0] + (b[0] - a[0]) * t // n
        y = a[1] + (b[1] - a[1]) * t // n
        img[max(y - 1, 0):min(y + 1, h), max(x - 1, 0):min(x + 1, w)] = color


def _write_png(path: Path, img) -> None:
    """Write an RGB uint8 array as a PNG, atomically."""
    from .png import png_bytes
    from .workspace import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(img, "train loss (blue), valid loss (orange), base valid loss (dashed)"))
