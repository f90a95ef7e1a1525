"""The demo: its example-workspace check, the side-by-side view, and the whole path end to end.

The quick test runs the real dataset, train and fuse stages on the tiny model (`--base-model`);
the slow one is the real thing on SmolLM2-135M (`pytest -m slow`).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.chat.citations import NOT_GROUNDED, Citation, Cited
from mlx_partner.cli import cli
from mlx_partner.config import Settings
from mlx_partner.demo import (
    OFF_TOPIC_QUESTION,
    Comparison,
    demo_settings,
    example_workspace,
    side_by_side,
)
from mlx_partner.errors import PartnerError
from mlx_partner.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def example_ws(tmp_path) -> Path:
    """A copy of the repository's example workspace (the demo writes data/, adapters/, models/)."""
    root = tmp_path / "example"
    root.mkdir()
    shutil.copy(REPO / "profile.md", root / "profile.md")
    shutil.copytree(REPO / "sources", root / "sources")
    shutil.copytree(REPO / "examples", root / "examples")
    return root


def test_the_repository_is_an_example_workspace():
    example = example_workspace(Workspace.at(REPO))
    assert example.pairs.name == "pairs.jsonl"
    assert 2 <= len(example.questions) <= 5


def test_a_folder_that_is_not_the_example_workspace(tmp_path):
    with pytest.raises(PartnerError, match="not the example workspace .*clone of the mlx-partner repository"):
        example_workspace(Workspace.at(tmp_path))
    result = CliRunner().invoke(cli, ["-w", str(tmp_path), "demo", "--quick"])
    assert result.exit_code == 1
    assert "not the example workspace (profile.md is missing)" in result.output
    assert "Traceback" not in result.output


def test_demo_questions_skip_blanks_and_comments(example_ws):
    (example_ws / "examples" / "demo_questions.txt").write_text("# held out\n\nOne?\n  Two?  \n")
    assert example_workspace(Workspace.at(example_ws)).questions == ["One?", "Two?"]
    (example_ws / "examples" / "demo_questions.txt").write_text("# nothing\n")
    with pytest.raises(PartnerError, match="holds no questions"):
        example_workspace(Workspace.at(example_ws))


def test_demo_settings_keep_the_users_other_settings():
    base = Settings().override("train", learning_rate=3e-4, lora_rank=4)
    s = demo_settings(base, "/models/x", 60, quick=False)
    assert (s.train.base_model, s.train.iters, s.train.patience, s.train.steps_per_eval) == ("/models/x", 60, 0, 20)
    assert (s.train.learning_rate, s.train.lora_rank) == (3e-4, 4)


COMPARISONS = [
    Comparison("Is it worth repairing a kettle?", "Buy a new one, it is cheaper.", "Open it first. " * 12),
    Comparison("What is a street for?", "Cars.\x1b[31m red", "Staying."),
]


def test_side_by_side_in_two_columns():
    text = side_by_side(COMPARISONS, 100)
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines)
    header = next(line for line in lines if line.startswith("Base model"))
    assert header.index("| Partner") == 49  # a 48-wide column, a space, the bar
    assert "Q1. Is it worth repairing a kettle?" in text and "Q2. What is a street for?" in text
    assert "Buy a new one, it is cheaper." in text
    assert "\x1b" not in text  # a model's control characters never reach the terminal


def test_side_by_side_shows_the_passages_under_the_partners_answer():
    cited = Citation((Cited("repair/three-tools.md", "Three Tools", "The three tools are a set of hex keys.", 1.0, 9),),
                     grounded=True)
    comparisons = [Comparison("Is it worth repairing a kettle?", "No.", "Yes.", cited),
                   Comparison(OFF_TOPIC_QUESTION, "Arsenal.", "Chelsea.", Citation(), off_topic=True)]
    for width in (100, 60):
        text = side_by_side(comparisons, width)
        assert text.index("Yes.") < text.index("  From your writing:") < text.index("  [1] repair/three-tools.md:9  Three Tools")
        assert '      "The three tools are a set of hex keys."' in text
        assert f"Q2 (off-topic). {OFF_TOPIC_QUESTION}" in text
        assert " ".join(text.split()).endswith(NOT_GROUNDED)  # wrapped to the width when narrow
        assert all(len(line) <= width for line in text.splitlines())


def test_side_by_side_stacked_when_narrow():
    text = side_by_side(COMPARISONS, 60)
    assert "|" not in text
    assert text.index("Base model:") < text.index("Buy a new one") < text.index("Partner:") < text.index("Open it first.")
    assert all(len(line) <= 60 for line in text.splitlines())


def test_quick_demo_end_to_end_on_the_tiny_model(example_ws, tiny_model):
    """Dataset, train, fuse through the real stages, then the partner answers in `chat --prompt`."""
    result = CliRunner().invoke(cli, ["-w", str(example_ws), "demo", "--quick", "--base-model", str(tiny_model)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for n, name in enumerate(["Demo model", "Dataset from examples/pairs.jsonl", "Train: LoRA, 2 iterations",
                              "Fuse into models/", "Base model and partner on 3 held-out questions"], start=1):
        assert f"[{n}/5] {name}" in result.stderr
    assert result.stderr.count("done in ") == 5
    questions = (example_ws / "examples" / "demo_questions.txt").read_text().splitlines()
    for i, q in enumerate(questions, start=1):
        assert f"Q{i}. {q}" in out
    # Each held-out answer is followed by the passages it rests on; the off-topic one by the warning.
    blocks = out.split("\nQ")[1:]
    assert len(blocks) == 4 and blocks[3].startswith(f"4 (off-topic). {OFF_TOPIC_QUESTION}")
    for block, doc in zip(blocks[:3], ["repair/", "streets/", "notebooks/"], strict=True):
        assert "  From your writing:" in block and f"  [1] {doc}" in block and NOT_GROUNDED not in block
    assert f"  {NOT_GROUNDED}" in blocks[3] and "From your writing" not in blocks[3]
    assert "Done in" in out and "Next: talk to the partner with `mlx-partner chat`" in out

    ws = Workspace.at(example_ws)
    runs = [p for p in ws.adapters_dir.iterdir() if (p / "manifest.json").exists() and not p.is_symlink()]
    assert len(runs) == 1
    run = runs[0].name
    fused = ws.models_dir / run
    assert (fused / "config.json").exists() and (fused / "system_prompt.txt").exists()
    assert (fused / "system_prompt.txt").read_text() == (runs[0] / "system_prompt.txt").read_text()
    assert f"models/{run}/" in out

    # chat now talks to the fused model, with the run's system prompt.
    chat = CliRunner().invoke(cli, ["-w", str(example_ws), "chat", "--prompt", "Hello?", "--max-tokens", "5", "--temp", "0"])
    assert chat.exit_code == 0, chat.output
    assert f"Loading run {run} (fused model)" in chat.stderr
    assert chat.stdout.strip()


def _author_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) > 3}


# The demo in its own process, through the fast-BLAS re-exec the console entry uses: in-process
# under pytest, MLX would run on the Linux wheel's reference BLAS, ~40x slower.
REAL_DEMO = """
import json, sys
from mlx_partner.blas import reexec_with_fast_blas
reexec_with_fast_blas()
from mlx_partner.config import Settings
from mlx_partner.demo import run_demo
from mlx_partner.workspace import Workspace
r = run_demo(Workspace.at(sys.argv[1]), Settings(), echo=lambda *a, **k: None)
print(json.dumps({"total": r.timings["total"], "best": r.best_val_loss, "base": r.base_val_loss,
                  "pairs": [[c.base, c.partner] for c in r.comparisons]}))
"""


@pytest.mark.slow
def test_real_demo_on_smollm2(example_ws, demo_home):
    """The full demo on SmolLM2-135M: a lower validation loss, answers moved toward the author."""
    import json
    import subprocess
    import sys

    from mlx_partner.workspace import read_jsonl

    done = subprocess.run([sys.executable, "-c", REAL_DEMO, str(example_ws)], capture_output=True, text=True,
                          timeout=30 * 60)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["best"] < result["base"]
    assert len(result["pairs"]) == 4  # three held-out questions, then the off-topic one
    result["pairs"] = result["pairs"][:3]
    assert sum(partner != base for base, partner in result["pairs"]) >= 2
    # Toward the author: more of the partner's words are words of her hand-written answers.
    pairs, _ = read_jsonl(example_ws / "examples" / "pairs.jsonl")
    author = set().union(*(_author_words(p["answer"]) for p in pairs))

    def share(text: str) -> float:
        words = _author_words(text)
        return len(words & author) / max(1, len(words))

    assert sum(share(partner) for _, partner in result["pairs"]) > sum(share(base) for base, _ in result["pairs"])
