"""Preference tuning, `train --method orpo|dpo`, on the tiny random model: over a few steps the
preference loss falls and the chosen-minus-rejected reward margin rises; the base model's answers
(the rejected side) are generated once and cached; the partner's corrected answer is the rejected
side where the author corrected it; the manifest names the method and loss.png is drawn; fewer
pairs than a batch is an error with both numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli

QUESTIONS = [
    ("Why count benches?", "Benches say you may stay, so I count them."),
    ("What makes bread good?", "Time. Slow dough tastes of the wheat."),
    ("Should I fix my kettle?", "Yes: open it, look, and try once."),
    ("Why keep a notebook?", "A notebook remembers what I would not."),
    ("Are wide streets good?", "Not for people: they are for cars."),
    ("Is a repair café worth it?", "Yes, repair is a social act."),
    ("What flour do you use?", "Rye and a little wheat, stone ground."),
    ("Do you write by hand?", "Every morning, one page, in pencil."),
    ("What is a good city?", "One where the old can sit down."),
    ("Why mend clothes?", "A mended shirt carries its story."),
    ("How long do you proof?", "Overnight, in a cool kitchen."),
    ("What do you read?", "Essays, slowly, with a pencil."),
]
TOML = ('[dataset]\nsystem_prompt = "You are Oona\'s partner."\nvalid_fraction = 0.25\ntest_fraction = 0.0\n\n'
        "[train]\nbatch_size = 2\nmax_seq_length = 128\nlearning_rate = 0.001\nwarmup_fraction = 0.0\npatience = 0\n")


def invoke(ws: Path, *args: str):
    return CliRunner().invoke(cli, ["-w", str(ws), *args], catch_exceptions=False)


def manifest(ws: Path, run: str) -> dict:
    return json.loads((ws / "adapters" / run / "manifest.json").read_text())


@pytest.fixture(scope="module")
def workspace(tiny_model, tmp_path_factory):
    ws = tmp_path_factory.mktemp("preference") / "ws"
    ws.mkdir()
    (ws / "profile.md").write_text("# Oona\n\nI write short essays about benches, bread and repair.\n", encoding="utf-8")
    (ws / "partner.toml").write_text(TOML, encoding="utf-8")
    pairs = ws / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS), encoding="utf-8")
    result = invoke(ws, "dataset", "--pairs", str(pairs), "--base-model", str(tiny_model))
    assert result.exit_code == 0, result.output
    return ws


def _falls_and_rises(m: dict) -> None:
    valid = m["metrics"]["valid"]
    assert len(valid) >= 2 and all("reward_margin" in v for v in valid)
    assert valid[-1]["val_loss"] < valid[0]["val_loss"]
    assert valid[-1]["reward_margin"] > valid[0]["reward_margin"]
    train = m["metrics"]["train"]
    assert all("reward_margin" in r and math.isfinite(r["reward_margin"]) for r in train)
    assert train[-1]["train_loss"] < train[0]["train_loss"]


@pytest.mark.parametrize("method", ["orpo", "dpo"])
def test_preference_loss_falls_and_margin_rises(workspace, tiny_model, method):
    run = f"pref-{method}"
    result = invoke(workspace, "train", "--base-model", str(tiny_model), "--method", method, "--iters", "12",
                    "--steps-per-eval", "6", "--run", run, "--quiet")
    assert result.exit_code == 0, result.output
    m = manifest(workspace, run)
    assert m["settings"]["method"] == method and m["preference"]["method"] == method
    assert m["preference"]["pairs"]["train"] == m["dataset"]["counts"]["preference_train"] > 0
    assert m["preference"]["rejected_from"]["base"] == m["preference"]["pairs"]["train"]
    _falls_and_rises(m)
    assert (workspace / "adapters" / run / "loss.png").stat().st_size > 1000
    # The base model answered every question once: the cache holds them, the second method reused them.
    cached = (workspace / "data" / "base_answers.jsonl").read_text().splitlines()
    assert len(cached) == len({json.loads(line)["key"] for line in cached}) == len(QUESTIONS)  # train + valid


def test_the_rejected_answer_is_the_one_a_correction_replaced(workspace, tiny_model, tmp_path):
    import shutil

    from mlx_partner.corrections import add_correction
    from mlx_partner.workspace import Workspace

    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws, symlinks=True)
    train = [json.loads(line) for line in (ws / "data" / "train.jsonl").read_text().splitlines()]
    q, a = train[0]["messages"][-2]["content"], train[0]["messages"][-1]["content"]
    add_correction(Workspace.at(ws), q, "Something the partner said wrongly.", correction=a)
    result = invoke(ws, "train", "--base-model", str(tiny_model), "--method", "orpo", "--iters", "2", "--run", "r", "--quiet")
    assert result.exit_code == 0, result.output
    assert manifest(ws, "r")["preference"]["rejected_from"] == {"base": len(train) - 1, "correction": 1}


def test_fewer_pairs_than_a_batch_is_an_error_with_both_numbers(workspace, tiny_model, tmp_path):
    import shutil

    from mlx_partner.corrections import add_correction
    from mlx_partner.workspace import Workspace

    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws, symlinks=True)
    train = [json.loads(line) for line in (ws / "data" / "train.jsonl").read_text().splitlines()]
    for record in train[1:]:  # the partner already said what the author would: no preference to learn
        q, a = record["messages"][-2]["content"], record["messages"][-1]["content"]
        add_correction(Workspace.at(ws), q, a, correction=a + " Exactly.")
    result = CliRunner().invoke(cli, ["-w", str(ws), "train", "--base-model", str(tiny_model), "--method", "orpo",
                                      "--batch-size", "2", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"1 train preference pairs (of {len(train)} train examples" in result.output
    assert "fewer than the batch size 2" in result.output


# --- pure parts ---------------------------------------------------------------------------------


def test_orpo_and_dpo_prefer_the_chosen_answer():
    import mlx.core as mx

    from mlx_partner.train.preference import dpo_terms, orpo_terms

    n = mx.array([10.0, 10.0])
    better, worse = mx.array([-5.0, -20.0]), mx.array([-20.0, -5.0])  # (chosen, rejected) summed log probs
    (lb, mb), (lw, mw) = orpo_terms(better, n, 0.1), orpo_terms(worse, n, 0.1)
    assert mb.item() == pytest.approx(0.1 * (-0.5 + 2.0)) and mw.item() < 0 < mb.item()
    assert lb.item() < lw.item()
    ref = mx.array([-10.0, -10.0])
    (lb, mb), (lw, mw) = dpo_terms(better, ref, 0.1), dpo_terms(worse, ref, 0.1)
    assert mb.item() == pytest.approx(1.5) and mw.item() == pytest.approx(-1.5) and lb.item() < lw.item()


def test_make_pairs_takes_corrections_and_drops_agreeing_answers():
    from mlx_partner.train.preference import make_pairs

    def record(q, a):
        return {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": q},
                             {"role": "assistant", "content": a}]}

    records = [record("Why benches?", "So people stay."), record("Bread?", "Slow."), record("Same?", "Same.")]
    pairs = make_pairs(records, {"why benches?": "Because parks."}, lambda prompt: "same." if prompt[-1]["content"] == "Same?" else "Base says.")
    assert [(p.chosen, p.rejected, p.rejected_from) for p in pairs] == [
        ("So people stay.", "Because parks.", "correction"), ("Slow.", "Base says.", "base")]


def test_the_live_line_shows_preference_loss_and_margin():
    from mlx_partner.train.loop import progress_line
    from mlx_partner.train.schedule import Schedule

    sched = Schedule(iters=10, batches_per_epoch=5, updates=10, warmup=0, steps_per_eval=5, steps_per_report=1)
    m = {"metrics": {"train": [{"iteration": 2, "train_loss": 3.5, "tokens_per_second": 10.0, "peak_memory_gb": 0.1,
                                "reward_margin": 0.25}], "valid": []}}
    line = progress_line(2, sched, m, 0.0)
    assert "pref loss 3.500" in line and "margin +0.250" in line
    m["metrics"]["train"][0].pop("reward_margin")
    assert "train 3.500" in progress_line(2, sched, m, 0.0)
