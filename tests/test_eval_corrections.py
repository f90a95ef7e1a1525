"""eval's corrections measure (evaluate/corrections.py): which `/fix` answers are measured, the F1
and style arithmetic, and eval on the tiny model writing the section into metrics.json, report.md
and the printed table, side by side with `--compare`. Asserts on structure and arithmetic, never on
what a random model says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.corrections import add_correction, corrections_path, remove_correction
from mlx_partner.evaluate.corrections import (
    corrections_section,
    corrections_summary,
    fixes_to_measure,
    score_answer,
    score_corrections,
    style_between,
)
from mlx_partner.evaluate.metrics import fit_style, word_f1
from mlx_partner.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
EVAL_ARGS = ("--limit", "2", "--probes", "1", "--near-probes", "1", "--max-tokens", "6", "--quiet")

Q1 = "Why do you call armrests in the middle of benches a confession?"
Q2 = "What would you change first about the high street?"
FIX1 = "Because the armrest admits what the council wanted: nobody lying down, nobody staying."
FIX2 = "The benches. Put them back, every hundred metres, facing each other."


@pytest.fixture(scope="module")
def style():
    return fit_style([p.read_text(encoding="utf-8") for p in sorted((REPO / "sources").rglob("*.md"))])


# --- which corrections are measured ------------------------------------------------------------


def test_the_latest_fix_of_each_question_is_measured_and_removed_ones_are_not(tmp_path):
    ws = Workspace.at(tmp_path)
    old = add_correction(ws, Q1, "They are for comfort.", correction="An early draft of my answer.")
    latest = add_correction(ws, Q1.upper(), "They are for comfort.", correction=FIX1)  # the same question again
    add_correction(ws, Q2, "Wider roads.", good=True)  # a /good mark: nothing to move away from
    gone = add_correction(ws, Q2, "Wider roads.", correction=FIX2)
    remove_correction(ws, gone.id)
    with open(corrections_path(ws), "a", encoding="utf-8") as f:
        f.write("{not json\n")
    found = fixes_to_measure(ws)
    assert [c.id for c in found.fixes] == [latest.id]
    assert old.id not in {c.id for c in found.fixes} and gone.id not in {c.id for c in found.fixes}
    assert (found.superseded, found.good_marks) == (1, 1)
    assert len(found.skipped) == 1 and found.skipped[0].startswith(f"{corrections_path(ws)}:")


def test_no_corrections_file_measures_nothing(tmp_path):
    found = fixes_to_measure(Workspace.at(tmp_path))
    assert found.fixes == [] and found.superseded == found.good_marks == 0 and found.skipped == []


# --- the arithmetic ------------------------------------------------------------------------------


def test_an_answer_equal_to_the_correction_scores_one(tmp_path, style):
    c = add_correction(Workspace.at(tmp_path), Q1, "They are for comfort, mostly.", correction=FIX1)
    r = score_answer(FIX1, c, style)
    assert r["f1"] == 1.0 and r["style"] == pytest.approx(1.0)
    assert r["f1_corrected_away"] == pytest.approx(word_f1(FIX1, c.answer))
    same_as_before = score_answer(c.answer, c, style)
    assert same_as_before["f1_corrected_away"] == 1.0 and same_as_before["f1"] == pytest.approx(word_f1(c.answer, FIX1))
    assert score_answer("", c, style)["f1"] == 0.0 and style_between(style, "", FIX1) == 0.0


def test_the_summary_means_and_counts_questions_beating_the_corrected_away_answer(tmp_path, style):
    ws = Workspace.at(tmp_path)
    c1 = add_correction(ws, Q1, "They are for comfort.", correction=FIX1)
    c2 = add_correction(ws, Q2, "Wider roads.", correction=FIX2)
    found = fixes_to_measure(ws)
    records = score_corrections(found.fixes, {c1.id: {"answer": FIX1}, c2.id: {"answer": "Wider roads."}}, style)
    section = corrections_section(found, {"tuned": records}, style)
    assert section["questions"] == 2 and [i["id"] for i in section["items"]] == [c1.id, c2.id]
    away = [word_f1("They are for comfort.", FIX1), word_f1("Wider roads.", FIX2)]
    assert section["summary"]["corrected_away"]["f1"] == pytest.approx(sum(away) / 2)
    tuned = section["summary"]["tuned"]
    # One answer is the correction (F1 1.0), the other repeats the corrected-away answer.
    assert tuned["f1"] == pytest.approx((1.0 + away[1]) / 2)
    assert tuned["f1_corrected_away"] == pytest.approx((word_f1(FIX1, "They are for comfort.") + 1.0) / 2)
    assert tuned["closer"] == 1 and tuned["questions"] == 2
    assert corrections_summary({}, {})["f1"] is None


# --- eval on the tiny model ----------------------------------------------------------------------


def _invoke(ws: Path, *args: str):
    return CliRunner().invoke(cli, ["-w", str(ws), *args])


@pytest.fixture(scope="module")
def trained(trained_example_workspace, tmp_path_factory):
    """A workspace with the example's pairs (no probes), a dataset and one short run."""
    return trained_example_workspace(tmp_path_factory.mktemp("evalfix") / "ws", probes=False)


@pytest.fixture
def workspace(trained, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(trained, ws, symlinks=True)
    shutil.rmtree(ws / "eval", ignore_errors=True)
    return ws


def _metrics(ws: Path) -> dict:
    return json.loads((ws / "eval" / "run-1" / "metrics.json").read_text())


def test_eval_without_corrections_says_so_in_one_line(workspace):
    result = _invoke(workspace, "eval", *EVAL_ARGS)
    assert result.exit_code == 0, result.output
    metrics = _metrics(workspace)
    assert metrics["version"] == 3 and metrics["corrections"]["questions"] == 0
    assert metrics["scores"]["tuned"]["corrections"] == {} and metrics["scores"]["base"]["corrections"] == {}
    report = (workspace / "eval" / "run-1" / "report.md").read_text()
    section = report.split("## Your corrections\n\n", 1)[1].split("\n\n", 1)[0]
    assert section.startswith("No corrections to measure:") and "\n" not in section
    assert "closer to your corrections" not in result.output


def test_eval_measures_two_corrections_and_leaves_a_removed_one_out(workspace):
    ws = Workspace.at(workspace)
    c1 = add_correction(ws, Q1, "They are for comfort.", correction=FIX1, run="run-1",
                        context=[{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."}])
    c2 = add_correction(ws, Q2, "Wider roads.", correction=FIX2, run="run-1")
    gone = add_correction(ws, "What is a street for?", "Cars.", correction="People.", run="run-1")
    remove_correction(ws, gone.id)
    result = _invoke(workspace, "eval", *EVAL_ARGS)
    assert result.exit_code == 0, result.output
    metrics = _metrics(workspace)
    section = metrics["corrections"]
    assert section["questions"] == 2 and [i["id"] for i in section["items"]] == [c1.id, c2.id]
    assert [i["context_turns"] for i in section["items"]] == [2, 0]
    by_id = {c1.id: (FIX1, "They are for comfort."), c2.id: (FIX2, "Wider roads.")}
    for label in ("base", "tuned"):
        records = metrics["scores"][label]["corrections"]
        assert set(records) == {c1.id, c2.id}
        for cid, r in records.items():  # the stored F1s are eval's word F1 of the stored answer
            fix, away = by_id[cid]
            assert r["f1"] == pytest.approx(word_f1(r["answer"], fix))
            assert r["f1_corrected_away"] == pytest.approx(word_f1(r["answer"], away))
        s = section["summary"][label]
        assert s["questions"] == 2 and s["f1"] == pytest.approx(sum(r["f1"] for r in records.values()) / 2)
    assert "closer to your corrections: F1 (2 questions; the corrected-away answers' " in result.output
    report = (workspace / "eval" / "run-1" / "report.md").read_text()
    assert "## Your corrections" in report and "2 questions you corrected in chat" in report
    assert report.count("- *base*: closer to your corrections: F1 ") == 1
    assert report.count("- *run-1*: closer to your corrections: F1 ") == 1
    table = report.split("| question | your correction | corrected away (F1) | base (F1) | run-1 (F1) |", 1)[1]
    assert Q1 in table and Q2 in table and "What is a street for?" not in report
    # A second eval under the same settings reuses the stored answers.
    stored = metrics["scores"]["tuned"]["corrections"][c1.id]
    stored["answer"] = FIX1
    (workspace / "eval" / "run-1" / "metrics.json").write_text(json.dumps(metrics))
    again = _invoke(workspace, "eval", *EVAL_ARGS)
    assert again.exit_code == 0, again.output
    assert _metrics(workspace)["scores"]["tuned"]["corrections"][c1.id]["f1"] == 1.0


def test_compare_answers_the_corrections_with_the_old_run_when_its_eval_predates_them(workspace):
    first = _invoke(workspace, "eval", *EVAL_ARGS)  # before any correction: the old eval has none
    assert first.exit_code == 0, first.output
    ws = Workspace.at(workspace)
    add_correction(ws, Q1, "They are for comfort.", correction=FIX1, run="run-1")
    add_correction(ws, Q2, "Wider roads.", correction=FIX2, run="run-1")
    result = _invoke(workspace, "eval", "--compare", "run-1", *EVAL_ARGS)
    assert result.exit_code == 0, result.output
    metrics = _metrics(workspace)
    fixes = metrics["comparison"]["corrections"]
    assert fixes["old"] == fixes["new"] == "run-1" and fixes["questions"] == 2
    # The same run answers greedily the same way, whether generated for the comparison or scored now.
    tuned = metrics["scores"]["tuned"]["corrections"]
    assert {k: r["answer"] for k, r in fixes["old_answers"].items()} == {k: r["answer"] for k, r in tuned.items()}
    assert fixes["old_summary"] == fixes["new_summary"]
    assert "closer to your corrections: F1 (2 questions)" in result.output
    report = (workspace / "eval" / "run-1" / "report.md").read_text()
    assert "| base (F1) | run-1 (compared) (F1) | run-1 (F1) |" in report


def test_compare_with_a_run_that_is_gone_leaves_its_corrections_out(workspace):
    first = _invoke(workspace, "eval", *EVAL_ARGS)
    assert first.exit_code == 0, first.output
    # run-0: an eval whose adapters were since deleted (its metrics copied from run-1's, renamed).
    metrics = _metrics(workspace)
    metrics["run"] = "run-0"
    (workspace / "eval" / "run-0").mkdir()
    (workspace / "eval" / "run-0" / "metrics.json").write_text(json.dumps(metrics))
    add_correction(Workspace.at(workspace), Q1, "They are for comfort.", correction=FIX1, run="run-0")
    result = _invoke(workspace, "eval", "--compare", "run-0", *EVAL_ARGS)
    assert result.exit_code == 0, result.output
    assert "run-0 cannot answer the 1 correction(s)" in result.output
    new = _metrics(workspace)
    assert new["comparison"]["corrections"]["questions"] == 0 and new["corrections"]["questions"] == 1
    assert "closer to your corrections: F1 (1 question; " in result.output  # base and run-1 still measured
    assert "closer to your corrections: F1 (1 question)" not in result.output  # no comparison row
