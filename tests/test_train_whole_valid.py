"""Validation covers every example: mlx-lm's batches are whole batches only, so 7 valid examples at
batch 4 were measured as 4 (its loss then moved with the order and the batch size)."""

from __future__ import annotations

import pytest
from mlx_lm.tuner import trainer

from mlx_partner.config import TrainSettings
from mlx_partner.train.resume import batch_order, whole_set_batches


def examples(lengths: list[int]) -> list[tuple[list[int], int]]:
    """Processed chat items as mlx-lm has them: (tokens, prompt offset); token values name the item."""
    return [([i] * n, 1) for i, n in enumerate(lengths)]


def seen(batches) -> list[int]:
    return sorted(int(row[0]) for tokens, _ in batches for row in tokens.tolist())


@pytest.mark.parametrize("n,batch", [(7, 4), (8, 4), (5, 2), (4, 4), (9, 1)])
def test_every_example_once(n, batch):
    data = examples([3 + (i * 5) % 11 for i in range(n)])
    assert seen(whole_set_batches(trainer.iterate_batches)(data, batch, 2048)) == list(range(n))
    assert seen(batch_order(TrainSettings(seed=3), 0)(data, batch, 2048)) == list(range(n))


def test_mlx_lm_alone_drops_the_remainder():
    """The reason for it (fails if mlx-lm starts covering the remainder itself, making it redundant)."""
    assert len(seen(trainer.iterate_batches(examples([5] * 7), 4, 2048))) == 4


def test_the_remainder_weighs_what_its_tokens_weigh(tiny_model):
    """The whole-set loss at batch 4 equals the loss example by example (batch 1, no remainder)."""
    from mlx_lm.utils import load

    model, tokenizer = load(str(tiny_model))
    data = [(tokenizer.encode(f"question {i} " + "word " * (3 + 4 * i)), 3) for i in range(7)]
    whole = trainer.evaluate(model, data, 4, -1, iterate_batches=batch_order(TrainSettings(), 0))
    one_by_one = trainer.evaluate(model, data, 1, -1)
    first_four = trainer.evaluate(model, data, 4, -1)
    assert float(whole) == pytest.approx(float(one_by_one), rel=1e-5)
    assert float(first_four) != pytest.approx(float(one_by_one), rel=1e-5)
