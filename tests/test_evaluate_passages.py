"""[grounded-chat] eval of a run trained with passages (`[dataset] passages = true`): every question,
held-out and probe, is asked as `chat --rag` asks it, and metrics.json, report.md and the printed
summary say so. On the example corpus and the tiny model.

    python -m pytest tests/test_evaluate_passages.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.evaluate.examples import EvalExample, carries_passages, plain_question
from mlx_partner.prompts import RAG_HEADER, with_passages
from mlx_partner.retrieval import Passage

SYSTEM = "You are the author."
PASSAGE = Passage("streets/bench.md", "The Bench", 1, 0, 23, "A bench is an argument.")
ASKED = with_passages("Why count benches?", [PASSAGE])


@pytest.mark.parametrize(("question", "plain", "carries"), [
    ("Why count benches?", "Why count benches?", False),
    (ASKED, "Why count benches?", True),
    # A template with no system role folds the system prompt in front of the passages.
    (f"{SYSTEM}\n\n{ASKED}", "Why count benches?", True),
    (f"{SYSTEM}\n\nWhy count benches?", f"{SYSTEM}\n\nWhy count benches?", False),
])
def test_plain_question_and_carries_passages(question, plain, carries):
    ex = EvalExample("k", "test", ({"role": "user", "content": question}, {"role": "assistant", "content": "A."}))
    assert plain_question(question) == plain
    assert carries_passages([ex]) is carries


def _invoke(ws: Path, *args: str):
    return CliRunner().invoke(cli, ["-w", str(ws), *args])


@pytest.fixture(scope="module")
def passages_ws(trained_example_workspace, tmp_path_factory) -> Path:
    """The example workspace, its dataset built with passages, one short run (rag) on the tiny model
    (max_seq_length left at its default: the passages make the examples long)."""
    return trained_example_workspace(tmp_path_factory.mktemp("eval-passages") / "ws", iters=1,
                                     max_seq_length=None, extra_toml="\n[dataset]\npassages = true\n", run="rag")


def test_a_passages_run_is_asked_every_question_as_chat_rag_asks_it(passages_ws, tiny_model, monkeypatch):
    import mlx_partner.evaluate.scoring as scoring
    from mlx_partner.chat.index import open_citer
    from mlx_partner.chat.session import ChatSession
    from mlx_partner.chat.target import resolve_target
    from mlx_partner.config import load_settings
    from mlx_partner.evaluate.run import run_eval
    from mlx_partner.models import load_model
    from mlx_partner.workspace import Workspace

    sent: list[list[int]] = []
    real = scoring.generate_answers

    def spy(model, tokenizer, prompts, max_tokens):
        sent.extend(list(p) for p in prompts)
        return real(model, tokenizer, prompts, max_tokens)

    monkeypatch.setattr(scoring, "generate_answers", spy)
    ws = Workspace.at(passages_ws)
    result = run_eval(ws, load_settings(ws.config_path), "rag", limit=3, probes=2, near_probes=2, max_tokens=4,
                      loss_limit=2, progress=False)
    metrics = result.metrics
    assert metrics["passages"]["in_prompt"] is True and metrics["passages"]["per_question"] == 3
    tuned = metrics["scores"]["tuned"]
    questions = ([ex["question"] for ex in metrics["examples"]] + list(tuned["probes"]) + list(tuned["near_probes"]))
    assert len(questions) == 3 + 2 + 2 and not any(RAG_HEADER in q for q in questions)

    # What chat --rag sends for each question: its citer's passages, through the chat session.
    target = resolve_target(ws, run="rag")
    citer = open_citer(ws, target, rag=True)
    lm = load_model(tiny_model)
    session = ChatSession(lm.model, lm.tokenizer, target.system_prompt, max_tokens=4, window=4096)
    for question in questions:
        chat_rag = session.encode([], with_passages(question, citer.context(question)))
        assert sent.count(chat_rag) == 2, f"base and tuned were not asked {question!r} as chat --rag asks it"
        assert session.encode([], question) not in sent  # no question without its passages

    report = (result.out_dir / "report.md").read_text()
    assert "Passages in the prompt: the run was trained with passages" in report
    assert "## Answers" in report and RAG_HEADER not in report.split("## Answers", 1)[1].split("## ", 1)[0]
    printed = _invoke(passages_ws, "eval", "--run", "rag", "--limit", "3", "--probes", "2", "--near-probes", "2",
                      "--max-tokens", "4", "--loss-limit", "2", "--quiet")
    assert printed.exit_code == 0, printed.output
    assert "Passages in the prompt" in printed.output

