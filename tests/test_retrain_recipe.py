"""retrain keeps its recipe: the latest run's base model and training settings are repeated, a flag
or a setting changed in partner.toml since that run overrides them, and the new run's manifest
records where each came from. The tiny random model is the base; it is named only on the command
line (partner.toml names none, and the default hub model is unreachable offline), so a retrain
that forgot the run's base model would fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.config import TrainSettings
from mlx_partner.recipe import from_run, repeat_recipe, setting_origins, train_record
from mlx_partner.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
TOML = "[train]\niters = 2\nbatch_size = 2\nmax_seq_length = 384\n"
EVAL = ("--no-fuse", "--limit", "1", "--max-tokens", "2", "--quiet")


def invoke(ws: Path, *args: str):
    return CliRunner().invoke(cli, ["-w", str(ws), *args], catch_exceptions=False)


def runs(ws: Path) -> list[str]:
    return sorted(p.parent.name for p in (ws / "adapters").glob("*/manifest.json") if not p.parent.is_symlink())


def manifest(ws: Path, run: str) -> dict:
    return json.loads((ws / "adapters" / run / "manifest.json").read_text())


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """`dataset --pairs` (the example's hand-written pairs) and `train --base-model <tiny>`: one run.
    sources/ is there for eval's style score; nothing is generated here (test_retrain.py does that)."""
    ws = tmp_path_factory.mktemp("recipe") / "ws"
    ws.mkdir()
    shutil.copytree(REPO / "sources", ws / "sources")
    shutil.copy(REPO / "profile.md", ws / "profile.md")
    shutil.copy(REPO / "examples" / "pairs.jsonl", ws / "pairs.jsonl")
    (ws / "partner.toml").write_text(TOML, encoding="utf-8")
    for args in (["dataset", "--pairs", str(ws / "pairs.jsonl"), "--base-model", str(tiny_model)],
                 ["train", "--base-model", str(tiny_model), "--quiet"]):
        result = invoke(ws, *args)
        assert result.exit_code == 0, (args, result.output)
    return ws


class NothingToGenerate:
    """generate's plan when every round is done and no document changed."""

    previous_hashes: dict = {}
    hashes: dict = {}
    plans: tuple = ()
    stale: tuple = ()


@pytest.fixture
def workspace(trained, tmp_path, monkeypatch):
    import mlx_partner.retrain as retrain

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws, symlinks=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the default base model is not here: never fetch it
    monkeypatch.setattr(retrain, "prepare", lambda *a, **k: NothingToGenerate())
    return ws


def test_train_records_where_each_setting_came_from(trained, tiny_model):
    (run,) = runs(trained)
    m = manifest(trained, run)
    sources = m["recipe"]["sources"]
    assert sources["base_model"] == "flag" and m["base_model"] == str(tiny_model)
    assert sources["iters"] == "partner.toml" and sources["learning_rate"] == "default"
    assert m["recipe"]["configured"]["iters"] == 2
    assert m["recipe"]["configured"]["base_model"] == TrainSettings().base_model


def test_retrain_trains_on_the_latest_runs_base_model_offline(workspace, tiny_model):
    (old,) = runs(workspace)
    result = invoke(workspace, "retrain", "--force", *EVAL)
    assert result.exit_code == 0, result.output
    (new,) = set(runs(workspace)) - {old}
    m = manifest(workspace, new)
    assert m["base_model"] == str(tiny_model)
    assert m["recipe"]["from_run"] == old
    assert m["recipe"]["sources"]["base_model"] == from_run(old)
    assert m["recipe"]["sources"]["iters"] == from_run(old) and m["settings"]["iters"] == 2
    assert f"Recipe: run {old}'s settings, base model {tiny_model} (run {old})." in result.output
    assert "Kept from run" in result.output and "base_model=" in result.output  # partner.toml names another


def test_a_flag_overrides_the_recipe(workspace, tiny_model):
    (old,) = runs(workspace)
    dry = invoke(workspace, "retrain", "--dry-run", "--learning-rate", "0.0003")
    assert "training settings differ" in dry.output and "learning_rate" in dry.output
    result = invoke(workspace, "retrain", "--learning-rate", "0.0003", *EVAL)  # a new setting alone is a change
    assert result.exit_code == 0, result.output
    (new,) = set(runs(workspace)) - {old}
    m = manifest(workspace, new)
    assert m["settings"]["learning_rate"] == pytest.approx(3e-4)
    assert m["recipe"]["sources"]["learning_rate"] == "flag"
    assert m["recipe"]["sources"]["base_model"] == from_run(old) and m["base_model"] == str(tiny_model)
    assert "From flags: learning_rate=0.0003." in result.output


def test_a_setting_changed_in_partner_toml_since_the_run_wins(workspace):
    (old,) = runs(workspace)
    (workspace / "partner.toml").write_text(TOML.replace("iters = 2", "iters = 3"), encoding="utf-8")
    result = invoke(workspace, "retrain", *EVAL)
    assert result.exit_code == 0, result.output
    (new,) = set(runs(workspace)) - {old}
    m = manifest(workspace, new)
    assert m["settings"]["iters"] == 3 and m["recipe"]["sources"]["iters"] == "partner.toml"
    assert m["recipe"]["sources"]["batch_size"] == from_run(old)
    assert "Changed in the workspace's settings since run" in result.output


def test_nothing_changed_still_spends_nothing(workspace):
    before = runs(workspace)
    result = invoke(workspace, "retrain")
    assert result.exit_code == 0 and "Nothing changed" in result.output
    assert runs(workspace) == before


# --- the rules, pure ------------------------------------------------------------------------------

CONFIGURED = TrainSettings(base_model="hub/default", iters=5, learning_rate=1e-4)
ORIGINS = {"base_model": "default", "iters": "partner.toml"}
RAN = {"run": "r1", "base_model": "/models/tiny",
       "settings": {**TrainSettings(base_model="/models/tiny", iters=2, num_layers=2).__dict__}}


@pytest.mark.parametrize("recipe, flags, key, value, source", [
    (None, {}, "base_model", "/models/tiny", "run r1"),  # an older run: its values stand
    (None, {}, "iters", 2, "run r1"),
    (None, {"iters": 7}, "iters", 7, "flag"),
    (None, {"iters": None}, "iters", 2, "run r1"),  # None: the flag was not given
    ({"configured": {"iters": 5}}, {}, "iters", 2, "run r1"),  # configured unchanged since: the run's
    ({"configured": {"iters": 4}}, {}, "iters", 5, "partner.toml"),  # changed since: today's
    (None, {"base_model": "/other"}, "num_layers", 16, "default"),  # a new base: layers not fitted yet
    (None, {}, "num_layers", 2, "run r1"),
])
def test_repeat_recipe(recipe, flags, key, value, source):
    m = dict(RAN, **({"recipe": recipe} if recipe else {}))
    r = repeat_recipe(m, CONFIGURED, ORIGINS, flags)
    assert getattr(r.settings, key) == value and r.sources[key] == source


def test_repeat_recipe_takes_todays_value_for_a_setting_the_run_never_recorded():
    m = {"run": "r1", "settings": {"iters": 2}}
    r = repeat_recipe(m, CONFIGURED, ORIGINS, {})
    assert r.settings.learning_rate == 1e-4 and r.sources["learning_rate"] == "default"
    assert r.differs_from_run == ()


def test_setting_origins(tmp_path):
    toml = tmp_path / "partner.toml"
    toml.write_text("[train]\niters = 3\nepochs = 2.0\n", encoding="utf-8")
    origins = setting_origins(toml, "train", environ={"MLX_PARTNER_TRAIN_EPOCHS": "1"})
    assert origins["iters"] == "partner.toml" and origins["epochs"] == "environment"
    assert origins["base_model"] == "default"
    assert setting_origins(tmp_path / "missing.toml", "train", environ={})["iters"] == "default"


def test_train_record_names_flags(tmp_path, monkeypatch):
    ws = Workspace.at(tmp_path)
    ws.config_path.write_text("[train]\niters = 3\n", encoding="utf-8")
    record = train_record(ws, TrainSettings(iters=3, lora_rank=4), shape_from=None)
    assert record["sources"]["iters"] == "partner.toml" and record["sources"]["lora_rank"] == "flag"
    record = train_record(ws, TrainSettings(iters=3, lora_rank=4), shape_from="r0")
    assert record["sources"]["lora_rank"] == "run r0"


def test_a_new_correction_alone_is_reason_to_retrain(workspace):
    from mlx_partner.corrections import add_correction

    (old,) = runs(workspace)
    add_correction(Workspace.at(workspace), "What makes a loaf good?", "Flour.", correction="Time, mostly.")
    dry = invoke(workspace, "retrain", "--dry-run")
    assert "Changed: 1 new correction from chat since run" in dry.output
    result = invoke(workspace, "retrain", *EVAL)
    assert result.exit_code == 0, result.output
    assert len(runs(workspace)) == 2
    trained_on = (workspace / "data" / "train.jsonl").read_text()
    assert "Time, mostly." in trained_on and "What makes a loaf good?" in trained_on  # the correction is data now
    assert "Nothing changed" in invoke(workspace, "retrain", "--dry-run").output


def test_no_generate_retrains_on_corrections_where_documents_were_never_generated(trained, tmp_path, monkeypatch):
    """The demo's workspace: hand-written pairs, documents never sent to `generate`. A correction
    made in chat is retrained on offline with --no-generate; without it retrain wants to send the
    documents (and, with no key, says so and does nothing)."""
    from mlx_partner.corrections import add_correction

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws, symlinks=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    add_correction(Workspace.at(ws), "What makes a loaf good?", "Flour.", correction="Time, mostly.")

    plain = invoke(ws, "retrain", "--dry-run")
    assert "generation requests to send" in plain.output
    dry = invoke(ws, "retrain", "--dry-run", "--no-generate")
    assert "Changed: 1 new correction from chat since run" in dry.output
    assert "generation requests" not in dry.output.split("Not generating")[0]
    assert "Not generating (--no-generate): documents:" in dry.output

    result = invoke(ws, "retrain", "--no-generate", *EVAL)
    assert result.exit_code == 0, result.output
    assert len(runs(ws)) == 2 and not (ws / "data" / "pairs").exists()  # nothing was generated
    assert "Time, mostly." in (ws / "data" / "train.jsonl").read_text()
    again = invoke(ws, "retrain", "--dry-run", "--no-generate").output
    assert "Nothing to retrain on since run" in again and "wait for a retrain without --no-generate" in again
    assert "Nothing changed" not in again  # the documents did change; they were not generated
    done = invoke(ws, "retrain", "--no-generate", *EVAL)
    assert done.exit_code == 0 and len(runs(ws)) == 2, done.output
    assert "Nothing to retrain on since run" in done.output and "documents:" in done.output
    assert "no new or changed documents" not in done.output
