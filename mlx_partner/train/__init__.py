"""The `train` stage: LoRA (or DoRA, or full) fine-tuning with mlx-lm's trainer, in process.

    schedule.py  pure: epochs -> iterations, learning-rate schedule, best checkpoint, early stop
    data.py      data/train.jsonl and valid.jsonl, checked against dataset.json and tokenized
    loop.py      the MLX side: adapters, optimizer, mlx-lm's trainer with our callback (Monitor)
    run.py       run_train: the lock, the plan, the run folder and its manifest, adapters/latest

The run folder itself (finding a run, its manifest, the latest pointer) belongs to `runs`, so
later stages read runs without importing this package. `loop` is not imported here: it loads mlx
and mlx-lm, which `run_train` does only once training really starts.
"""

from .data import Data, load_data
from .run import TrainResult, run_train
from .schedule import Schedule, best_checkpoint, plan_schedule, should_stop

__all__ = [
    "Data",
    "Schedule",
    "TrainResult",
    "best_checkpoint",
    "load_data",
    "plan_schedule",
    "run_train",
    "should_stop",
]
