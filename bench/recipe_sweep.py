"""A recipe sweep that can decide: full `mlx-partner train` runs over a grid of settings, each judged
on its best held-out (validation) loss, the time it took to get there, and the whole run's time.

Each configuration is a set of `mlx-partner train` flags; every run starts from the same base and
data, in a scratch copy of the workspace's data/ (no runs are left behind). Results go to stdout
as a table and, one JSON object per run, to --out (appended, so a sweep can be resumed or
extended). Loss alone does not pick the defaults: run `mlx-partner eval` on the winners too.

    python bench/recipe_sweep.py --model ~/.cache/mlx-partner/models/smollm2-135m-instruct \\
        --workspace /tmp/ws --grid "lr=1e-4,2e-4,4e-4 epochs=3,6" --out bench/results/recipe.jsonl
    python bench/recipe_sweep.py ... --config "--learning-rate 2e-4 --epochs 6" --config ""

Grid keys: lr, epochs, iters, rank, scale (not a flag: via partner.toml), layers, batch, accum,
warmup, patience. Runs one at a time; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raw_mlx_lm import plain_env, run_ours, scratch_workspace  # noqa: E402

FLAGS = {"lr": "--learning-rate", "epochs": "--epochs", "iters": "--iters", "rank": "--lora-rank",
         "layers": "--num-layers", "batch": "--batch-size", "accum": "--grad-accumulation",
         "patience": "--patience"}
TOML = {"warmup": "warmup_fraction", "scale": "lora_scale"}


def grid_configs(spec: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """'lr=1e-4,2e-4 epochs=3,6' -> [(label, flags, toml keys)], the cross product."""
    axes = []
    for part in spec.split():
        key, _, values = part.partition("=")
        if key not in FLAGS and key not in TOML:
            raise SystemExit(f"unknown grid key {key!r}; use {', '.join([*FLAGS, *TOML])}")
        axes.append([(key, v) for v in values.split(",")])
    out = []
    for combo in itertools.product(*axes):
        flags, toml = [], {}
        for key, value in combo:
            if key in FLAGS:
                flags += [FLAGS[key], value]
            elif TOML[key]:
                toml[TOML[key]] = value
        out.append((" ".join(f"{k}={v}" for k, v in combo), flags, toml))
    return out


def run_config(ws_source: Path, model: Path, label: str, flags: list[str], toml: dict[str, str],
               timeout: float) -> dict:
    ws = scratch_workspace(ws_source)
    try:
        if toml:
            (ws / "partner.toml").write_text("[train]\n" + "".join(f"{k} = {v}\n" for k, v in toml.items()))
        env = {k: v for k, v in plain_env().items() if k != "MLX_PARTNER_FAST_BLAS"}
        run = run_ours(label, ws, ["--base-model", str(model), *flags], env, timeout)
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    valid = [v for v in run.valid if v["iteration"] >= 1]
    best = min(valid, key=lambda v: v["val_loss"]) if valid else None
    base = next((v["val_loss"] for v in run.valid if v["iteration"] <= 1), None)
    return {"label": label, "flags": flags, "toml": toml, "base_val": base,
            "best_val": best["val_loss"] if best else None, "best_iteration": best["iteration"] if best else None,
            "best_at_s": best["elapsed_s"] if best else None, "wall_s": run.wall_s,
            "last_iteration": max((v["iteration"] for v in run.valid), default=0),
            "valid": run.valid, "tokens_per_second": run.tokens_per_second,
            "load_average": os.getloadavg()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--workspace", type=Path, default=Path("."), help="Holds data/train.jsonl and valid.jsonl.")
    p.add_argument("--grid", default="", help='e.g. "lr=1e-4,2e-4 epochs=3,6"')
    p.add_argument("--config", action="append", default=[], help="Explicit flags for one run (repeatable).")
    p.add_argument("--out", type=Path, default=Path("bench/results/recipe.jsonl"))
    p.add_argument("--timeout", type=float, default=3600)
    a = p.parse_args()
    configs = grid_configs(a.grid) if a.grid else []
    configs += [(c or "defaults", shlex.split(c), {}) for c in a.config]
    if not configs:
        raise SystemExit("nothing to run: give --grid or --config")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    model = a.model.expanduser().resolve()
    print(f"{'config':36} {'base':>6} {'best':>6} {'at it':>5} {'at s':>6} {'wall s':>6} load")
    for label, flags, toml in configs:
        r = run_config(a.workspace.expanduser().resolve(), model, label, flags, toml, a.timeout)
        with a.out.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        print(f"{label:36} {r['base_val'] or 0:6.3f} {r['best_val'] or 0:6.3f} {r['best_iteration'] or 0:5d} "
              f"{r['best_at_s'] or 0:6.0f} {r['wall_s']:6.0f} {r['load_average']:.1f}", flush=True)


if __name__ == "__main__":
    main()
