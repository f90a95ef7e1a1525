"""Time to quality, the arbiter of a training recipe: how long `mlx-partner train` (its defaults)
takes to reach the best validation loss raw mlx-lm reaches with its own defaults, and whether our
own best is at least as good. Targets: time ratio ours / theirs <= 0.5, best-loss difference
ours - theirs <= 0.

Theirs: `python -m mlx_lm lora`'s flow with its defaults (learning rate 1e-5, constant; batch 4;
16 layers; rank 8), run long enough to plateau: --their-iters iterations (200), or until
--their-patience validations in a row (3) have not beaten its best, validating every
--their-eval-every iterations (10 times a run) over the whole valid set, with prompt masking (its
only non-default here, so both losses measure the same thing: the answers). Theirs runs with the
same OpenBLAS we use, so the comparison is about the recipe (learning rate, schedule, validation,
early stopping), not the BLAS. Ours: `mlx-partner train` with its defaults (pass more with
--ours "--epochs 2"). Time counts from process launch to the first validation at or below their
best, so model loading counts on both sides. With --repeat N both sides run N times, alternating,
and the medians decide. Raw mlx-lm's side is seeded and deterministic in its losses (only its
timing varies), and it is the long one (200 iterations are ~40 minutes on a 2-core CPU); with
--theirs-from RECORD a previous invocation's raw runs (its --out/--json record) stand in for new
ones, refused unless the model, the data (train/valid's SHA-256) and raw's settings are the same. Both runs' validation loss against time goes into one picture (--plot).

    python bench/time_to_quality.py --model ~/.cache/mlx-partner/models/smollm2-135m-instruct --workspace . --repeat 3
    python bench/time_to_quality.py --model /tmp/tiny --workspace /tmp/ws --their-iters 8 --ours "--iters 8" \\
        --plot /tmp/ttq.png --json --out /tmp/ttq.jsonl

The learning rate default was chosen with this data and SmolLM2-135M; see train/schedule.py for the record.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raw_mlx_lm import Run, fast_env, float32_copy, plain_env, run_ours, run_raw, scratch_workspace  # noqa: E402

TIME_TARGET = 0.5  # ours reaches raw's best in at most half its time
LOSS_TARGET = 0.0  # and our own best is no worse than raw's
RESULTS = Path(__file__).resolve().parent / "results"
RAW_SETTINGS = ("their_iters", "their_eval_every", "their_patience")  # what makes raw's run what it was


# --- the numbers (pure) ---------------------------------------------------------------------------


def side(run: Run, target: float) -> dict[str, Any]:
    """One run's record: its best, when it first reached `target`, and its whole curve."""
    return {"best_val": run.best_val, "reaches_target_s": run.first_reaching(target), "wall_s": run.wall_s,
            "iterations": run.iterations, "stopped": run.stopped, "valid": run.valid}


def one_round(theirs: Run, ours: Run) -> dict[str, Any]:
    """One repeat: the target is raw mlx-lm's best in this round; both sides timed to it."""
    target = theirs.best_val
    return {"target_val_loss": target, "theirs": side(theirs, target), "ours": side(ours, target)}


def data_digest(data: Path) -> str:
    """SHA-256 of train.jsonl and valid.jsonl: what a recorded raw run must have trained on."""
    h = hashlib.sha256()
    for name in ("train.jsonl", "valid.jsonl"):
        h.update((data / name).read_bytes())
    return h.hexdigest()


def recorded_theirs(record: dict[str, Any], model: str, digest: str, settings: dict[str, Any]) -> list[Run]:
    """Raw mlx-lm's runs from a previous record, if they were made of the same model, data and
    settings; otherwise SystemExit saying which differs."""
    want = {"model": model, "data_sha256": digest, **{k: settings[k] for k in RAW_SETTINGS}}
    have = {"model": record.get("model"), "data_sha256": record.get("data_sha256"),
            **{k: record.get("settings", {}).get(k) for k in RAW_SETTINGS}}
    differ = [k for k in want if want[k] != have[k]]
    if differ:
        raise SystemExit(f"--theirs-from: the record's {', '.join(differ)} differ from this run's "
                         f"({', '.join(f'{have[k]} vs {want[k]}' for k in differ)}); run raw mlx-lm again.")
    runs = [Run(f"theirs (recorded {record.get('time', '?')})", r["theirs"]["wall_s"], valid=r["theirs"]["valid"],
                stopped=r["theirs"]["stopped"], iterations=r["theirs"]["iterations"]) for r in record.get("rounds", [])]
    if not runs:
        raise SystemExit("--theirs-from: the record holds no rounds.")
    return runs


def _median(values: list[float | None]) -> float | None:
    """The median, a missing value (never reached) counting as infinitely late; None if that wins."""
    m = statistics.median([math.inf if v is None else v for v in values]) if values else math.inf
    return m if math.isfinite(m) else None


def verdict(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of time to raw's best and of each side's best loss; the time ratio
    and the best-loss difference (ours - theirs), and whether each meets its target."""
    theirs_s = _median([r["theirs"]["reaches_target_s"] for r in rounds])
    ours_s = _median([r["ours"]["reaches_target_s"] for r in rounds])
    theirs_best = _median([r["theirs"]["best_val"] for r in rounds])
    ours_best = _median([r["ours"]["best_val"] for r in rounds])
    ratio = ours_s / theirs_s if ours_s is not None and theirs_s else None
    difference = ours_best - theirs_best if ours_best is not None and theirs_best is not None else None
    return {"theirs_s": theirs_s, "ours_s": ours_s, "theirs_best": theirs_best, "ours_best": ours_best,
            "ratio": ratio, "difference": difference,
            "time_ok": ratio is not None and ratio <= TIME_TARGET,
            "loss_ok": difference is not None and difference <= LOSS_TARGET + 1e-9}


def ok(flag: bool) -> str:
    return "ok" if flag else "ABOVE TARGET"


def num(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def summary_lines(v: dict[str, Any], rounds: int, ours_flags: str, recorded: int = 0) -> list[str]:
    """What the arbiter says, in a few lines; `recorded`: how many raw runs came from a record."""
    of = f"median of {rounds}" if rounds > 1 else "one run each"
    if recorded:
        of = f"{recorded} recorded raw run{'s' if recorded > 1 else ''}; ours {'median of ' + str(rounds) if rounds > 1 else 'one run'}"
    lines = [f"raw mlx-lm defaults: best val loss {num(v['theirs_best'], '.3f')}, first reached in "
             f"{num(v['theirs_s'], '.1f')}s ({of})",
             f"mlx-partner train{' ' + ours_flags if ours_flags else ''}: best val loss {num(v['ours_best'], '.3f')}, "
             + (f"reaches raw's best in {v['ours_s']:.1f}s" if v["ours_s"] is not None else "never reaches raw's best")]
    lines.append(f"time to raw's best, ours / theirs: {num(v['ratio'], '.2f')}x "
                 f"(target <= {TIME_TARGET:g}: {ok(v['time_ok'])})")
    lines.append(f"best loss, ours - theirs: {num(v['difference'], '+.3f')} "
                 f"(target <= {LOSS_TARGET:g}: {ok(v['loss_ok'])})")
    return lines


def round_line(i: int, n: int, r: dict[str, Any]) -> str:
    """One round, for stderr as it finishes."""
    def part(name: str, s: dict[str, Any], reaches: str) -> str:
        how = ", ".join(x for x in (f"{s['iterations']} iterations", s["stopped"], f"{s['wall_s']:.1f}s") if x)
        return f"{name} best {s['best_val']:.3f}, {reaches} {num(s['reaches_target_s'], '.1f')}s ({how})"
    return (f"round {i + 1}/{n}: " + part("theirs", r["theirs"], "first at") + "; "
            + part("ours", r["ours"], "reaches theirs at"))


# --- the picture ------------------------------------------------------------------------------------


def plot_curves(path: Path, rounds: list[dict[str, Any]], target: float | None) -> None:
    """Both sides' validation loss against seconds from launch, every round, in one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mlx_partner.plots import DPI, SERIES_COLORS, SIZE
    from mlx_partner.workspace import atomic_write_bytes

    fig = Figure(figsize=SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for key, name, color in (("theirs", "raw mlx-lm defaults", SERIES_COLORS[0]),
                             ("ours", "mlx-partner train", SERIES_COLORS[1])):
        for i, r in enumerate(rounds):
            points = [(v["elapsed_s"], v["val_loss"]) for v in r[key]["valid"] if math.isfinite(v["val_loss"])]
            if points:
                ax.plot(*zip(*points, strict=True), "o-", ms=3, color=color, alpha=1.0 if i == 0 else 0.4,
                        label=name if i == 0 else None)
    if target is not None and math.isfinite(target):
        ax.axhline(target, ls="--", color="grey", lw=1, label=f"raw's best ({target:.3f})")
    ax.set_xlabel("seconds from launch")
    ax.set_ylabel("validation loss (answers)")
    ax.set_title("Time to quality" + (f" ({len(rounds)} rounds)" if len(rounds) > 1 else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


# --- the runs ---------------------------------------------------------------------------------------


def raw_config(model: Path, data: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Raw mlx-lm's config: its defaults, but for the run's length, validation and prompt masking."""
    layers = json.loads((model / "config.json").read_text()).get("num_hidden_layers", 16)
    return {
        "model": str(model), "data": str(data), "iters": a.their_iters,
        "steps_per_eval": a.their_eval_every or max(1, a.their_iters // 10), "val_batches": -1,
        "mask_prompt": True, "save_every": a.their_iters + 1,
        "num_layers": min(16, layers),  # mlx-lm's default, on models with fewer layers: all of them
        "plateau_patience": a.their_patience,
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="An mlx-lm model folder.")
    p.add_argument("--workspace", type=Path, default=Path("."), help="A workspace with data/train.jsonl, valid.jsonl.")
    p.add_argument("--their-iters", "--iters", type=int, default=200, help="Raw mlx-lm iterations at most (its default is 1000).")
    p.add_argument("--their-eval-every", type=int, default=0, help="Raw mlx-lm validation cadence (default: 10 times a run).")
    p.add_argument("--their-patience", type=int, default=3,
                   help="Stop raw mlx-lm once this many validations in a row have not beaten its best (0 = run all iterations).")
    p.add_argument("--ours", default="", help="Extra flags for `mlx-partner train`, e.g. \"--epochs 2\".")
    p.add_argument("--theirs-from", type=Path,
                   help="A previous record (--out/--json) whose raw mlx-lm runs stand in for new ones (same model, data, settings).")
    p.add_argument("--repeat", type=int, default=1, help="Run both sides this many times; medians decide.")
    p.add_argument("--plot", type=Path, default=RESULTS / "time_to_quality.png", help="The loss curves' PNG.")
    p.add_argument("--out", type=Path, help="Append the JSON record to this file (one line per invocation).")
    p.add_argument("--timeout", type=float, default=7200)
    p.add_argument("--json", action="store_true", help="The JSON record on stdout (the summary goes to stderr).")
    a = p.parse_args()
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    return a


def main() -> None:
    a = parse_args()
    say = (lambda line: print(line, file=sys.stderr)) if a.json else print
    model = a.model.expanduser().resolve()
    ws = scratch_workspace(a.workspace.expanduser().resolve())
    work = Path(tempfile.mkdtemp(prefix="mlx-partner-ttq-"))
    rounds = []
    try:
        config = raw_config(float32_copy(model, work), ws / "data", a)
        digest = data_digest(ws / "data")
        settings = {"their_iters": a.their_iters, "their_eval_every": config["steps_per_eval"],
                    "their_patience": a.their_patience, "ours": a.ours, "repeat": a.repeat}
        recorded = (recorded_theirs(json.loads(a.theirs_from.read_text().splitlines()[-1]), str(model), digest, settings)
                    if a.theirs_from else [])
        ours_env = {k: v for k, v in plain_env().items() if k != "MLX_PARTNER_FAST_BLAS"}
        for i in range(a.repeat):
            theirs = (recorded[i % len(recorded)] if recorded
                      else run_raw("theirs", config, fast_env() or plain_env(), work, a.timeout))
            ours = run_ours("ours", ws, ["--base-model", str(model), *shlex.split(a.ours)], ours_env, a.timeout)
            r = one_round(theirs, ours)
            rounds.append(r)
            print(round_line(i, a.repeat, r), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(ws, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    v = verdict(rounds)
    plot_curves(a.plot, rounds, v["theirs_best"])
    say(f"model {model.name}:")
    for line in summary_lines(v, a.repeat, a.ours, len(recorded)):
        say(line)
    say(f"loss curves: {a.plot}")
    record = {"model": str(model), "workspace": str(a.workspace.expanduser().resolve()), "data_sha256": digest,
              "settings": settings, "theirs_from": str(a.theirs_from) if a.theirs_from else None,
              "targets": {"ratio": TIME_TARGET, "difference": LOSS_TARGET},
              **v, "rounds": rounds, "plot": str(a.plot),
              "load_average": os.getloadavg()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with a.out.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
    if a.json:
        print(json.dumps(record))


if __name__ == "__main__":
    main()
