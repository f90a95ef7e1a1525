"""The example workspace's hand-written data: boundary pairs and near-domain probes, checked the way
`generate` checks its own (quotes verbatim, questions absent from her writing), and retrieval on
the 60 answerable questions.

    python -m pytest tests/test_examples.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_partner.decline import is_decline
from mlx_partner.evaluate.probes import read_near_probes
from mlx_partner.grounding import QuestionIndex, quote_in_document
from mlx_partner.retrieval import build_index
from mlx_partner.sources.documents import load_documents

REPO = Path(__file__).resolve().parent.parent
PAIRS = [json.loads(line) for line in (REPO / "examples" / "pairs.jsonl").read_text().splitlines() if line.strip()]
BOUNDARY = [p for p in PAIRS if p["type"] == "boundary"]
ANSWERED = [p for p in PAIRS if p["type"] != "boundary"]
PROBES = [json.loads(line) for line in (REPO / "examples" / "probes.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def documents():
    return {d.id: d for d in load_documents(REPO / "sources")[0]}


@pytest.fixture(scope="module")
def index(documents):
    """BM25 over every essay, its threshold calibrated on the 60 answerable questions (as generate does)."""
    return build_index(list(documents.values()), answerable=[p["question"] for p in ANSWERED])


def test_the_example_has_60_answered_and_about_ten_boundary_pairs():
    assert len(ANSWERED) == 60 and 8 <= len(BOUNDARY) <= 12
    assert {p["theme"] for p in BOUNDARY} == {"streets", "notebooks", "bread", "repair"}
    assert len({p["id"] for p in PAIRS}) == len(PAIRS)


@pytest.mark.parametrize("pair", BOUNDARY, ids=lambda p: p["id"])
def test_boundary_pairs_decline_and_point_with_verbatim_quotes(pair, documents, index):
    assert is_decline(pair["answer"])
    first = pair["answer"].split(". ")[0]
    assert is_decline(first), first  # the decline comes first, before any pointer
    for quote in pair["quotes"]:
        assert quote["source"] in pair["sources"]
        assert quote_in_document(quote["text"], documents[quote["source"]].text), quote
        assert quote["text"] in pair["answer"]  # the pointer quotes her, word for word
    coverage = index.coverage(pair["question"])
    assert coverage < index.threshold, (pair["question"], coverage, index.threshold)
    assert pair["coverage"] == pytest.approx(coverage, abs=1e-3) and pair["threshold"] == pytest.approx(index.threshold)


def test_one_boundary_pair_points_at_nothing():
    assert any(not p["quotes"] and not p["sources"] for p in BOUNDARY)  # nothing she wrote is near


def test_probes_file_is_generates_format_and_reads_back():
    assert len(PROBES) == 12
    for record in PROBES:
        assert set(record) == {"version", "id", "question", "coverage", "threshold", "model", "prompt_version", "created"}
        assert record["version"] == 1
    read = read_near_probes(REPO / "examples" / "probes.jsonl")
    assert read.questions == [p["question"] for p in PROBES] and read.skipped == []


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p["id"])
def test_probes_are_absent_from_her_writing(probe, index):
    coverage = index.coverage(probe["question"])
    assert coverage < index.threshold, (probe["question"], coverage)


def test_probes_overlap_no_pair():
    seen = QuestionIndex()
    for p in PAIRS:
        seen.add(p["question"], p["id"])
    assert [p["question"] for p in PROBES if seen.find(p["question"])] == []


def test_the_top_passage_is_from_the_cited_essay_for_most_answerable_questions(index):
    # Measured: 55 of 60 (92%), with the question alone. The bar is [grounded-chat]'s 80%, and a
    # little more: a change that loses more than two of these is a regression worth seeing.
    hits = sum(1 for p in ANSWERED if (top := index.search(p["question"], k=1)) and top[0].passage.doc_id in p["sources"])
    assert hits >= 53, hits
