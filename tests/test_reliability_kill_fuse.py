"""Kill `fuse` while it writes and while it swaps the new model into models/<run>/; re-run it.

fuse writes the model into a hidden folder beside the target, checks it, then renames it into
place (the old one moved aside first). After a SIGKILL, models/<run>/ is either absent or a
whole model that loads; the next `fuse` clears the leftovers and finishes. The child is held
between the swap's two renames (the product's test hook, mlx_partner/testhooks.py), so the kill
lands inside the swap for sure, and a kill at a random moment of the write always lands before it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness import Hooks, cli_env, kill_at, kill_when, run_cli, start_cli

from mlx_partner.cli import cli


def check_model_dir(path: Path) -> None:
    """Absent, or a whole model: config.json parses and every weights file loads."""
    import mlx.core as mx

    if not path.exists():
        return
    json.loads((path / "config.json").read_text(encoding="utf-8"))
    weights = sorted(path.glob("*.safetensors"))
    assert weights, f"{path} has no weights"
    for w in weights:
        assert mx.load(str(w)), w


@pytest.fixture
def trained(tiny_model, tmp_path) -> Path:
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    ex = ('{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "what is bread"}, '
          '{"role": "assistant", "content": "bread is slow and honest work"}]}\n')
    (ws / "data" / "train.jsonl").write_text(ex * 8)
    (ws / "data" / "valid.jsonl").write_text(ex * 4)
    runner = CliRunner()
    result = runner.invoke(cli, ["-w", str(ws), "train", "--base-model", str(tiny_model), "--iters", "2",
                                 "--steps-per-eval", "1", "--batch-size", "4", "--run", "f", "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["-w", str(ws), "fuse", "--run", "f"])
    assert result.exit_code == 0, result.output
    return ws


def test_killed_fuse_leaves_no_half_model_and_a_rerun_finishes(trained):
    ws = trained
    target = ws / "models" / "f"
    rng = random.Random(0)

    # 1. A random moment while the new model is being written or checked (held at the swap, should
    #    it get that far: the kill lands before the new model is in place, whatever the delay).
    hooks = Hooks(ws.parent / "hooks-1")
    hooks.hold("swap-moved-aside")
    proc = start_cli(["fuse", "--run", "f"], ws, cli_env(None, key=None, **hooks.env))
    fusing = lambda: any(p.name.startswith(".f.fusing-") for p in (ws / "models").iterdir())  # noqa: E731
    assert kill_when(proc, fusing, delay=rng.uniform(0.0, 0.5), timeout=120) == "killed", str(proc.result())
    check_model_dir(target)

    # 2. Inside the swap: the old model moved aside, the new one not yet in place.
    hooks = Hooks(ws.parent / "hooks-2")
    hooks.hold("swap-moved-aside")
    proc = start_cli(["fuse", "--run", "f"], ws, cli_env(None, key=None, **hooks.env))
    kill_at(proc, hooks, "swap-moved-aside", timeout=120)
    assert not target.exists() and list((ws / "models").glob(".f.old-*")), "killed between the renames"
    check_model_dir(target)

    result = run_cli(["fuse", "--run", "f"], ws, cli_env(None, key=None))
    assert result.returncode == 0 and "Traceback" not in result.output, str(result)
    check_model_dir(target)
    assert target.is_dir()
    assert not [p.name for p in (ws / "models").iterdir() if p.name.startswith(".f.fusing-")], "leftovers cleared"
    assert not [p.name for p in (ws / "models").iterdir() if p.name.startswith(".f.old-")], "no spare copy kept"


def test_a_model_moved_aside_by_a_killed_swap_is_put_back_and_spare_copies_go(tmp_path):
    from mlx_partner.fsutil import recover_swap

    models = tmp_path / "models"
    (models / ".f.old-111").mkdir(parents=True)
    (models / ".f.old-111" / "config.json").write_text("{}")
    recover_swap(models / "f")  # killed between the renames: the target is missing
    assert (models / "f" / "config.json").is_file() and not list(models.glob(".f.old-*"))

    (models / ".f.old-222").mkdir()
    (models / ".f.old-222" / "config.json").write_text("{}")
    (models / ".g.old-333").mkdir()  # another model's: not ours to touch
    recover_swap(models / "f")  # killed after the new model was in place: the old copy is spare
    assert (models / "f").is_dir() and not list(models.glob(".f.old-*")) and (models / ".g.old-333").is_dir()
