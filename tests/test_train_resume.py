"""`train --resume` really resumes: the checkpoint's weights, Adam state, random key and batch order.

On the tiny random model, in process: one run trains 12 iterations without a stop; another is
stopped (as Ctrl-C stops it) after iteration 9, with checkpoints every 4, and resumed from its
checkpoint at 8, inside the second epoch. Recorded at the moment mlx-lm's trainer starts the resumed run: the trainable
weights and Adam's state (moments, step) equal the checkpoint files; the validation loss of the
starting point equals the checkpoint's, measured afresh; the batches of iterations 9-12 are the uninterrupted
run's batches. At the end the two runs' adapters, best and last, are equal within float tolerance,
and the resumed run reaches iteration 12. LoRA dropout is on, so the random key must come back too.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from test_train import settings, write_data

from mlx_partner.errors import TrainingError
from mlx_partner.runs import read_manifest
from mlx_partner.train.run import run_train

ITERS, EVERY, STOP = 12, 4, 9  # 6 batches an epoch: the resumed run starts inside the second
CHECKPOINT = 8


class Recorder:
    """Wraps mlx-lm's trainer.train: what each call starts from, and every training batch it takes."""

    def __init__(self, monkeypatch, stop_after: int | None = None) -> None:
        from mlx_lm.tuner import trainer

        self.starts: list[dict] = []  # per call: trainable weights and optimizer state at entry
        self.batches: list[list[str]] = []  # per call: a digest of each training batch, in order
        self.val: list[list[dict]] = []  # per call: the validation reports (iterations relative to the call)
        real, recorder = trainer.train, self

        def train(*args, training_callback=None, iterate_batches=trainer.iterate_batches, **kw):
            import mlx.core as mx
            from mlx.utils import tree_flatten

            model, opt = kw["model"], kw["optimizer"]
            recorder.starts.append({
                "weights": {k: mx.array(v) for k, v in tree_flatten(model.trainable_parameters())},
                "optimizer": {k: mx.array(v) for k, v in tree_flatten(opt.state)},
                "random_key": [int(x) for x in mx.random.state[0].tolist()],
            })
            seen: list[str] = []
            val: list[dict] = []
            recorder.batches.append(seen)
            recorder.val.append(val)

            def batches(*a, **k):
                for batch, lengths in iterate_batches(*a, **k):
                    if k.get("loop"):
                        seen.append(hashlib.sha256(np.array(batch).tobytes()).hexdigest()[:16])
                    yield batch, lengths

            class Wrapped:
                def on_train_loss_report(self, info):
                    training_callback.on_train_loss_report(info)
                    if stop_after is not None and info["iteration"] >= stop_after:
                        raise KeyboardInterrupt  # what Ctrl-C (or SIGTERM) raises in the loop

                def on_val_loss_report(self, info):
                    val.append(dict(info))
                    training_callback.on_val_loss_report(info)

            return real(*args, training_callback=Wrapped(), iterate_batches=batches, **kw)

        monkeypatch.setattr(trainer, "train", train)


def _close(a, b, what: str, atol: float = 1e-6) -> None:
    import mlx.core as mx

    assert set(a) == set(b), f"{what}: names differ: {sorted(set(a) ^ set(b))[:4]}"
    worst = {k: mx.abs(a[k].astype(mx.float32) - b[k].astype(mx.float32)).max().item() for k in a}
    bad = {k: v for k, v in worst.items() if not v <= atol}
    assert not bad, f"{what}: differ by more than {atol}: {dict(list(bad.items())[:4])}"


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """The uninterrupted run and the stopped-then-resumed one, with what the trainer saw."""
    mp = pytest.MonkeyPatch()
    s = settings(tiny_model, iters=ITERS, steps_per_eval=EVERY, patience=0, lora_dropout=0.1, batch_size=4)
    try:
        ws_a = write_data(tmp_path_factory.mktemp("whole"))
        whole = Recorder(mp)
        a = run_train(ws_a, s, run_name="a", progress=False)
        mp.undo()

        ws_b = write_data(tmp_path_factory.mktemp("stopped"))
        stopped = Recorder(mp, stop_after=STOP)
        b0 = run_train(ws_b, s, run_name="b", progress=False)
        mp.undo()
        before = read_manifest(b0.run_dir)  # the manifest --resume reads
        resumed = Recorder(mp)
        b = run_train(ws_b, s, resume=True, run_name="b", progress=False)
    finally:
        mp.undo()
    return {"a": a, "b0": b0, "b": b, "before": before, "whole": whole, "stopped": stopped, "resumed": resumed,
            "settings": s, "ws_b": ws_b}


def test_the_stopped_run_stopped_after_its_checkpoint(runs):
    assert runs["a"].status == "finished" and runs["b0"].status == "stopped"
    assert runs["before"]["checkpoint"]["iteration"] == CHECKPOINT
    assert runs["before"]["iterations_done"] == STOP


def test_the_resumed_run_starts_from_the_checkpoints_weights_and_adam_state(runs):
    import mlx.core as mx

    run_dir, ck = runs["b"].run_dir, runs["before"]["checkpoint"]
    start = runs["resumed"].starts[0]
    _close(start["weights"], mx.load(str(run_dir / ck["file"])), "weights at the resumed start vs the checkpoint", 0.0)
    saved = mx.load(str(run_dir / ck["optimizer"]))
    _close(start["optimizer"], saved, "Adam state at the resumed start vs the checkpoint", 0.0)
    assert int(start["optimizer"]["step"].item()) == CHECKPOINT, "Adam's step (and so the learning-rate schedule) goes on"
    assert start["random_key"] == ck["random_key"], "the random key (dropout) comes back"


def test_the_resumed_run_validates_its_start_at_the_checkpoints_loss(runs, tiny_model):
    """The resumed run's first validation (of its starting point) is the checkpoint's loss, measured
    here afresh: the tiny model, the checkpoint's adapters, mlx-lm's evaluate over the same batches."""
    from mlx_lm.tuner import trainer

    from mlx_partner.models import load_model
    from mlx_partner.train.data import load_data
    from mlx_partner.train.loop import add_adapters
    from mlx_partner.train.resume import batch_order, load_adapter_weights
    from mlx_partner.train.schedule import fit_layers

    assert runs["resumed"].val[0][0]["iteration"] == 0  # relative to the resumed call: its start
    loaded = load_model(str(tiny_model))
    s = fit_layers(runs["settings"], len(loaded.model.layers))
    add_adapters(loaded.model, s)
    load_adapter_weights(loaded.model, runs["b"].run_dir / runs["before"]["checkpoint"]["file"])
    data = load_data(runs["ws_b"], loaded.tokenizer, s)
    fresh = trainer.evaluate(loaded.model, data.valid, s.batch_size, s.val_batches, s.max_seq_length,
                             iterate_batches=batch_order(s, 0))
    check = read_manifest(runs["b"].run_dir)["resumes"]
    assert [r["iteration"] for r in check] == [CHECKPOINT]
    assert check[0]["val_loss"] == pytest.approx(fresh, rel=1e-6)
    assert check[0]["val_loss"] == runs["resumed"].val[0][0]["val_loss"]


def test_the_resumed_run_takes_the_uninterrupted_runs_batches(runs):
    whole = runs["whole"].batches[0]
    assert len(whole) == ITERS
    assert runs["stopped"].batches[0][:STOP] == whole[:STOP]
    assert runs["resumed"].batches[0] == whole[CHECKPOINT:], "iterations 9-12 see the batches they would have"


def test_resumed_adapters_equal_the_uninterrupted_runs(runs):
    import mlx.core as mx

    a, b = runs["a"].run_dir, runs["b"].run_dir
    for name in ("checkpoints/last.safetensors", "adapters.safetensors"):
        _close(mx.load(str(a / name)), mx.load(str(b / name)), name, atol=1e-5)
    ma, mb = read_manifest(a), read_manifest(b)
    assert mb["status"] == "finished" and mb["iterations_done"] == ITERS == runs["b"].iterations
    assert [r["iteration"] for r in mb["metrics"]["train"]] == list(range(1, ITERS + 1))
    assert mb["best"]["iteration"] == ma["best"]["iteration"]
    assert [v["iteration"] for v in mb["metrics"]["valid"]] == [v["iteration"] for v in ma["metrics"]["valid"]]
    for va, vb in zip(ma["metrics"]["valid"], mb["metrics"]["valid"], strict=True):
        assert vb["val_loss"] == pytest.approx(va["val_loss"], rel=1e-5), (va, vb)


def test_resume_refuses_a_checkpoint_that_does_not_fit(tiny_model, tmp_path, monkeypatch):
    """A checkpoint of another shape used to load with strict=False, silently keeping the random start."""
    import mlx.core as mx

    ws = write_data(tmp_path)
    s = settings(tiny_model, iters=8, steps_per_eval=4, patience=0)
    with monkeypatch.context() as mp:
        Recorder(mp, stop_after=5)
        stopped = run_train(ws, s, run_name="c", progress=False)
    ck = read_manifest(stopped.run_dir)["checkpoint"]
    weights = mx.load(str(stopped.run_dir / ck["file"]))
    mx.eval(weights)  # read now: the file is overwritten below
    name = sorted(weights)[0]
    mx.save_safetensors(str(stopped.run_dir / ck["file"]), {**weights, name: mx.zeros((3, 3))})
    with pytest.raises(TrainingError, match=r"does not fit this model's adapters \(other shape: "):
        run_train(ws, s, resume=True, run_name="c", progress=False)
    mx.save_safetensors(str(stopped.run_dir / ck["file"]), {k: v for k, v in weights.items() if k != name})
    with pytest.raises(TrainingError, match=r"does not fit this model's adapters \(missing "):
        run_train(ws, s, resume=True, run_name="c", progress=False)
    mx.save_safetensors(str(stopped.run_dir / ck["file"]), weights)
    optimizer = mx.load(str(stopped.run_dir / ck["optimizer"]))
    mx.eval(optimizer)
    mx.save_safetensors(str(stopped.run_dir / ck["optimizer"]), {k: v for k, v in optimizer.items() if k != "step"})
    with pytest.raises(TrainingError, match=r"optimizer state .* does not fit this run \(missing step\)"):
        run_train(ws, s, resume=True, run_name="c", progress=False)
    assert json.loads((stopped.run_dir / "manifest.json").read_text())["status"] == "stopped"
