"""A recipe sweep that can decide: full `mlx-partner train` runs over a grid of settings, each judged
on its best held-out (validation) loss, the time it took to get there, and the whole run's time.

Each configuration is a set of `mlx-partner train` flags; every run starts from the same base and
data, in a scratch copy of the workspace's data/ (no runs are left behind). Results go to stdout
as a table and, one JSON object per run, to --out (appended, so a sweep can be resumed or
extended). Loss alone does not pick the defaults: with --eval, each run's adapters are kept long
enough for `mlx-partner eval --run <name>` in the scratch workspace (which then also holds copies
of sources/ and profile.md; data/test.jsonl and, for near-domain declines, data/probes.jsonl come
with data/), and the row records the tuned model's answer F1, style similarity, test loss and the
three decline figures: near-domain probes declined, far probes declined, and false declines of
questions she did answer (lower is better); the base model's beside them in the JSON. The base
model's answers are scored once and reused by every later config's eval (eval's own cache).

    python bench/recipe_sweep.py --model ~/.cache/mlx-partner/models/smollm2-135m-instruct \\
        --workspace /tmp/ws --grid "lr=1e-4,2e-4,4e-4 epochs=3,6" --out bench/results/recipe.jsonl
    python bench/recipe_sweep.py ... --config "--learning-rate 2e-4 --epochs 6" --config "" \\
        --eval --eval-args "--limit 20"

Grid keys: lr, epochs, iters, rank, scale, layers, batch, accum, warmup, patience, minsteps, dropout
(scale, warmup, minsteps and dropout have no flag: they go in the scratch partner.toml). Runs one at a time; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raw_mlx_lm import partner_command, plain_env, run_ours, scratch_workspace  # noqa: E402

FLAGS = {"lr": "--learning-rate", "epochs": "--epochs", "iters": "--iters", "rank": "--lora-rank",
         "layers": "--num-layers", "batch": "--batch-size", "accum": "--grad-accumulation",
         "patience": "--patience"}
TOML = {"warmup": "warmup_fraction", "scale": "lora_scale", "minsteps": "min_steps_fraction", "dropout": "lora_dropout"}
# What a row keeps of eval's summary of each model (metrics.json "summary"): key -> table heading
EVAL_FIGURES = {"f1": "F1", "style": "style", "test_loss": "test", "near_declines": "near",
                "grounded": "far", "abstained_answerable": "false"}


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


def eval_figures(metrics: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """The figures a sweep row keeps of eval's metrics.json, for the tuned and the base model (pure)."""
    out = {}
    for label in ("tuned", "base"):
        s = (metrics.get("summary") or {}).get(label) or {}
        out[label] = {k: (s.get("test") or {}).get("loss") if k == "test_loss" else s.get(k) for k in EVAL_FIGURES}
    return out


def evaluate(ws: Path, run_name: str, eval_args: list[str], env: dict[str, str], cache: Path,
             timeout: float) -> dict[str, Any]:
    """`mlx-partner eval --run <name>` in the scratch workspace; its figures and how long it took.

    `cache` holds the previous config's eval/<run>/: copied in first, it lets eval reuse the base
    model's answers (same model, settings and questions), then this one's replaces it.
    """
    if cache.is_dir():
        shutil.copytree(cache, ws / "eval", dirs_exist_ok=True)
    t0 = time.time()
    proc = subprocess.run([*partner_command(), "-w", str(ws), "eval", "--run", run_name, "--quiet", *eval_args],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"mlx-partner eval failed ({run_name}):\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}")
    metrics = json.loads((ws / "eval" / run_name / "metrics.json").read_text())
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(ws / "eval" / run_name, cache / run_name)
    return {"eval_s": time.time() - t0, "eval_args": eval_args, **eval_figures(metrics)}


def run_config(ws_source: Path, model: Path, label: str, flags: list[str], toml: dict[str, str],
               timeout: float, eval_args: list[str] | None = None, eval_cache: Path | None = None) -> dict:
    """One full `mlx-partner train` run in a scratch copy of the data (and, with eval_args, its eval)."""
    ws = scratch_workspace(ws_source, with_sources=eval_args is not None)
    try:
        if toml:
            (ws / "partner.toml").write_text("[train]\n" + "".join(f"{k} = {v}\n" for k, v in toml.items()))
        env = {k: v for k, v in plain_env().items() if k != "MLX_PARTNER_FAST_BLAS"}
        run = run_ours(label, ws, ["--base-model", str(model), *flags], env, timeout, keep=eval_args is not None)
        scored = evaluate(ws, run.name, eval_args, env, eval_cache, timeout) if eval_args is not None and eval_cache else None
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    valid = [v for v in run.valid if v["iteration"] >= 1]
    best = min(valid, key=lambda v: v["val_loss"]) if valid else None
    base = next((v["val_loss"] for v in run.valid if v["iteration"] <= 1), None)
    return {"label": label, "flags": flags, "toml": toml, "base_val": base,
            "best_val": best["val_loss"] if best else None, "best_iteration": best["iteration"] if best else None,
            "best_at_s": best["elapsed_s"] if best else None, "wall_s": run.wall_s,
            "last_iteration": max((v["iteration"] for v in run.valid), default=0),
            "stopped": run.stopped, "iterations": run.iterations,
            "valid": run.valid, "tokens_per_second": run.tokens_per_second,
            **({"eval": scored} if scored is not None else {}),
            "load_average": os.getloadavg()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _cell(value: float | None) -> str:
    return f"{value:6.3f}" if value is not None else f"{'-':>6}"


def table_row(r: dict[str, Any]) -> str:
    """One config's line of the printed table (eval's figures for the tuned model, if it ran)."""
    line = (f"{r['label']:36} {_cell(r['base_val'])} {_cell(r['best_val'])} {r['best_iteration'] or 0:5d} "
            f"{r['best_at_s'] or 0:6.0f} {r['wall_s']:6.0f}")
    if "eval" in r:
        line += " " + " ".join(_cell(r["eval"]["tuned"][k]) for k in EVAL_FIGURES)
    return line + f" {r['load_average']:.1f}"


def table_header(with_eval: bool) -> str:
    head = f"{'config':36} {'base':>6} {'best':>6} {'at it':>5} {'at s':>6} {'wall s':>6}"
    if with_eval:
        head += " " + " ".join(f"{h:>6}" for h in EVAL_FIGURES.values())
    return head + " load"


def has_test_pairs(ws: Path) -> bool:
    path = ws / "data" / "test.jsonl"
    return path.exists() and any(line.strip() for line in path.read_text(encoding="utf-8").splitlines())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--workspace", type=Path, default=Path("."), help="Holds data/train.jsonl and valid.jsonl.")
    p.add_argument("--grid", default="", help='e.g. "lr=1e-4,2e-4 epochs=3,6"')
    p.add_argument("--config", action="append", default=[], help="Explicit flags for one run (repeatable).")
    p.add_argument("--out", type=Path, default=Path("bench/results/recipe.jsonl"))
    p.add_argument("--eval", action="store_true", help="Run `mlx-partner eval` on each config's run too.")
    p.add_argument("--eval-args", default="", help='Extra flags for `mlx-partner eval`, e.g. "--limit 10".')
    p.add_argument("--timeout", type=float, default=3600)
    a = p.parse_args()
    configs = grid_configs(a.grid) if a.grid else []
    configs += [(c or "defaults", shlex.split(c), {}) for c in a.config]
    if not configs:
        raise SystemExit("nothing to run: give --grid or --config")
    source = a.workspace.expanduser().resolve()
    if a.eval and not has_test_pairs(source):
        raise SystemExit(f"--eval needs held-out test pairs in {source / 'data' / 'test.jsonl'}: "
                         "build the dataset with [dataset] test_fraction above 0.")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    model = a.model.expanduser().resolve()
    eval_args = shlex.split(a.eval_args) if a.eval else None
    cache = Path(tempfile.mkdtemp(prefix="mlx-partner-sweep-eval-")) / "eval"
    print(table_header(a.eval))
    try:
        for label, flags, toml in configs:
            r = run_config(source, model, label, flags, toml, a.timeout, eval_args, cache)
            with a.out.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            print(table_row(r), flush=True)
    finally:
        shutil.rmtree(cache.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
