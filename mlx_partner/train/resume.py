"""Picking a run up where a checkpoint left it: the same weights, Adam state, random key and batches.

A checkpoint is the adapters (`NNNNNNN_adapters.safetensors`), Adam's state (`..._optimizer`)
and, in the manifest, the random key. `restore_checkpoint` loads all three, refusing files that
do not fit the model by name or shape; `batch_order` makes the batch order a function of the seed
and the iteration, so a resumed run trains on the batches an uninterrupted one would have
(tests/test_train_resume.py holds the two runs' adapters against each other).

Imports mlx at the top, like `loop`: `train.run` imports it only once training starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map_with_path
from mlx_lm.tuner import trainer

from ..config import TrainSettings
from ..errors import TrainingError
from ..runs import CHECKPOINTS, LAST_CHECKPOINT


def mismatch(expected: dict[str, Any], got: dict[str, Any]) -> str:
    """What differs between two flat {name: array} maps by name and shape ('' when they fit)."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape))
    parts = [f"{what} {', '.join(keys[:3])}" + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
             for what, keys in (("missing", missing), ("unexpected", extra), ("other shape:", shapes)) if keys]
    return "; ".join(parts)


def load_adapter_weights(model: Any, path: Path) -> None:
    """Load saved adapters into `model`: exactly its trainable weights, every name and shape.

    mlx's `load_weights(strict=True)` would want the frozen base weights too, and `strict=False`
    checks nothing: a file of another run's shape, or of no adapters at all, loaded silently and
    training went on from the random start. So the names and shapes are checked here."""
    try:
        arrays = mx.load(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"Could not read {path} ({exc}).") from None
    problem = mismatch(dict(tree_flatten(model.trainable_parameters())), arrays)
    if problem:
        raise TrainingError(f"{path.name} does not fit this model's adapters ({problem}).")
    model.load_weights(list(arrays.items()), strict=False)  # strict=False: the base weights stay


def random_key() -> list[int]:
    """MLX's global random key (dropout draws from it), as two ints a manifest can hold."""
    return [int(x) for x in mx.random.state[0].tolist()]


def restore_checkpoint(model: Any, opt: Any, run_dir: Path, checkpoint: dict[str, Any]) -> bool:
    """Load a checkpoint's weights, random key and optimizer state (then True: Adam goes on)."""
    load_adapter_weights(model, run_dir / checkpoint.get("file", f"{CHECKPOINTS}/{LAST_CHECKPOINT}"))
    key = checkpoint.get("random_key")
    if isinstance(key, list) and len(key) == 2:
        mx.random.seed((int(key[0]) << 32) | int(key[1]))  # the key [hi, lo] is seed hi * 2**32 + lo
    name = checkpoint.get("optimizer")
    if not isinstance(name, str) or not (run_dir / name).exists():
        return False
    saved = mx.load(str(run_dir / name))
    opt.init(model.trainable_parameters())
    problem = mismatch(dict(tree_flatten(opt.state)), saved)
    if problem:
        raise TrainingError(f"The optimizer state {name} does not fit this run ({problem}); "
                            "start a new run, or delete the run folder's checkpoint.")
    opt.state = tree_map_with_path(lambda p, x: saved[p], opt.state)
    return True


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**32


def batch_order(s: TrainSettings, offset: int) -> Callable[..., Iterator[Any]]:
    """mlx-lm's `iterate_batches` in an order fixed by the seed alone, resumable at any iteration.

    mlx-lm shuffles with numpy's global state, which its validation draws from as well: the order
    depended on when validation ran, so a resumed run (it validates its starting point) saw other
    batches than an uninterrupted one. Here each epoch's order comes from (seed, epoch), training
    skips the `offset` batches a resumed run has done already, and validation takes the same
    batches every time (comparable losses)."""

    def iterate(dataset: Any, batch_size: int, max_seq_length: int, loop: bool = False,
                seed: int | None = None, comm_group: Any = None) -> Iterator[Any]:
        def epoch(n: int) -> Iterator[Any]:
            return trainer.iterate_batches(dataset=dataset, batch_size=batch_size, max_seq_length=max_seq_length,
                                           seed=n, comm_group=comm_group)

        if not loop:  # validation: every example, not only the whole batches
            yield from whole_set_batches(trainer.iterate_batches)(
                dataset=dataset, batch_size=batch_size, max_seq_length=max_seq_length, seed=s.seed,
                comm_group=comm_group)
            return
        n, skip = divmod(offset, max(len(dataset) // batch_size, 1))
        while True:
            yield from itertools.islice(epoch(epoch_seed(s.seed, n)), skip, None)
            n, skip = n + 1, 0

    return iterate


def whole_set_batches(iterate_batches: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """`iterate_batches` for validation that covers every example, the remainder too.

    mlx-lm makes whole batches only (range(0, n - batch_size + 1, batch_size)), so validation with
    7 examples and batch 4 measured 4 of them, whichever come first in its order; the loss then
    jumped with the order and the batch size. Here the leftover examples follow as one smaller
    batch (with more than one process: when they split evenly between them). The loss is summed
    per token, so the smaller batch weighs what its tokens weigh."""

    def iterate(dataset: Any, batch_size: int, max_seq_length: int, loop: bool = False,
                seed: int | None = None, comm_group: Any = None) -> Iterator[Any]:
        yield from iterate_batches(dataset=dataset, batch_size=batch_size, max_seq_length=max_seq_length,
                                   loop=loop, seed=seed, comm_group=comm_group)
        size = comm_group.size() if comm_group is not None else 1
        left = len(dataset) % batch_size
        if loop or not left or left % size:
            return
        order = sorted(range(len(dataset)), key=lambda i: _length(dataset, i))  # mlx-lm's batching order
        rest = [dataset[i] for i in order[len(dataset) - left:]]
        yield from iterate_batches(dataset=rest, batch_size=left, max_seq_length=max_seq_length,
                                   comm_group=comm_group)

    return iterate


def _length(dataset: Any, i: int) -> int:
    """The length mlx-lm sorts by: CacheDataset.itemlen, else the token count of a processed item."""
    return dataset.itemlen(i) if hasattr(dataset, "itemlen") else len(dataset[i][0])
