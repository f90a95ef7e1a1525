"""Eval's decline figures and retrieval measures on fixed answers: no model needed.

Near-domain probes, far probes, false declines on answerable held-out questions, held-out boundary
pairs, quoted spans checked against her writing, retrieval accuracy on the example corpus, and
what report.md, the chart and the `retrain` comparison make of them.

    python -m pytest tests/test_evaluate_declines.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_partner.decline import is_decline
from mlx_partner.evaluate.examples import EvalExample, example_key, load_examples, plain_question
from mlx_partner.evaluate.grounded import quote_record, retrieval_accuracy
from mlx_partner.evaluate.probes import install_probes, read_near_probes
from mlx_partner.evaluate.report import (
    comparison_rows,
    render_report,
    retrieval_line,
    summary_rows,
    write_chart,
)
from mlx_partner.evaluate.run import read_metrics
from mlx_partner.evaluate.summary import compare, summarize
from mlx_partner.retrieval import build_index
from mlx_partner.sources.documents import load_documents
from mlx_partner.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
DECLINE = "I haven't written about that."
ANSWER = "Count the benches on your street."


def _answer(text: str, expects_decline: bool = False, quotes=()) -> dict:
    return {"answer": text, "f1": 0.5, "rouge_l": 0.5, "style": 0.5, "abstained": is_decline(text),
            "expects_decline": expects_decline, "quotes": list(quotes)}


def _probe(text: str) -> dict:
    return {"answer": text, "abstained": is_decline(text)}


def _record(answers: dict, near: dict, far: dict) -> dict:
    return {"loss": {}, "answers": answers, "probes": far, "near_probes": near}


# --- the figures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("answers, near, far, expected", [
    # a partner that declines everything: every probe, and (wrongly) both answerable questions
    ({"a": _answer(DECLINE), "b": _answer(DECLINE), "c": _answer(DECLINE, True)},
     {"n1": _probe(DECLINE), "n2": _probe(DECLINE)}, {"f1": _probe(DECLINE)},
     {"near_declines": 1.0, "grounded": 1.0, "abstained_answerable": 1.0, "boundary_declines": 1.0,
      "answerable": 2, "boundary_answers": 1, "near_probes": 2, "probes": 1}),
    # one that never declines: the far probes' 0/n no longer hides the near-domain failure
    ({"a": _answer(ANSWER), "b": _answer(ANSWER), "c": _answer(ANSWER, True)},
     {"n1": _probe(ANSWER), "n2": _probe(ANSWER)}, {"f1": _probe(ANSWER)},
     {"near_declines": 0.0, "grounded": 0.0, "abstained_answerable": 0.0, "boundary_declines": 0.0}),
    # the goal: declines near and far, answers what she wrote about
    ({"a": _answer(ANSWER), "b": _answer(ANSWER), "c": _answer(DECLINE, True)},
     {"n1": _probe(DECLINE), "n2": _probe("That's not something I've written about.")}, {"f1": _probe(DECLINE)},
     {"near_declines": 1.0, "grounded": 1.0, "abstained_answerable": 0.0, "boundary_declines": 1.0}),
    # half of each; no held-out boundary pair and no near probes: None, not 0
    ({"a": _answer(ANSWER), "b": _answer(DECLINE)}, {}, {"f1": _probe(DECLINE), "f2": _probe(ANSWER)},
     {"near_declines": None, "grounded": 0.5, "abstained_answerable": 0.5, "boundary_declines": None,
      "near_probes": 0, "boundary_answers": 0}),
])
def test_decline_figures(answers, near, far, expected):
    summary = summarize(_record(answers, near, far))
    for key, value in expected.items():
        assert summary[key] == value, key


def test_a_version_1_record_reads_as_all_answerable():
    # Records written before boundary pairs existed have no expects_decline: every answer counts.
    record = {"loss": {}, "answers": {"a": {"answer": DECLINE, "f1": 0, "rouge_l": 0, "style": 0, "abstained": True}},
              "probes": {"f": _probe(ANSWER)}}
    summary = summarize(record)
    assert summary["abstained_answerable"] == 1.0 and summary["near_probes"] == 0 and summary["quotes_verified"] is None


@pytest.mark.parametrize("quotes, spans, share", [
    ([], 0, None),
    ([{"text": "x", "verified": True}], 1, 1.0),
    ([{"text": "x", "verified": True}, {"text": "y", "verified": False}], 2, 0.5),
])
def test_quote_share(quotes, spans, share):
    summary = summarize(_record({"a": _answer(ANSWER, quotes=quotes)}, {}, {}))
    assert summary["quote_spans"] == spans and summary["quotes_verified"] == share


def test_compare_counts_only_the_probes_both_runs_were_asked():
    old = {"run": "r1", "scores": {"tuned": _record({"a": _answer(ANSWER)}, {"n1": _probe(ANSWER)}, {"f1": _probe(DECLINE)})}}
    new = {"run": "r2", "scores": {"tuned": _record({"a": _answer(ANSWER)},
                                                    {"n1": _probe(DECLINE), "n2": _probe(ANSWER)}, {"f1": _probe(DECLINE)})}}
    out = compare(old, new)
    assert out["shared_probes"] == 2
    assert out["old_summary"]["near_declines"] == 0.0 and out["new_summary"]["near_declines"] == 1.0  # n2 left out
    rows = {r[0]: r for r in comparison_rows(out)}
    assert rows["declines near-domain probes"] == ("declines near-domain probes", "0.000", "1.000", "r2")
    assert rows["false declines (answerable)"][3] == ""  # the same: no verdict


# --- quotes and retrieval -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def documents():
    return load_documents(REPO / "sources")[0]


VERBATIM = "the number of public benches on a street is the most honest single measure of whether a city wants people on it"


@pytest.mark.parametrize("answer, expected", [
    (f'I wrote that "{VERBATIM}".', [True]),
    (f'I wrote that "{VERBATIM.replace("most honest", "least reliable")}".', [False]),
    ('Not the word "liveable" in the plan.', []),  # a term in quotes, not a quotation
    (f'“{VERBATIM}” and "benches are a human right for every citizen"', [True, False]),
    ("No quotes at all.", []),
])
def test_quoted_spans_are_checked_against_her_writing(answer, expected, documents):
    assert [q["verified"] for q in quote_record(answer, [d.text for d in documents])] == expected


def test_the_question_quoted_back_is_not_a_quotation_of_her(documents):
    question = "Why do you say benches are a human right for every citizen?"
    answer = 'You ask why "benches are a human right for every citizen": I never said it.'
    assert quote_record(answer, [d.text for d in documents], question) == []


def _examples_from_pairs(rows: list[dict]) -> list[EvalExample]:
    out = []
    for r in rows:
        messages = ({"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]})
        out.append(EvalExample(example_key(messages), "test", messages, r["type"], tuple(r["sources"])))
    return out


def test_retrieval_accuracy_on_the_example_corpus(documents):
    rows = [json.loads(line) for line in (REPO / "examples" / "pairs.jsonl").read_text().splitlines() if line.strip()]
    index = build_index(documents, answerable=[r["question"] for r in rows if r["type"] != "boundary"])
    result = retrieval_accuracy(index, _examples_from_pairs(rows))
    # Boundary pairs are left out (their question is, by design, not answered by any essay).
    assert result["questions"] == sum(1 for r in rows if r["type"] != "boundary") == 60
    assert result["hits"] == 55 and result["accuracy"] == pytest.approx(55 / 60)  # measured, question alone
    assert all(i["top"].split(":")[0] in i["cited"] for i in result["items"] if i["hit"])


def test_passages_before_the_question_are_not_part_of_it():
    rag = "Passages from your writing:\n[1] The Bench (streets/b.md): text\n\nQuestion: Why benches?"
    assert plain_question(rag) == "Why benches?"
    assert plain_question("Why benches?") == "Why benches?"


# --- reading the files --------------------------------------------------------------------------------


@pytest.mark.parametrize("lines, questions, skipped", [
    ([{"version": 1, "id": "p1", "question": "What about Dieter Rams?"}], ["What about Dieter Rams?"], []),
    (["not json", {"id": "p2"}, {"version": 9, "question": "Later?"}], [],
     ["line 1: not valid JSON", "line 2: no question", "line 3: version 9 (this mlx-partner reads up to 1)"]),
    ([{"question": "Rams?"}, {"question": "  rams? "}], ["Rams?"], ["line 2: the same question as an earlier line"]),
])
def test_read_near_probes(tmp_path, lines, questions, skipped):
    path = tmp_path / "probes.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    found = read_near_probes(path)
    assert found.questions == questions and found.skipped == skipped and found.present


def test_no_probes_file_is_no_near_probes(tmp_path):
    found = read_near_probes(tmp_path / "probes.jsonl")
    assert not found.present and found.questions == []


def test_examples_take_kind_and_sources_from_the_manifest_line_for_line(tmp_path):
    path = tmp_path / "test.jsonl"
    rows = [("Why benches?", ANSWER), ("What about Rams?", DECLINE)]
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                            + "\n" for q, a in rows))
    meta = [{"id": "a", "kind": "genuine", "sources": ["streets/b.md"]}, {"id": "b", "kind": "boundary", "sources": []}]
    ex = load_examples(path, "test", meta)
    assert [(e.kind, e.sources, e.expects_decline) for e in ex] == [("genuine", ("streets/b.md",), False),
                                                                     ("boundary", (), True)]
    # Lines and records disagree: the manifest is not used; a declining reference marks a boundary pair.
    ex = load_examples(path, "test", meta[:1])
    assert [(e.kind, e.sources, e.expects_decline) for e in ex] == [("", (), False), ("", (), True)]


def test_read_metrics_fills_in_a_version_1_file(tmp_path):
    ws = Workspace.at(tmp_path)
    (ws.eval_dir / "r1").mkdir(parents=True)
    (ws.eval_dir / "r1" / "metrics.json").write_text(json.dumps({"run": "r1", "scores": {"tuned": {"probes": {}}}}))
    metrics = read_metrics(ws, "r1")
    assert metrics["version"] == 1 and metrics["scores"]["tuned"]["near_probes"] == {}


# --- report.md, the chart, the CLI's rows -------------------------------------------------------------


def _metrics() -> dict:
    base = _record({"a": _answer(ANSWER), "b": _answer(DECLINE, True)}, {"n1": _probe(ANSWER)}, {"f1": _probe(ANSWER)})
    tuned = _record({"a": _answer(ANSWER), "b": _answer(DECLINE, True)}, {"n1": _probe(DECLINE)}, {"f1": _probe(DECLINE)})
    for r in (base, tuned):
        r["loss"] = {"a": {"loss_sum": 2.0, "tokens": 2, "split": "test"}, "v": {"loss_sum": 1.0, "tokens": 1, "split": "valid"}}
    items = [{"key": "a", "question": "Why benches?", "cited": ["streets/b.md"], "top": "streets/b.md:3", "hit": True}]
    return {
        "version": 2, "run": "r1", "base_model": "m", "created": "2026-12-01T09:00:00Z",
        "settings": {"seed": 0, "max_tokens": 8},
        "summary": {"base": summarize(base), "tuned": summarize(tuned)}, "reference_style": 0.5,
        "examples": [{"key": "a", "split": "test", "question": "Why benches?", "reference": ANSWER},
                     {"key": "b", "split": "test", "question": "Rams?", "reference": DECLINE}],
        "scores": {"base": base, "tuned": tuned},
        "retrieval": {"questions": 1, "hits": 1, "accuracy": 1.0, "items": items,
                      "probes": {"threshold": 0.26, "probes": 1, "covered": 0}},
    }


def test_report_shows_the_three_decline_figures_for_base_and_tuned(tmp_path):
    metrics = _metrics()
    rows = {name: (b, t) for name, b, t in summary_rows(metrics)}
    assert rows["declines near-domain probes"] == ("0/1", "1/1")
    assert rows["declines far probes"] == ("0/1", "1/1")
    assert rows["false declines: answerable held-out (lower is better)"] == ("0/1", "0/1")
    assert rows["declines held-out boundary pairs"] == ("1/1", "1/1")
    report = render_report(metrics)
    for heading in ("## Near-domain probes", "## Far probes", "## Retrieval", "boundary: the author declines"):
        assert heading in report
    assert "1/1 held-out questions (100%" in retrieval_line(metrics)
    write_chart(tmp_path / "chart.png", metrics)
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_demo_installs_the_example_probes_unless_there_are_some(tmp_path):
    ws = Workspace.at(tmp_path)
    ws.data_dir.mkdir()
    example = REPO / "examples" / "probes.jsonl"
    assert install_probes(ws, example) == ws.data_dir / "probes.jsonl"
    assert len(read_near_probes(ws.data_dir / "probes.jsonl").questions) == 12
    (ws.data_dir / "probes.jsonl").write_text('{"version": 1, "question": "Generated?"}\n')
    assert install_probes(ws, example) is None  # generate's file stays
    assert read_near_probes(ws.data_dir / "probes.jsonl").questions == ["Generated?"]
    assert install_probes(Workspace.at(tmp_path / "other"), tmp_path / "missing.jsonl") is None
