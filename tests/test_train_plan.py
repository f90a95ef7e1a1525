"""Pure parts of `train`: epochs -> iterations, the best checkpoint, early stopping, the memory
plan and the loss picture. No model, no MLX."""

from __future__ import annotations

import struct
import zlib
from dataclasses import replace

import pytest

from mlx_partner.config import TrainSettings
from mlx_partner.errors import TrainingError
from mlx_partner.memory import (
    GB,
    Arch,
    Knobs,
    available_memory,
    estimate,
    make_plan,
    padded_length,
    suggest,
)
from mlx_partner.plots import loss_plot as write_loss_png
from mlx_partner.train.schedule import best_checkpoint, earliest_stop, plan_schedule, should_stop


@pytest.mark.parametrize(
    "n_train, overrides, iters, per_epoch",
    [
        (327, {}, 243, 81),  # the seed run: 327 pairs, batch 4, 3 epochs
        (327, {"epochs": 1.5}, 122, 81),
        (10, {"batch_size": 4}, 6, 2),  # leftovers dropped: 2 batches per epoch
        (100, {"iters": 7}, 7, 25),
        (100, {"iters": 7, "grad_accumulation": 4}, 8, 25),  # whole updates only
        (4, {"batch_size": 4, "epochs": 0.1}, 1, 1),
    ],
)
def test_epochs_become_iterations(n_train, overrides, iters, per_epoch):
    sched = plan_schedule(n_train, replace(TrainSettings(), **overrides))
    assert (sched.iters, sched.batches_per_epoch) == (iters, per_epoch)
    assert sched.updates * replace(TrainSettings(), **overrides).grad_accumulation == sched.iters
    assert sched.steps_per_eval % sched.steps_per_report == 0  # checkpoints land on reports
    assert 0 <= sched.warmup < max(sched.updates, 1) or sched.updates == 1


def test_validation_about_eight_times_unless_given():
    assert plan_schedule(327, TrainSettings()).steps_per_eval == 243 // 8
    assert plan_schedule(327, replace(TrainSettings(), steps_per_eval=50)).steps_per_eval == 50
    assert plan_schedule(327, replace(TrainSettings(), steps_per_eval=10_000)).steps_per_eval == 243


def test_dataset_smaller_than_batch_names_both_numbers():
    with pytest.raises(TrainingError, match=r"3 examples, fewer than the batch size 4.*--batch-size 3"):
        plan_schedule(3, TrainSettings())


def v(it, loss):
    return {"iteration": it, "val_loss": loss}


@pytest.mark.parametrize(
    "history, best",
    [
        ([], None),
        ([v(0, 2.0)], None),  # the base model's loss is not a checkpoint
        ([v(0, 2.0), v(9, 1.5), v(19, 1.2), v(29, 1.3)], 19),
        ([v(0, 1.0), v(9, 1.5), v(19, 1.5)], 9),  # first on ties; worse than base still counts
        ([v(0, 2.0), v(9, float("nan")), v(19, 1.9)], 19),
    ],
)
def test_best_checkpoint(history, best):
    got = best_checkpoint(history)
    assert (got["iteration"] if got else None) == best


@pytest.mark.parametrize(
    "history, patience, stop",
    [
        ([v(0, 2), v(9, 1.5), v(19, 1.6), v(29, 1.7)], 2, True),
        ([v(0, 2), v(9, 1.5), v(19, 1.6), v(29, 1.4)], 2, False),
        ([v(0, 2), v(9, 1.5), v(19, 1.6)], 2, False),
        ([v(0, 2), v(9, 1.5), v(19, 1.6), v(29, 1.7)], 0, False),  # 0 = never
        ([v(0, 2), v(9, 1.5), v(19, 1.5)], 1, True),  # equal is no improvement
    ],
)
def test_early_stopping(history, patience, stop):
    assert should_stop(history, patience) is stop


PLATEAU = [v(0, 2), v(9, 1.5), v(19, 1.6), v(29, 1.7), v(39, 1.8), v(49, 1.9)]


@pytest.mark.parametrize(
    "history, patience, earliest, stop",
    [
        (PLATEAU[:4], 2, 0, True),  # no minimum: patience alone
        (PLATEAU[:4], 2, 30, False),  # patience run out at 29, but not before iteration 30
        (PLATEAU[:5], 2, 30, True),  # the first validation from 30 on stops it (patience counts all)
        (PLATEAU[:5], 2, 39, True),  # the minimum itself may stop
        (PLATEAU[:5], 2, 40, False),
        (PLATEAU, 0, 0, False),  # patience 0 = never, whatever the minimum
        ([v(0, 2), v(9, 1.5), v(19, 1.6), v(29, 1.7), v(39, 1.4)], 2, 30, False),  # improved again
        ([], 1, 0, False),
    ],
)
def test_early_stopping_waits_for_the_minimum(history, patience, earliest, stop):
    assert should_stop(history, patience, earliest) is stop


@pytest.mark.parametrize(
    "fraction, iters, earliest",
    [
        (0.5, 36, 18),  # the default: half the planned iterations
        (0.5, 7, 4),  # rounded up
        (0.0, 36, 0),  # off
        (1.0, 36, 36),  # only the last validation (or none) may stop it
        (2.0, 36, 36),  # clamped to the run
        (-1.0, 36, 0),
    ],
)
def test_earliest_stop_is_a_share_of_the_planned_iterations(fraction, iters, earliest):
    s = replace(TrainSettings(), iters=iters, min_steps_fraction=fraction)
    assert earliest_stop(s, plan_schedule(400, s)) == earliest


SMOLLM2 = {
    "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536, "vocab_size": 49152,
    "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True,
}
QWEN3B_4BIT = {
    "hidden_size": 2048, "num_hidden_layers": 36, "intermediate_size": 11008, "vocab_size": 151936,
    "num_attention_heads": 16, "num_key_value_heads": 2, "tie_word_embeddings": True,
    "quantization": {"group_size": 64, "bits": 4},
}
KNOBS = Knobs(batch_size=4, grad_accumulation=1, max_seq_length=2048, num_layers=16,
              fine_tune_type="lora", lora_rank=8, grad_checkpoint=False)


def test_arch_counts_parameters_from_config():
    assert 130e6 < Arch.from_config(SMOLLM2).params < 140e6  # SmolLM2-135M
    qwen = Arch.from_config(QWEN3B_4BIT)
    assert 2.9e9 < qwen.params < 3.2e9 and qwen.bits == 4


def test_estimate_moves_with_the_knobs():
    arch = Arch.from_config(SMOLLM2)
    base = estimate(arch, KNOBS, 512, on_cpu=True)
    assert base.weights == pytest.approx(arch.params * 4)
    assert estimate(arch, replace(KNOBS, batch_size=8), 512, True).activations > base.activations
    # A preference step puts chosen and rejected through the model: as much as twice the batch.
    assert estimate(arch, replace(KNOBS, rows_per_example=2), 512, True).activations == pytest.approx(
        estimate(arch, replace(KNOBS, batch_size=8), 512, True).activations)
    assert estimate(arch, replace(KNOBS, grad_checkpoint=True), 512, True).activations < base.activations
    assert estimate(arch, KNOBS, 1024, True).activations > base.activations
    assert estimate(arch, replace(KNOBS, fine_tune_type="full"), 512, True).trainable > 10 * base.trainable
    assert estimate(arch, replace(KNOBS, fine_tune_type="dora"), 512, True).trainable_params > base.trainable_params
    # On Metal a 4-bit model stays 4-bit: about 8x smaller than float32.
    q = Arch.from_config(QWEN3B_4BIT)
    assert estimate(q, KNOBS, 512, on_cpu=False).weights < estimate(q, KNOBS, 512, on_cpu=True).weights / 6


def test_padded_length_follows_mlx_lm():
    assert padded_length(100, 2048) == 129
    assert padded_length(3000, 2048) == 2048


def test_suggestion_fits_the_budget_and_names_flags():
    arch = Arch.from_config(QWEN3B_4BIT)
    lengths = [300] * 95 + [1900] * 5
    full = estimate(arch, KNOBS, padded_length(1900, 2048), on_cpu=False)
    budget = full.total * 0.6
    s = suggest(arch, KNOBS, lengths, budget, on_cpu=False)
    assert s is not None and s.estimate.total <= budget
    assert "--grad-checkpoint" in s.flags
    assert suggest(arch, KNOBS, lengths, 0.1 * GB, on_cpu=False) is None  # nothing fits: no advice


def test_plan_for_a_small_mac_says_it_does_not_fit():
    plan = make_plan(QWEN3B_4BIT, replace(KNOBS, batch_size=16), [2000] * 10, on_cpu=True, memory_gb=8)
    assert not plan.fits
    text = "\n".join(plan.lines())
    assert "does NOT fit" in text and "8 GB you asked to plan for" in text
    assert "smaller base model" in text or "To fit" in text
    ok = make_plan(SMOLLM2, KNOBS, [300] * 10, on_cpu=True, memory_gb=16)
    assert ok.fits and "fits." in "\n".join(ok.lines())


def test_available_memory_reads_the_machine():
    got, where = available_memory()
    assert got > 0.1 * GB and where
    assert available_memory(8)[0] == pytest.approx(6 * GB)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize(
    "train, valid, base",
    [
        ([(1, 3.0), (2, 2.5), (3, 2.0)], [(0, 3.2), (3, 2.1)], 3.2),
        ([], [], None),
        ([(1, float("nan")), (2, 1.0)], [(0, 1.0)], 1.0),  # flat and NaN: no crash
    ],
)
def test_loss_png_is_a_valid_picture(tmp_path, train, valid, base):
    path = tmp_path / "loss.png"
    write_loss_png(path, train, valid, base)
    data = path.read_bytes()
    assert _png_size(data) in ((640, 400), (640, 400))
    # Every chunk's CRC checks out (what an image viewer verifies first).
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind_and_body = data[pos + 4:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind_and_body) & 0xFFFFFFFF == crc
        pos += 12 + length


@pytest.mark.parametrize("method, rows", [("sft", 1), ("orpo", 2), ("dpo", 2)])
def test_a_preference_method_plans_two_rows_an_example(method, rows):
    # On SmolLM2, ORPO's peak measured 4.61 GB against a plan of 2.76 GB made for one row an example.
    from mlx_partner.train.schedule import knobs

    assert knobs(TrainSettings(method=method)).rows_per_example == rows
