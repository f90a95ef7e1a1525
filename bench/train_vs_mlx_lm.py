"""Training throughput and memory: `mlx-partner train` against raw `python -m mlx_lm lora`.

Same model, data and settings (LoRA, prompt masking, batch, layers, rank, iterations, validation
cadence over the whole valid set) through three commands, alternating, median of --runs each:

  ours        mlx-partner train (its console script picks the fast BLAS itself)
  raw         raw mlx-lm as a user installs it (the Linux mlx[cpu] wheel's reference BLAS)
  raw+blas    raw mlx-lm given the same OpenBLAS (LD_PRELOAD), i.e. what is left of our overhead

Prints tokens/s (loss-bearing tokens over training time, validation excluded, as mlx-lm reports
them), the peak memory MLX measured, and the ratios: ours / raw, ours / raw+blas (target >= 0.97)
and peak memory ours / raw+blas (target <= 1.05).

    python bench/train_vs_mlx_lm.py --model ~/.cache/mlx-partner/models/smollm2-135m-instruct \
        --workspace . --iters 30 --runs 3
    python bench/train_vs_mlx_lm.py --model /tmp/tiny --workspace /tmp/ws --iters 10   # seconds

Quantized or half-precision models are given to raw mlx-lm as a float32 copy on a CPU backend,
since `mlx-partner train` computes in float32 there: otherwise the comparison measures dtypes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raw_mlx_lm import (  # noqa: E402
    fast_env,
    float32_copy,
    median,
    plain_env,
    run_ours,
    run_raw,
    scratch_workspace,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="An mlx-lm model folder.")
    p.add_argument("--workspace", type=Path, default=Path("."), help="A workspace with data/train.jsonl, valid.jsonl.")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--runs", type=int, default=3, help="Runs of each command (median).")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-layers", type=int, default=16)
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--skip-slow", action="store_true", help="Skip raw mlx-lm with the reference BLAS.")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--json", action="store_true", help="Print the results as JSON too.")
    a = p.parse_args()

    model = a.model.expanduser().resolve()
    layers = json.loads((model / "config.json").read_text()).get("num_hidden_layers", a.num_layers)
    num_layers = min(a.num_layers, layers) if a.num_layers > 0 else layers
    eval_every = max(1, a.iters // 2)
    ws = scratch_workspace(a.workspace.expanduser().resolve())
    work = Path(tempfile.mkdtemp(prefix="mlx-partner-bench-raw-"))
    try:
        raw_model = float32_copy(model, work)
        raw_config = {
            "model": str(raw_model), "data": str(ws / "data"), "fine_tune_type": "lora", "mask_prompt": True,
            "batch_size": a.batch_size, "iters": a.iters, "num_layers": num_layers, "learning_rate": a.learning_rate,
            "max_seq_length": a.max_seq_length, "steps_per_eval": eval_every, "val_batches": -1,
            "steps_per_report": 5 if a.iters >= 10 else 1, "save_every": a.iters + 1,
        }
        ours_flags = [
            "--base-model", str(model), "--iters", str(a.iters), "--batch-size", str(a.batch_size),
            "--num-layers", str(num_layers), "--learning-rate", str(a.learning_rate),
            "--max-seq-length", str(a.max_seq_length), "--steps-per-eval", str(eval_every), "--patience", "0",
        ]
        ours_env = {k: v for k, v in plain_env().items() if k != "MLX_PARTNER_FAST_BLAS"}
        blas_env = fast_env()
        results: dict[str, list] = {"ours": [], "raw": [], "raw+blas": []}
        commands = [("ours", lambda: run_ours("ours", ws, ours_flags, ours_env, a.timeout))]
        if blas_env is not None:
            commands.append(("raw+blas", lambda: run_raw("raw+blas", raw_config, blas_env, work, a.timeout)))
        if not a.skip_slow:
            commands.append(("raw", lambda: run_raw("raw", raw_config, plain_env(), work, a.timeout)))
        for i in range(a.runs):  # alternate, and rotate who goes first, so drift hits every command alike
            for name, run in commands[i % len(commands):] + commands[:i % len(commands)]:
                results[name].append(run())
            done = {k: f"{median([r.tokens_per_second for r in v]):.0f} tok/s" for k, v in results.items() if v}
            print(f"round {i + 1}/{a.runs}: {done}", file=sys.stderr)
    finally:
        shutil.rmtree(ws, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    table = {k: {"tokens_per_second": median([r.tokens_per_second for r in v]),
                 "peak_gb": median([r.peak_gb for r in v]), "wall_s": median([r.wall_s for r in v]), "runs": len(v)}
             for k, v in results.items() if v}
    print(f"model {model.name}, {a.iters} iterations, batch {a.batch_size}, {num_layers} LoRA layers, median of {a.runs}")
    print(f"{'command':<10} {'tokens/s':>10} {'peak GB':>9} {'wall s':>8}")
    for k, t in table.items():
        print(f"{k:<10} {t['tokens_per_second']:>10.1f} {t['peak_gb']:>9.3f} {t['wall_s']:>8.1f}")
    ours = table["ours"]
    ratios = {}
    if "raw" in table:
        ratios["tokens_vs_raw"] = ours["tokens_per_second"] / table["raw"]["tokens_per_second"]
        print(f"tokens/s, ours / raw mlx-lm as installed:      {ratios['tokens_vs_raw']:.2f}x")
    if "raw+blas" in table:
        ratios["tokens_vs_raw_blas"] = ours["tokens_per_second"] / table["raw+blas"]["tokens_per_second"]
        ratios["peak_vs_raw_blas"] = ours["peak_gb"] / table["raw+blas"]["peak_gb"]
        ok = "ok" if ratios["tokens_vs_raw_blas"] >= 0.97 else "BELOW TARGET"
        print(f"tokens/s, ours / raw mlx-lm with the same BLAS: {ratios['tokens_vs_raw_blas']:.2f}x (target >= 0.97: {ok})")
        ok = "ok" if ratios["peak_vs_raw_blas"] <= 1.05 else "ABOVE TARGET"
        print(f"peak memory, ours / raw mlx-lm with the same BLAS: {ratios['peak_vs_raw_blas']:.2f}x (target <= 1.05: {ok})")
    else:
        print("OpenBLAS (cmeel-openblas) is not available: no same-BLAS comparison.")
    if a.json:
        print(json.dumps({"settings": vars(a) | {"model": str(model), "workspace": str(a.workspace)}, "results": table, "ratios": ratios}, default=str))


if __name__ == "__main__":
    main()
