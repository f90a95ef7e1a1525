"""Time to quality: how long `mlx-partner train` (its defaults) takes to reach the best validation
loss that raw mlx-lm reaches with its own defaults. Target: ours <= 0.5x theirs.

Theirs: `python -m mlx_lm lora`'s flow with its defaults (learning rate 1e-5, constant; batch 4;
16 layers; rank 8) for --their-iters iterations, validating every --their-eval-every over the whole
valid set, with prompt masking (its only non-default here, so both losses measure the same thing:
the answers). Theirs runs with the same OpenBLAS we use, so the comparison is about the recipe
(learning rate, schedule, validation, early stopping), not the BLAS. Ours: `mlx-partner train`
with its defaults (pass more with --ours "--epochs 2"). Time counts from process launch to the
first validation at or below their best, so model loading counts on both sides.

    python bench/time_to_quality.py --model ~/.cache/mlx-partner/models/smollm2-135m-instruct --workspace .
    python bench/time_to_quality.py --model /tmp/tiny --workspace /tmp/ws --their-iters 20 --ours "--iters 20"

The learning rate default was chosen with this data and SmolLM2-135M; see train/schedule.py for the record.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raw_mlx_lm import fast_env, float32_copy, plain_env, run_ours, run_raw, scratch_workspace  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="An mlx-lm model folder.")
    p.add_argument("--workspace", type=Path, default=Path("."), help="A workspace with data/train.jsonl, valid.jsonl.")
    p.add_argument("--their-iters", "--iters", type=int, default=200, help="Raw mlx-lm iterations (its default is 1000).")
    p.add_argument("--their-eval-every", type=int, default=0, help="Raw mlx-lm validation cadence (default: 10 times a run).")
    p.add_argument("--ours", default="", help="Extra flags for `mlx-partner train`, e.g. \"--epochs 2\".")
    p.add_argument("--timeout", type=float, default=7200)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    model = a.model.expanduser().resolve()
    ws = scratch_workspace(a.workspace.expanduser().resolve())
    work = Path(tempfile.mkdtemp(prefix="mlx-partner-ttq-"))
    try:
        layers = json.loads((model / "config.json").read_text()).get("num_hidden_layers", 16)
        every = a.their_eval_every or max(1, a.their_iters // 10)
        theirs = run_raw("theirs", {
            "model": str(float32_copy(model, work)), "data": str(ws / "data"), "iters": a.their_iters,
            "steps_per_eval": every, "val_batches": -1, "mask_prompt": True, "save_every": a.their_iters + 1,
            "num_layers": min(16, layers),  # mlx-lm's default, on models with fewer layers: all of them
        }, fast_env() or plain_env(), work, a.timeout)
        target = theirs.best_val
        t_theirs = theirs.first_reaching(target)
        print(f"theirs: best val {target:.3f} first reached at {t_theirs:.1f}s (of {theirs.wall_s:.1f}s, "
              f"{a.their_iters} iterations at lr 1e-5)", file=sys.stderr)
        env = {k: v for k, v in plain_env().items() if k != "MLX_PARTNER_FAST_BLAS"}
        ours = run_ours("ours", ws, ["--base-model", str(model), *shlex.split(a.ours)], env, a.timeout)
    finally:
        shutil.rmtree(ws, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    t_ours = ours.first_reaching(target)
    print(f"model {model.name}: raw mlx-lm defaults reach val loss {target:.3f} in {t_theirs:.1f}s")
    if t_ours is None:
        print(f"mlx-partner train never reached it (best {ours.best_val:.3f} in {ours.wall_s:.1f}s): ratio n/a")
        ratio = None
    else:
        ratio = t_ours / t_theirs
        ok = "ok" if ratio <= 0.5 else "ABOVE TARGET"
        print(f"mlx-partner train reaches it in {t_ours:.1f}s (its best: {ours.best_val:.3f} in {ours.wall_s:.1f}s)")
        print(f"time to quality, ours / theirs: {ratio:.2f}x (target <= 0.5: {ok})")
    if a.json:
        print(json.dumps({"target_val_loss": target, "theirs_s": t_theirs, "ours_s": t_ours, "ratio": ratio,
                          "theirs_valid": theirs.valid, "ours_valid": ours.valid}))


if __name__ == "__main__":
    main()
