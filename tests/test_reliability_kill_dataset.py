"""Kill `dataset` while it rewrites data/{train,valid,test}.jsonl; nothing half-written, and a re-run fixes it.

Each split file is written atomically (temp file, then rename), so a kill leaves every file whole.
The three files together are not replaced at once, though: a kill between two renames leaves
a new train.jsonl beside the old valid/test, and an example can then sit in two splits. dataset.json
is written last, so its hash no longer matches and `train` refuses the mix. The child is held
after its first split's rename (the product's test hook, mlx_partner/testhooks.py) and killed
there: the kill lands between the renames for sure, however busy the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness import (
    TEST_KEY,
    Hooks,
    cli_env,
    jsonl_strict,
    kill_at,
    make_workspace,
    run_cli,
    start_cli,
)

from mlx_partner.cli import cli
from mlx_partner.dataset.manifest import dataset_hash
from mlx_partner.workspace import Workspace


def questions(ws: Path, split: str) -> set[str]:
    path = ws / "data" / f"{split}.jsonl"
    return {r["messages"][-2]["content"] for r in jsonl_strict(path)} if path.exists() else set()


def overlap(ws: Path) -> set[str]:
    train, valid, test = (questions(ws, s) for s in ("train", "valid", "test"))
    return (train & valid) | (train & test) | (valid & test)


@pytest.fixture
def built(fake_anthropic, tiny_model, tmp_path, monkeypatch) -> Path:
    """A workspace with pairs and a dataset built with seed 0."""
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    runner = CliRunner()
    assert runner.invoke(cli, ["-w", str(ws), "generate", "--pairs", "40", "--pairs-per-round", "8"]).exit_code == 0
    result = runner.invoke(cli, ["-w", str(ws), "dataset", "--base-model", str(tiny_model), "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert not overlap(ws)
    return ws


def _kill_after_train_is_replaced(ws: Path, tiny_model: Path) -> None:
    hooks = Hooks(ws.parent / "hooks")
    hooks.hold("dataset-split-written", 1)  # train.jsonl renamed into place; valid and test not yet
    train = ws / "data" / "train.jsonl"
    before = train.stat().st_ino
    proc = start_cli(["dataset", "--base-model", str(tiny_model), "--seed", "7"], ws, cli_env(None, key=None, **hooks.env))
    kill_at(proc, hooks, "dataset-split-written", timeout=120)
    assert train.stat().st_ino != before, "the new train.jsonl is in place"


def test_killed_dataset_leaves_whole_files_and_a_rerun_restores_the_splits(built, tiny_model):
    ws = built
    _kill_after_train_is_replaced(ws, tiny_model)
    for split in ("train", "valid", "test"):
        assert jsonl_strict(ws / "data" / f"{split}.jsonl"), f"{split}.jsonl is whole"
    json.loads((ws / "data" / "dataset.json").read_text(encoding="utf-8"))
    recorded = json.loads((ws / "data" / "dataset.json").read_text(encoding="utf-8"))["hash"]
    assert dataset_hash(Workspace.at(ws)) != recorded, "the kill landed between the split renames"

    env = cli_env(None, key=None)
    rerun = run_cli(["dataset", "--base-model", str(tiny_model), "--seed", "7"], ws, env)
    assert rerun.returncode == 0, str(rerun)
    assert not overlap(ws), "after the re-run no example is in two splits"
    recorded = json.loads((ws / "data" / "dataset.json").read_text(encoding="utf-8"))["hash"]
    assert dataset_hash(Workspace.at(ws)) == recorded


def test_train_refuses_splits_left_mixed_by_a_killed_dataset(built, tiny_model):
    ws = built
    _kill_after_train_is_replaced(ws, tiny_model)
    assert overlap(ws), "the killed dataset left train from one split and valid/test from another"
    result = CliRunner().invoke(cli, ["-w", str(ws), "train", "--base-model", str(tiny_model), "--iters", "2",
                                      "--batch-size", "2", "--quiet"])
    assert result.exit_code == 1, result.output
    assert "do not match data/dataset.json" in result.output and "run `mlx-partner dataset` again" in result.output
    assert "Traceback" not in result.output
    assert not (ws / "adapters").exists() or not list((ws / "adapters").glob("*/adapters.safetensors"))
