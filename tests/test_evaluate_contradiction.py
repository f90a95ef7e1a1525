"""eval's contradiction measure (evaluate/contradiction.py): negation flips of the author's sentences.
Table tests for the pure rule, then eval on the tiny model with a planted cached answer that turns a
sentence of the essay its pair cites over: counted once, quoted in report.md, recomputed from the
cache without generating again.

    python -m pytest tests/test_evaluate_contradiction.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_partner.evaluate.contradiction import (
    SourceSentence,
    document_sentences,
    her_sentences,
    negation_flips,
    split_sentences,
)

REPO = Path(__file__).resolve().parent.parent
BENCH = "Benches make a street safer."


@pytest.mark.parametrize(("answer", "hers", "flagged"), [
    # the flip, in the ways it is written
    ("Benches do not make a street safer.", BENCH, True),
    ("Benches don't make a street safer.", BENCH, True),
    ("Benches never make a street safer.", BENCH, True),
    ("Nobody thinks benches make a street safer.", BENCH, True),
    (BENCH, "Benches do not make a street safer.", True),  # either side may be the negated one
    ("Benches, in my view, do not make a street safer.", BENCH, True),
    ("I think that benches do not make a street safer.", BENCH, True),
    ("Benches and trees do not make a street safer.", BENCH, True),
    # not a flip
    (BENCH, BENCH, False),  # the same claim
    ("Benches do not make a street safer.", "Benches never make a street safer.", False),  # both negated
    ("Sourdough needs a warm kitchen.", BENCH, False),  # unrelated
    ("Benches are not expensive to build.", BENCH, False),  # low overlap: only "benches" shared
    ("Benches do not make a street safer at night for children walking home.", BENCH, False),  # < 70% of the longer
    ("It is not.", "It is.", False),  # too few content words to say anything
    ("No, benches make a street safer.", BENCH, False),  # an opening "No," answers someone
    ("Benches make a street safer, but they do not fix lighting.", BENCH, False),  # the negation is another clause's
    ("Read them, not the newest ones.", "Read them.", False),
    ("I haven't written about that.", BENCH, False),  # a decline
    ("A street without benches is safer.", BENCH, False),  # "without" is not a negator (module docstring)
])
def test_negation_flips(answer, hers, flagged):
    flips = negation_flips(answer, [SourceSentence(hers, "streets/bench.md:3")])
    assert bool(flips) is flagged
    if flagged:
        assert flips[0].source == hers and flips[0].where == "streets/bench.md:3" and flips[0].overlap >= 0.7


def test_each_answer_sentence_is_paired_with_its_closest_flip():
    hers = [SourceSentence("Benches make a street safer for old people.", "a.md:1"), SourceSentence(BENCH, "a.md:4")]
    flips = negation_flips("I like benches. Benches do not make a street safer. Soup is good.", hers)
    assert [(f.answer, f.where, f.overlap) for f in flips] == [("Benches do not make a street safer.", "a.md:4", 1.0)]


@pytest.mark.parametrize(("text", "expected"), [
    ("One. Two words!  Three?", [(0, "One."), (5, "Two words!"), (17, "Three?")]),
    ("# Title\n\nA line\nwrapped. Next", [(0, "# Title"), (9, "A line wrapped."), (25, "Next")]),
    ("", []),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_document_sentences_carry_their_line():
    assert document_sentences("d.md", "First.\n\nSecond one.\nThird.", first_line=5) == [
        SourceSentence("First.", "d.md:5"), SourceSentence("Second one.", "d.md:7"), SourceSentence("Third.", "d.md:8")]


def test_her_sentences_are_the_cited_document_and_the_top_passages():
    from mlx_partner.retrieval import build_index
    from mlx_partner.sources.documents import load_documents

    documents, _ = load_documents(REPO / "sources")
    texts = {d.id: d.text for d in documents}
    cited = "streets/the-bench-is-an-argument.md"
    hers = her_sentences("How do you repair a bicycle?", [cited], texts, build_index(documents))
    where = {s.where.rsplit(":", 1)[0] for s in hers}
    assert cited in where and "repair/three-tools.md" in where  # the question's passages are another essay's
    assert len(hers) == len(set(hers))
    assert len([s for s in hers if s.where.startswith(cited)]) == len(split_sentences(texts[cited]))


def test_the_authors_own_answers_are_hardly_ever_flagged():
    """She does not contradict herself: her 70 hand-written answers, checked as eval checks a model's,
    flag at most one (the rule's measured false-flip rate, in the module docstring)."""
    from mlx_partner.retrieval import build_index
    from mlx_partner.sources.documents import load_documents

    documents, _ = load_documents(REPO / "sources")
    texts, index = {d.id: d.text for d in documents}, build_index(documents)
    pairs = [json.loads(line) for line in (REPO / "examples" / "pairs.jsonl").read_text().splitlines() if line.strip()]
    flagged = [p["id"] for p in pairs
               if negation_flips(p["answer"], her_sentences(p["question"], p.get("sources") or [], texts, index))]
    assert len(pairs) >= 60 and len(flagged) <= 1, flagged


def _scores(flips: list[bool | None]) -> dict:
    """One model's records: an answer per entry, with a flip (True), none (False) or unchecked (None)."""
    flip = [{"answer": "a", "source": "b", "where": "d.md:1", "overlap": 1.0}]
    answers = {f"k{i}": {"answer": "a", "f1": 0.5, "rouge_l": 0.5, "style": 0.5, "abstained": f is None,
                         "contradictions": None if f is None else flip if f else []} for i, f in enumerate(flips)}
    return {"loss": {}, "answers": answers, "probes": {}, "near_probes": {}}


def test_summary_and_comparison_count_flips_as_n_of_checked():
    from mlx_partner.evaluate.report import CONTRADICTION_ROW, comparison_rows
    from mlx_partner.evaluate.summary import summarize

    old, new = summarize(_scores([True, True, False, None])), summarize(_scores([True, False, False, None]))
    assert (old["contradicted_answers"], old["contradiction_checked"], new["contradicted"]) == (2, 3, pytest.approx(1 / 3))
    rows = comparison_rows({"old": "run-1", "new": "run-2", "old_summary": old, "new_summary": new})
    assert rows[-1] == (CONTRADICTION_ROW, "2/3", "1/3", "run-2")  # fewer is better
    # An eval made before the measure: no row in the comparison, "-" where a count would be.
    before = summarize({**_scores([False]), "answers": {"k": {"answer": "a", "f1": 0.5, "rouge_l": 0.5, "style": 0.5}}})
    assert before["contradiction_checked"] == 0 and before["contradicted"] is None
    rows = comparison_rows({"old": "run-1", "new": "run-2", "old_summary": before, "new_summary": before})
    assert CONTRADICTION_ROW not in [r[0] for r in rows]


# --- eval, on the tiny model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(trained_example_workspace, tmp_path_factory) -> Path:
    """The example workspace with its hand-written pairs (no probes), a dataset and one short run."""
    return trained_example_workspace(tmp_path_factory.mktemp("eval-contradiction") / "ws", iters=1, probes=False)


def _planted_flip(text: str) -> tuple[str, str]:
    """A sentence of her essay and the same sentence with "is" turned into "is not"."""
    for _, sentence in split_sentences(text):
        planted = sentence.replace(" is ", " is not ", 1)
        if planted != sentence and negation_flips(planted, [SourceSentence(sentence, "")]):
            return sentence, planted
    raise AssertionError("no sentence to turn over")


def test_eval_counts_a_planted_flip_from_the_cache_and_quotes_it(trained, monkeypatch):
    import mlx_partner.evaluate.scoring as scoring
    from mlx_partner.cli import cli
    from mlx_partner.config import load_settings
    from mlx_partner.evaluate.run import run_eval
    from mlx_partner.workspace import Workspace

    ws = Workspace.at(trained)
    settings = load_settings(ws.config_path)
    first = run_eval(ws, settings, "run-1", limit=3, probes=1, max_tokens=6, progress=False)
    metrics = first.metrics
    cited = {i["key"]: i["cited"] for i in metrics["retrieval"]["items"]}
    keys = [e["key"] for e in metrics["examples"] if cited.get(e["key"])]
    assert len(keys) >= 2
    flip_key, decline_key = keys[0], keys[1]
    essay = cited[flip_key][0]
    hers, planted = _planted_flip((trained / "sources" / essay).read_text(encoding="utf-8"))
    # Plant the flip, and a decline, in the stored tuned answers: the next eval reuses them.
    stored = json.loads((first.out_dir / "metrics.json").read_text())
    answers = stored["scores"]["tuned"]["answers"]
    answers[flip_key]["answer"] = f"Here is what I think. {planted}"
    answers[decline_key]["answer"] = f"I haven't written about that. {planted}"
    (first.out_dir / "metrics.json").write_text(json.dumps(stored))

    def no_generation(*args, **kwargs):
        raise AssertionError("eval generated again instead of reusing its cached answers")

    monkeypatch.setattr(scoring, "generate_answers", no_generation)
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["-w", str(trained), "eval", "--limit", "3", "--probes", "1",
                                      "--max-tokens", "6", "--quiet"])
    assert result.exit_code == 0, result.output
    again = json.loads((first.out_dir / "metrics.json").read_text())
    tuned = again["scores"]["tuned"]["answers"]
    assert tuned[flip_key]["contradictions"][0]["source"] == " ".join(hers.split())
    assert tuned[flip_key]["contradictions"][0]["where"].startswith(f"{essay}:")
    assert tuned[decline_key]["abstained"] and tuned[decline_key]["contradictions"] is None  # declines unchecked
    summary = again["summary"]["tuned"]
    assert summary["contradicted_answers"] == 1 and summary["contradiction_checked"] == summary["answers"] - 1
    assert again["contradiction"]["min_overlap"] == 0.7
    row = "answers contradicting her writing (negation flips, a lower bound)"
    assert row in result.output and f"1/{summary['contradiction_checked']}" in result.output
    report = (first.out_dir / "report.md").read_text()
    assert "## Contradictions" in report and f"run-1 1/{summary['contradiction_checked']}" in report
    assert f'- answer: "{" ".join(planted.split())}"' in report
    assert f'her writing ({tuned[flip_key]["contradictions"][0]["where"]}): "{" ".join(hers.split())}"' in report
