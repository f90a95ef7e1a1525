"""retrain and runs: new documents -> only their batch is generated, a new run, both runs compared
on the same test pairs; nothing changed -> nothing done. The local Messages API server stands in
for Claude and the tiny random model for the base model."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.retrain import Changes, describe_documents, format_runs, list_runs

REPO = Path(__file__).resolve().parent.parent

NEW_THEME = {
    "compost.md": (
        "# Compost is a ledger\n\nI keep a compost heap behind the building. Every peel I throw on it is a small "
        "entry in a ledger of what we ate. Here is my claim: a heap that smells is a heap that was never turned. "
        "So: turn it on Sundays.\n\nThe neighbours laughed at first. Now they bring their coffee grounds in jars, "
        "and the jars come back washed.\n"
    ),
    "weeds.md": (
        "# Weeds are opinions\n\nA weed is a plant in a place someone disagrees with. I let the dandelions stay on "
        "the verge because the bees vote for them. Here is my claim: a lawn with no weeds is a lawn nobody walks "
        "on.\n\nCount the bees on a dandelion verge and on a mown one. The verge wins every time I have counted.\n"
    ),
}


@contextlib.contextmanager
def environ(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_workspace(root: Path, tiny_model: Path) -> Path:
    """Two of the example themes (to keep generation small), the profile, tiny training settings."""
    (root / "sources").mkdir(parents=True)
    for theme in ("bread", "repair"):
        shutil.copytree(REPO / "sources" / theme, root / "sources" / theme)
    shutil.copy(REPO / "profile.md", root / "profile.md")
    (root / "partner.toml").write_text(
        f'[train]\nbase_model = "{tiny_model}"\niters = 2\nbatch_size = 2\nmax_seq_length = 384\n\n'
        f"[generate]\nconcurrency = 1\n",
        encoding="utf-8",
    )
    return root


def invoke(ws: Path, *args: str):
    return CliRunner().invoke(cli, ["-w", str(ws), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def first_run(tiny_model, tmp_path_factory):
    """A workspace after generate, dataset, train and eval: the state before new coursework."""
    from fake_anthropic import FakeAnthropic

    ws = make_workspace(tmp_path_factory.mktemp("retrain") / "ws", tiny_model)
    server = FakeAnthropic().start()
    try:
        with environ(ANTHROPIC_BASE_URL=server.url, ANTHROPIC_API_KEY="test-key"):
            for args in (["generate"], ["dataset"], ["train", "--quiet"],
                         ["eval", "--limit", "3", "--probes", "1", "--max-tokens", "6", "--quiet"]):
                result = invoke(ws, *args)
                assert result.exit_code == 0, (args, result.output)
    finally:
        server.stop()
    return ws


@pytest.fixture
def workspace(first_run, tmp_path):
    """A private copy of the first run's workspace (adapters/latest stays a relative link)."""
    ws = tmp_path / "ws"
    shutil.copytree(first_run, ws, symlinks=True)
    return ws


def _runs(ws: Path) -> list[str]:
    return sorted(p.parent.name for p in (ws / "adapters").glob("*/manifest.json") if not p.parent.is_symlink())


def _documents_sent(server) -> set[str]:
    sent = set()
    for request in server.requests:
        sent |= set(re.findall(r'<document id="([^"]+)"', json.dumps(request["body"]).replace('\\"', '"')))
    return sent


def test_retrain_after_a_new_theme(workspace, fake_anthropic, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    (old_run,) = _runs(workspace)
    ledger_before = (workspace / "data" / "ledger.jsonl").read_text().count("\n")
    old_test = (workspace / "data" / "test.jsonl").read_text().splitlines()
    old_eval = json.loads((workspace / "eval" / old_run / "metrics.json").read_text())
    for name, text in NEW_THEME.items():
        (workspace / "sources" / "gardens").mkdir(exist_ok=True)
        (workspace / "sources" / "gardens" / name).write_text(text, encoding="utf-8")

    dry = invoke(workspace, "retrain", "--dry-run")
    assert dry.exit_code == 0 and "2 new" in dry.output and "gardens" in dry.output
    assert fake_anthropic.requests == []  # a dry run sends nothing

    result = invoke(workspace, "retrain", "--limit", "3", "--max-tokens", "6", "--quiet")
    assert result.exit_code == 0, result.output

    # Requests went out only for the new theme's batch: by the server's log and by the ledger.
    assert fake_anthropic.requests and all(r["path"] == "/v1/messages" for r in fake_anthropic.requests)
    assert _documents_sent(fake_anthropic) == {"gardens/compost.md", "gardens/weeds.md"}
    ledger = [json.loads(line) for line in (workspace / "data" / "ledger.jsonl").read_text().splitlines()]
    assert {r.get("batch") for r in ledger[ledger_before:] if r.get("key")} == {"gardens"}

    # A new run appeared and is the latest.
    runs = _runs(workspace)
    assert len(runs) == 2 and old_run in runs
    (new_run,) = set(runs) - {old_run}
    assert f"New run: {new_run}" in result.output
    assert (workspace / "models" / new_run / "config.json").exists()  # fused

    # The test split kept every earlier test pair.
    new_test = (workspace / "data" / "test.jsonl").read_text().splitlines()
    assert set(old_test) <= set(new_test)

    # The report compares both runs on the same test pairs.
    metrics = json.loads((workspace / "eval" / new_run / "metrics.json").read_text())
    old_keys = [e["key"] for e in old_eval["examples"]]
    assert [e["key"] for e in metrics["examples"]][: len(old_keys)] == old_keys
    comparison = metrics["comparison"]
    assert comparison["old"] == old_run and comparison["new"] == new_run
    assert comparison["shared_answers"] == len(old_keys)
    assert comparison["shared_test_loss"] == len(old_test)
    report = (workspace / "eval" / new_run / "report.md").read_text()
    assert f"## {new_run} against {old_run}" in report
    assert f"against {old_run}, on the same held-out pairs ({len(old_keys)} answers" in result.output
    # The three decline figures, compared across the runs on the probes both were asked.
    for metric in ("test loss", "answer F1", "ROUGE-L", "style similarity", "declines near-domain probes",
                   "declines far probes", "false declines (answerable)"):
        assert metric in result.output
    assert comparison["shared_probes"] == len(old_eval["scores"]["tuned"]["probes"]) + len(
        old_eval["scores"]["tuned"].get("near_probes", {}))

    # And now nothing has changed any more.
    fake_anthropic.reset_log()
    again = invoke(workspace, "retrain")
    assert again.exit_code == 0 and "Nothing changed" in again.output
    assert fake_anthropic.requests == [] and _runs(workspace) == runs


def test_nothing_changed_spends_nothing(workspace, fake_anthropic, monkeypatch):
    # No credentials at all: proof that nothing would be sent.
    before = sorted(p.relative_to(workspace) for p in workspace.rglob("*"))
    result = invoke(workspace, "retrain")
    assert result.exit_code == 0
    assert "Nothing changed since run" in result.output and "--force" in result.output
    assert sorted(p.relative_to(workspace) for p in workspace.rglob("*")) == before
    assert fake_anthropic.requests == []


def test_force_retrains_without_generating(workspace, fake_anthropic, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    result = invoke(workspace, "retrain", "--force", "--continue", "--no-fuse", "--limit", "2", "--max-tokens", "4", "--quiet")
    assert result.exit_code == 0, result.output
    assert fake_anthropic.requests == []
    runs = _runs(workspace)
    assert len(runs) == 2
    newest = max(runs)
    manifest = json.loads((workspace / "adapters" / newest / "manifest.json").read_text())
    assert manifest["continued_from"] == min(runs)


def test_retrain_without_a_run(tmp_path, tiny_model):
    ws = make_workspace(tmp_path / "ws", tiny_model)
    result = CliRunner().invoke(cli, ["-w", str(ws), "retrain"])
    assert result.exit_code == 1
    assert "no earlier run" in result.output and "mlx-partner train" in result.output
    assert "Traceback" not in result.output


def test_runs_lists_runs_with_scores(workspace):
    result = invoke(workspace, "runs")
    assert result.exit_code == 0
    (run,) = _runs(workspace)
    line = next(ln for ln in result.output.splitlines() if ln.startswith(run))
    assert line.startswith(f"{run} *") and "finished" in line
    (row,) = list_runs(__import__("mlx_partner.workspace", fromlist=["Workspace"]).Workspace.at(workspace))
    assert row.latest and row.examples and row.best_val_loss is not None and row.f1 is not None
    as_json = json.loads(invoke(workspace, "runs", "--json").output)
    assert as_json[0]["name"] == run and as_json[0]["latest"] is True


def test_runs_without_runs(tmp_path):
    result = invoke(tmp_path, "runs")
    assert result.exit_code == 0 and "No runs yet" in result.output


def test_format_runs_marks_the_latest():
    from mlx_partner.retrain import RunRow

    rows = [RunRow("run-a", "2026-01-01T10:00:00", "m", 10, 1.5, "finished", False),
            RunRow("run-b", "2026-01-02T10:00:00", "m", 12, None, "stopped", True, continued_from="run-a", f1=0.25)]
    text = format_runs(rows)
    assert "run-b *" in text and "run-a *" not in text
    assert "from run-a" in text and "0.250" in text and "1.500" in text


@pytest.mark.parametrize(
    "previous, current, expected",
    [
        ({}, {"a": "1"}, (("a",), (), ())),
        ({"a": "1"}, {"a": "1"}, ((), (), ())),
        ({"a": "1", "b": "2"}, {"a": "9"}, ((), ("a",), ("b",))),
    ],
)
def test_describe_documents(previous, current, expected):
    assert describe_documents(previous, current) == expected


def test_changes_anything():
    assert not Changes(latest_run="r").anything
    assert Changes(latest_run="r", reasons=("documents: 1 new",)).anything


def test_extra_pair_files_keeps_hand_written_files_only(tmp_path):
    from mlx_partner.retrain import extra_pair_files
    from mlx_partner.workspace import Workspace

    ws = Workspace.at(tmp_path)
    ws.pairs_dir.mkdir(parents=True)
    generated = ws.pairs_dir / "bread.jsonl"
    mine = tmp_path / "mine.jsonl"
    for path in (generated, mine):
        path.write_text("{}\n")
    elsewhere = tmp_path / "old-copy" / "data" / "pairs" / "bread.jsonl"  # a moved workspace's pairs
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_text("{}\n")
    built = {"files": [str(generated), str(mine), str(tmp_path / "deleted.jsonl"), str(elsewhere)]}
    assert extra_pair_files(ws, built) == [mine]
    assert extra_pair_files(ws, {}) == []
