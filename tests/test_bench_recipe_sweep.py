"""bench/recipe_sweep.py's pure parts: the grid, the figures a row keeps of eval's metrics.json,
and the printed table."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from recipe_sweep import EVAL_FIGURES, eval_figures, grid_configs, table_header, table_row  # noqa: E402


def test_grid_puts_settings_without_a_flag_in_partner_toml():
    configs = grid_configs("lr=1e-4,2e-4 minsteps=0,0.5")
    assert [c[0] for c in configs] == ["lr=1e-4 minsteps=0", "lr=1e-4 minsteps=0.5",
                                       "lr=2e-4 minsteps=0", "lr=2e-4 minsteps=0.5"]
    assert configs[1][1:] == (["--learning-rate", "1e-4"], {"min_steps_fraction": "0.5"})


SUMMARY = {
    "tuned": {"f1": 0.31, "style": 0.72, "test": {"loss": 2.9, "examples": 6}, "near_declines": 0.5,
              "grounded": 1.0, "abstained_answerable": 0.1, "rouge_l": 0.2},
    "base": {"f1": 0.2, "style": 0.6, "test": {"loss": 3.5}, "near_declines": None, "grounded": 0.0,
             "abstained_answerable": 0.0},
}


def test_eval_figures_from_metrics_json():
    got = eval_figures({"summary": SUMMARY})
    assert got["tuned"] == {"f1": 0.31, "style": 0.72, "test_loss": 2.9, "near_declines": 0.5, "grounded": 1.0,
                            "abstained_answerable": 0.1}
    assert got["base"]["near_declines"] is None and got["base"]["test_loss"] == 3.5
    assert eval_figures({})["tuned"] == dict.fromkeys(EVAL_FIGURES)  # an eval with nothing scored


ROW = {"label": "lr=2e-4", "base_val": 3.9, "best_val": 3.3, "best_iteration": 23, "best_at_s": 400.0,
       "wall_s": 500.0, "load_average": 1.0}


def test_table_shows_eval_figures_when_there_are_some():
    plain = table_row(ROW)
    assert "3.300" in plain and "0.310" not in plain
    scored = table_row({**ROW, "eval": eval_figures({"summary": SUMMARY})})
    assert scored.split()[-7:] == ["0.310", "0.720", "2.900", "0.500", "1.000", "0.100", "1.0"]
    assert table_header(True).split()[-7:] == ["F1", "style", "test", "near", "far", "false", "load"]
    assert "-" in table_row({**ROW, "best_val": None}).split()
