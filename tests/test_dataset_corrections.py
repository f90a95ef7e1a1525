"""Corrections from chat become data: a /fix is a pair of kind `correction`, always in train and never
in valid or test (it replaces a train pair asking the same question); a /good answer joins as an
ordinary pair; a correction asking a test question is reported and kept out of train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.corrections import add_correction
from mlx_partner.dataset.corrected import CORRECTION, place_corrections
from mlx_partner.dataset.pairs import Pair
from mlx_partner.workspace import Workspace

THEMES = ("bread", "streets", "repair")
TOML = ('[dataset]\nsystem_prompt = "You are a partner."\nvalid_fraction = 0.2\ntest_fraction = 0.2\n\n'
        "[train]\nbatch_size = 2\n")


def invoke(ws: Path, *args: str):
    return CliRunner().invoke(cli, ["-w", str(ws), *args], catch_exceptions=False)


def split(ws: Path, name: str) -> list[tuple[str, str]]:
    path = ws / "data" / f"{name}.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
    return [(m[-2]["content"], m[-1]["content"]) for m in rows]


@pytest.fixture
def workspace(tmp_path, tiny_model):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "profile.md").write_text("# Me\n\nI write about bread, streets and repair.\n", encoding="utf-8")
    (ws / "partner.toml").write_text(TOML, encoding="utf-8")
    lines = [{"question": f"Question {i} about {t}?", "answer": f"My answer {i} on {t}.", "theme": t}
             for t in THEMES for i in range(6)]
    (ws / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return ws


def build(ws: Path, tiny_model: Path):
    result = invoke(ws, "dataset", "--pairs", str(ws / "pairs.jsonl"), "--base-model", str(tiny_model))
    assert result.exit_code == 0, result.output
    return result


def test_fixes_go_to_train_only_and_good_answers_join_the_pairs(workspace, tiny_model):
    build(workspace, tiny_model)
    trained_q, trained_a = split(workspace, "train")[0]
    w = Workspace.at(workspace)
    fix_new = add_correction(w, "What is a loaf for?", "Wrong.", correction="A loaf is for sharing.")
    fix_old = add_correction(w, trained_q, trained_a, correction="What I would really say.")
    good = add_correction(w, "Why walk?", "Because streets are for walking.", good=True)

    result = build(workspace, tiny_model)
    train = split(workspace, "train")
    assert ("What is a loaf for?", "A loaf is for sharing.") in train
    assert (trained_q, "What I would really say.") in train and (trained_q, trained_a) not in train  # replaced
    held_out = split(workspace, "valid") + split(workspace, "test")
    assert all(a not in ("A loaf is for sharing.", "What I would really say.") for _, a in held_out)
    assert ("Why walk?", "Because streets are for walking.") in train + held_out  # an ordinary pair
    manifest = json.loads((workspace / "data" / "dataset.json").read_text())
    kinds = {s: [e["kind"] for e in manifest["examples"][s]] for s in ("train", "valid", "test")}
    assert kinds["train"].count(CORRECTION) == 2 and CORRECTION not in kinds["valid"] + kinds["test"]
    assert {fix_new.id, fix_old.id} <= set(manifest["ids"]["train"])
    assert good.id in {i for s in manifest["ids"].values() for i in s}
    assert "2 correction(s) from chat in train" in result.output and "replace 1 pair(s)" in result.output


def test_a_correction_of_a_test_question_is_reported_and_kept_out_of_train(workspace, tiny_model):
    build(workspace, tiny_model)
    test_q, test_a = split(workspace, "test")[0]
    before = split(workspace, "test")
    add_correction(Workspace.at(workspace), test_q, test_a, correction="My corrected answer to a test question.")
    result = build(workspace, tiny_model)
    assert "1 correction(s) from chat ask a question held out for testing and were kept out of train" in result.output
    assert all(a != "My corrected answer to a test question." for _, a in split(workspace, "train"))
    assert split(workspace, "test") == before  # the held-out pairs are as they were


def test_a_broken_corrections_line_is_named_and_skipped(workspace, tiny_model):
    w = Workspace.at(workspace)
    add_correction(w, "What is a loaf for?", "Wrong.", correction="A loaf is for sharing.")
    with open(workspace / "data" / "corrections.jsonl", "a", encoding="utf-8") as f:
        f.write("{broken\n")
    result = build(workspace, tiny_model)
    assert f"Skipped {workspace / 'data' / 'corrections.jsonl'}:2: not valid JSON" in result.output
    assert ("What is a loaf for?", "A loaf is for sharing.") in split(workspace, "train")


def test_retrain_sees_the_corrected_dataset_as_current(workspace, tiny_model, monkeypatch):
    """Correction ids in dataset.json are not 'pairs that left data/pairs/' for retrain."""
    import mlx_partner.retrain as retrain

    add_correction(Workspace.at(workspace), "What is a loaf for?", "Wrong.", correction="A loaf is for sharing.")
    build(workspace, tiny_model)
    manifest = {"dataset": {"dataset_json_hash": json.loads((workspace / "data" / "dataset.json").read_text())["hash"]}}
    assert retrain._dataset_outdated(Workspace.at(workspace), manifest) == ""


# --- pure -----------------------------------------------------------------------------------------


def _pair(pid: str, q: str, kind: str = "genuine", chat: bool = False) -> Pair:
    origin = f"/ws/data/corrections.jsonl ({pid})" if chat else "/ws/pairs.jsonl:1"
    return Pair(pid, q, f"answer to {q}", "t", kind, origin)


def test_place_corrections():
    split_pairs = {"train": [_pair("a", "Q a"), _pair("g", "Q test", chat=True)], "valid": [_pair("b", "Q b")],
                   "test": [_pair("c", "Q  TEST")]}
    fixes = [_pair("c-1", "Q a", CORRECTION, chat=True), _pair("c-2", "q test!", CORRECTION, chat=True),
             _pair("c-3", "Q new", CORRECTION, chat=True)]
    out, kept, warnings, notes = place_corrections(fixes, split_pairs, [p for s in split_pairs.values() for p in s])
    assert [p.id for p in out["train"]] == ["c-1", "c-3"]  # a replaced; the /good g and c-2 ask the test question
    assert [p.id for p in out["valid"]] == ["b"] and [p.id for p in out["test"]] == ["c"]
    assert "2 correction(s) from chat ask a question held out for testing" in warnings[0]
    assert "replace 1 pair(s)" in notes[0]
    assert {p.id for p in kept} == {"b", "c", "c-1", "c-3"}
