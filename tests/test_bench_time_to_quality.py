"""bench/time_to_quality.py and bench/raw_mlx_lm.py: the plateau rule that ends raw mlx-lm's run,
the medians, time ratio and best-loss difference the arbiter reports (pure), the loss-curve picture,
and one raw run on the tiny model that a plateau stops."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from raw_mlx_lm import Run, plain_env, plateaued, run_raw  # noqa: E402
from time_to_quality import one_round, plot_curves, summary_lines, verdict  # noqa: E402

NAN = float("nan")


@pytest.mark.parametrize(
    "losses, patience, stop",
    [
        ([], 3, False),
        ([2.0, 1.9, 1.8], 3, False),  # still improving
        ([2.0, 2.1, 2.2], 2, True),  # two without beating the first
        ([2.0, 2.1], 2, False),
        ([2.0, 2.0, 2.0], 2, True),  # equal is no improvement
        ([2.0, 2.1, 1.9, 2.0], 2, False),  # improved again: counting starts over
        ([2.0, NAN, NAN], 2, True),  # NaN never improves
        ([NAN, NAN, NAN], 1, False),  # nothing to beat: a diverged run fails on its own
        ([2.0, 2.1, 2.2, 2.3], 0, False),  # 0 = never
    ],
)
def test_plateau_rule(losses, patience, stop):
    assert plateaued(losses, patience) is stop


def run(valid: list[tuple[int, float, float]], wall: float = 100.0) -> Run:
    return Run("x", wall, valid=[{"iteration": i, "val_loss": loss, "elapsed_s": s} for i, loss, s in valid])


THEIRS = run([(0, 3.0, 5.0), (19, 2.8, 50.0), (39, 2.6, 90.0), (59, 2.7, 120.0)])


@pytest.mark.parametrize(
    "ours, reaches, best",
    [
        (run([(0, 3.0, 4.0), (4, 2.7, 20.0), (9, 2.5, 40.0)]), 40.0, 2.5),  # first at or below 2.6
        (run([(0, 3.0, 4.0), (4, 2.6, 20.0)]), 20.0, 2.6),  # equal counts as reaching it
        (run([(0, 2.0, 4.0), (4, 2.9, 20.0)]), None, 2.9),  # the base model's loss is not a result
    ],
)
def test_one_round_times_both_sides_to_raws_best(ours, reaches, best):
    r = one_round(THEIRS, ours)
    assert r["target_val_loss"] == 2.6 and r["theirs"]["reaches_target_s"] == 90.0
    assert r["ours"]["reaches_target_s"] == reaches and r["ours"]["best_val"] == best


def rnd(theirs_s, theirs_best, ours_s, ours_best):
    return {"theirs": {"reaches_target_s": theirs_s, "best_val": theirs_best},
            "ours": {"reaches_target_s": ours_s, "best_val": ours_best}}


@pytest.mark.parametrize(
    "rounds, ratio, difference, time_ok, loss_ok",
    [
        ([rnd(100.0, 3.3, 40.0, 3.2)], 0.4, -0.1, True, True),
        ([rnd(100.0, 3.3, 50.0, 3.3)], 0.5, 0.0, True, True),  # both targets are inclusive
        ([rnd(100.0, 3.3, 60.0, 3.4)], 0.6, 0.1, False, False),
        # medians: 90/100/110 s theirs, 30/45/200 s ours
        ([rnd(90.0, 3.3, 30.0, 3.2), rnd(100.0, 3.3, 45.0, 3.2), rnd(110.0, 3.3, 200.0, 3.5)], 0.45, -0.1, True, True),
        # never reached in 2 of 3 rounds: the median is "never", no ratio
        ([rnd(100.0, 3.3, None, 3.4), rnd(100.0, 3.3, None, 3.4), rnd(100.0, 3.3, 20.0, 3.2)], None, 0.1, False, False),
        # never reached in 1 of 3: it counts as the latest, the median is the other late one
        ([rnd(100.0, 3.3, None, 3.4), rnd(100.0, 3.3, 80.0, 3.2), rnd(100.0, 3.3, 20.0, 3.2)], 0.8, -0.1, False, True),
    ],
)
def test_verdict_medians_ratio_and_difference(rounds, ratio, difference, time_ok, loss_ok):
    v = verdict(rounds)
    assert (v["ratio"] is None) == (ratio is None)
    if ratio is not None:
        assert v["ratio"] == pytest.approx(ratio)
    assert v["difference"] == pytest.approx(difference)
    assert (v["time_ok"], v["loss_ok"]) == (time_ok, loss_ok)


def test_summary_says_both_targets():
    lines = summary_lines(verdict([rnd(100.0, 3.3, 60.0, 3.2)]), 1, "--iters 8")
    assert "0.60x (target <= 0.5: ABOVE TARGET)" in lines[2]
    assert "-0.100 (target <= 0: ok)" in lines[3]
    never = summary_lines(verdict([rnd(100.0, 3.3, None, 3.4)]), 3, "")
    assert "never reaches raw's best" in never[1] and "n/a" in never[2] and "median of 3" in never[0]


def test_loss_curves_picture(tmp_path):
    ours = run([(0, 3.0, 4.0), (4, 2.5, 20.0), (9, NAN, 30.0)])
    rounds = [one_round(THEIRS, ours), one_round(THEIRS, ours)]
    path = tmp_path / "sub" / "ttq.png"
    plot_curves(path, rounds, 2.6)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_raw_mlx_lm_stops_at_a_plateau(tiny_model, tmp_path):
    """A learning rate of zero never improves: the callback's exception ends mlx-lm's loop cleanly."""
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 8), ("valid", 4)):
        pairs = [{"messages": [{"role": "user", "content": f"Why bread, {i}?"},
                               {"role": "assistant", "content": "Because it is slow work, and honest."}]}
                 for i in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = {"model": str(tiny_model), "data": str(data), "iters": 30, "steps_per_eval": 2,
              "val_batches": -1, "mask_prompt": True, "save_every": 31, "num_layers": 2, "learning_rate": 0.0,
              "batch_size": 4, "plateau_patience": 2}
    r = run_raw("plateau", config, plain_env(), tmp_path, 300)
    assert r.stopped == "plateau at iteration 5" and r.iterations == 5
    assert [v["iteration"] for v in r.valid] == [0, 1, 3, 5]  # validated at steps 1, 2, 4, 6 (before each)
    assert all(math.isfinite(v["val_loss"]) for v in r.valid)


def test_recorded_raw_runs_stand_in_only_for_the_same_model_data_and_settings(tmp_path):
    from time_to_quality import data_digest, recorded_theirs

    (tmp_path / "train.jsonl").write_text('{"messages": []}\n')
    (tmp_path / "valid.jsonl").write_text('{"messages": [1]}\n')
    digest = data_digest(tmp_path)
    settings = {"their_iters": 200, "their_eval_every": 10, "their_patience": 3, "ours": "", "repeat": 3}
    record = {"model": "/m", "data_sha256": digest, "settings": {**settings, "repeat": 1}, "time": "T",
              "rounds": [one_round(THEIRS, THEIRS)]}
    [theirs] = recorded_theirs(json.loads(json.dumps(record)), "/m", digest, settings)
    assert theirs.best_val == THEIRS.best_val and theirs.first_reaching(2.6) == 90.0 and theirs.wall_s == THEIRS.wall_s
    (tmp_path / "valid.jsonl").write_text('{"messages": [2]}\n')
    with pytest.raises(SystemExit, match="data_sha256"):
        recorded_theirs(record, "/m", data_digest(tmp_path), settings)
    with pytest.raises(SystemExit, match="their_patience"):
        recorded_theirs(record, "/m", digest, {**settings, "their_patience": 0})
    with pytest.raises(SystemExit, match="model"):
        recorded_theirs(record, "/other", digest, settings)


def test_summary_says_when_raws_side_was_recorded():
    v = verdict([one_round(THEIRS, THEIRS)] * 3)
    assert "1 recorded raw run; ours median of 3" in summary_lines(v, 3, "", recorded=1)[0]
