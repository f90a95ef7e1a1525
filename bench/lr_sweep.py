"""A small learning-rate sweep: the same short LoRA run at a few learning rates, then the answer-only
validation loss of each, in one process (the base model's validation loss is measured once).

Uses the pieces of `mlx-partner train` (data loading with prompt masking, LoRA on the top layers,
warmup + cosine schedule, mlx-lm's trainer) without the run folder, so a sweep costs only the
training steps. This is how the default learning rate was chosen; see the record in train/schedule.py.

    python bench/lr_sweep.py --model /path/to/smollm2 --workspace . --lrs 1e-5,1e-4,3e-4 --iters 10
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--workspace", type=Path, default=Path("."))
    p.add_argument("--lrs", default="1e-5,1e-4,3e-4")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--num-layers", type=int, default=16)
    a = p.parse_args()

    import mlx.core as mx
    import numpy as np
    from mlx_lm.tuner.trainer import TrainingArgs, evaluate, train

    from mlx_partner.config import TrainSettings
    from mlx_partner.models import load_model
    from mlx_partner.train.data import load_data
    from mlx_partner.train.loop import add_adapters, make_optimizer, quiet_trainer
    from mlx_partner.train.schedule import plan_schedule
    from mlx_partner.workspace import Workspace

    ws = Workspace.at(a.workspace)
    base = dataclasses.replace(TrainSettings(), base_model=a.model, iters=a.iters, batch_size=a.batch_size,
                               num_layers=a.num_layers)
    loaded = load_model(a.model)
    data = load_data(ws, loaded.tokenizer, base)

    def val(model) -> float:
        return evaluate(model, data.valid, batch_size=a.batch_size, num_batches=-1, max_seq_length=base.max_seq_length)

    t = time.time()
    base_val = val(loaded.model)
    print(f"base model: val {base_val:.3f} ({time.time() - t:.0f}s; {len(data.train)} train, {len(data.valid)} valid)", flush=True)
    for lr in [float(x) for x in a.lrs.split(",")]:
        s = dataclasses.replace(base, learning_rate=lr)
        model = load_model(a.model).model
        add_adapters(model, dataclasses.replace(s, num_layers=min(s.num_layers, len(model.layers))))
        sched = plan_schedule(len(data.train), s)
        mx.random.seed(0)
        np.random.seed(0)
        losses: list[float] = []

        class Cb:
            def __init__(self, out: list[float]) -> None:
                self.out = out

            def on_train_loss_report(self, info):
                self.out.append(info["train_loss"])

            def on_val_loss_report(self, info):
                pass

        t = time.time()
        args = TrainingArgs(batch_size=s.batch_size, iters=sched.iters, steps_per_report=1,
                            steps_per_eval=10**9, steps_per_save=10**9, adapter_file=str(Path("/tmp") / f"lr-sweep-{lr}.safetensors"))
        with quiet_trainer([]):
            train(model=model, optimizer=make_optimizer(s, sched), train_dataset=data.train, val_dataset=None,
                  args=args, training_callback=Cb(losses))
        v = val(model)
        curve = " ".join(f"{x:.2f}" for x in losses)
        print(f"lr {lr:.0e}: val {base_val:.3f} -> {v:.3f} after {sched.iters} iterations ({time.time() - t:.0f}s); train {curve}", flush=True)


if __name__ == "__main__":
    main()
