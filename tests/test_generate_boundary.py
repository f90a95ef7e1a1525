"""Boundary pairs and probes, pure: what reads as a decline, the absence check on the example
corpus, the boundary round's plan and request, and the review of boundary pairs and probes.

    python -m pytest tests/test_generate_boundary.py -q -s     # -s prints the absence threshold
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_partner.config import GenerateSettings
from mlx_partner.decline import is_decline, opens_with_decline, says_not_written
from mlx_partner.generate.boundary import AbsenceCheck, absence_check, answerable_questions
from mlx_partner.generate.ledger import plan_generation
from mlx_partner.generate.probes import (
    PROBE_TOOL,
    PROBES_VERSION,
    build_probe_request,
    candidates_for,
    review_probes,
)
from mlx_partner.generate.replies import Context, review_pairs
from mlx_partner.generate.requests import (
    boundary_count,
    build_request,
    normalise_mix,
    plan_rounds,
)
from mlx_partner.grounding import QuestionIndex, check_pair
from mlx_partner.sources.documents import Batch, Chunk, Document, load_documents

REPO = Path(__file__).resolve().parent.parent

# --- what reads as a decline (decline.py) -------------------------------------------------------


@pytest.mark.parametrize(
    "answer, declines, opens, not_written",
    [
        # boundary answers as a generator writes them: declined up front
        ("I haven't written about that.", True, True, True),
        ("I haven't written about rye. The nearest I came is the starter essay.", True, True, True),
        ("That's not something I've written about, and I'd rather not guess.", True, True, True),
        ("Honestly? I've not written about Zettelkasten at all.", True, True, True),
        ("I've never written about kintsugi, though I did write about glue.", True, True, True),
        ("Good question, but it's not one I've written about.", True, True, True),
        ("My essays don't go into Le Corbusier; what I wrote about is desire lines.", True, True, True),
        ("My writing is silent on congestion pricing.", True, True, True),
        ("I haven't put anything on paper about einkorn.", True, True, True),
        ("That's outside what I've written. I wrote about benches instead.", True, True, True),
        ("I don\u2019t have a settled view on Montessori schools, and I haven't written about them.", True, True, True),
        ("I haven't really thought about opera.", True, True, False),
        ("Honestly, I don't know.", True, True, False),
        ("I'd rather not guess at that one.", True, True, False),
        # positions, not declines
        ("I think congestion pricing is right, and I would charge more.", False, False, False),
        ("Benches. Count them on your street and you have your answer.", False, False, False),
        ("You do not know which change helped, which hurt, and which did nothing at all.", False, False, False),
        ("I have written about glue before.", False, False, False),
        # a position first, a decline after it: not a boundary answer
        ("Cities should fund repair cafes. I haven't written about funding, but I'd say yes.", True, False, True),
    ],
)
def test_what_reads_as_a_decline(answer, declines, opens, not_written):
    assert is_decline(answer) is declines
    assert opens_with_decline(answer) is opens
    assert says_not_written(answer) is not_written


# --- the absence check on the example corpus (12 essays, 4 themes) ------------------------------

# Questions the example essays answer (their hand-written pairs ask them).
ANSWERED = [
    "What is your screwdriver test?",
    "Why do you say that glue is a confession?",
    "What tools do you think everyone should own?",
    "Why do you call armrests in the middle of benches a confession?",
    "What is a beg button, and why do you object to it?",
    "What is a desire line, and why do you call it a draft?",
    "Why did you stop highlighting your readings?",
    "What is your one-sentence rule for reading?",
    "What's wrong with reading AI summaries of the week's assigned readings?",
    "Why do you call a sourdough starter a calendar?",
    "Why do you say the ugly loaf is where the information is?",
    "What do you write in your bake log?",
]
# Near-domain questions a reader of these essays might ask next, which no essay answers.
NEAR_DOMAIN = [
    "What do you think of Niklas Luhmann's Zettelkasten?",
    "How do you feel about Marie Kondo's decluttering?",
    "What would you say about Ivan Illich's Tools for Conviviality?",
    "What do you make of kintsugi, mending pottery with gold?",
    "Do you have a view on wabi-sabi?",
    "What is your view of Le Corbusier's towers in the park?",
    "What do you think of Haussmann's boulevards in Paris?",
    "What's your view on congestion pricing?",
    "Have you read Jane Jacobs on the ballet of the sidewalk?",
    "What do you think of Chad Robertson's Tartine method?",
    "How do you approach baking with einkorn?",
    "What do you think of Cal Newport's Deep Work?",
]


@pytest.fixture(scope="module")
def example_check() -> AbsenceCheck:
    """Calibrated as a run calibrates: on the answer kinds' questions of the example pairs."""
    docs, _ = load_documents(REPO / "sources")
    pairs = [json.loads(line) for line in (REPO / "examples" / "pairs.jsonl").read_text().splitlines() if line.strip()]
    check = absence_check(docs, answerable_questions(pairs))
    print(f"\nexample corpus: {len(docs)} documents, {len(check.index.passages)} passages; {check.describe()}")
    return check


@pytest.mark.parametrize("question", ANSWERED)
def test_questions_the_essays_answer_are_answerable(example_check, question):
    coverage, hit = example_check.score(question)
    print(f"answered  {coverage:.2f} >= {example_check.threshold:.2f}  {question}")
    assert example_check.answers(question), (coverage, example_check.threshold)
    assert hit is not None


@pytest.mark.parametrize("question", NEAR_DOMAIN)
def test_near_domain_questions_the_essays_leave_open_pass_as_boundary(example_check, question):
    coverage, _ = example_check.score(question)
    print(f"boundary  {coverage:.2f} <  {example_check.threshold:.2f}  {question}")
    assert not example_check.answers(question), (coverage, example_check.threshold)


def test_the_threshold_is_calibrated_on_the_answer_kinds_only(example_check):
    cal = example_check.calibration
    assert cal["method"] == "p10" and cal["questions"] >= 50  # the boundary pairs of examples/ left out
    assert 0.15 <= example_check.threshold < cal["median_answerable"]
    few = absence_check(load_documents(REPO / "sources")[0], ANSWERED[:4])
    assert few.calibration["method"] == "default" and "the default" in few.describe()


def test_fake_server_topics_are_absent_from_the_example_corpus(example_check):
    from fake_boundary import ADJECTIVES, BOUNDARY_TEMPLATES, NOUNS, PROBE_TEMPLATES

    words = {w for p in example_check.index.passages for w in p.text.lower().split()}
    assert not (set(ADJECTIVES) | set(NOUNS)) & words
    for template in BOUNDARY_TEMPLATES + PROBE_TEMPLATES:
        assert not example_check.answers(template.format(t=f"{ADJECTIVES[0]} {NOUNS[0]}"))


# --- plans and requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, mix, expected",
    [
        (16, {"genuine": 0.44, "scenario": 0.22, "pushback": 0.22, "boundary": 0.12}, 2),
        (40, {"genuine": 0.44, "scenario": 0.22, "pushback": 0.22, "boundary": 0.12}, 5),
        (8, {"genuine": 0.44, "scenario": 0.22, "pushback": 0.22, "boundary": 0.12}, 1),
        (2, {"genuine": 0.44, "scenario": 0.22, "pushback": 0.22, "boundary": 0.12}, 0),
        (16, {"genuine": 1.0}, 0),
        (16, {"boundary": 1.0}, 16),
        (10, {"genuine": 1.0, "boundary": 1.0}, 5),
    ],
)
def test_boundary_count(n, mix, expected):
    assert boundary_count(n, normalise_mix(mix)) == expected


def _doc(doc_id: str, text: str) -> Document:
    return Document(doc_id, Path(doc_id), text, doc_id.split("/")[-1], doc_id.split("/")[0], None, len(text.split()),
                    len(text) // 4, "sha-" + doc_id)


BREAD = ("Here is my claim: the ugly loaf is where the information is. A good loaf tells you that many things "
         "went right at once. A bad loaf tells you, with unusual precision, that one thing went wrong.")
REPAIR = "Every repair starts with the screwdriver test. If you cannot open it, you do not own it."
DOCS = {d.id: d for d in (_doc("bread/ugly.md", BREAD), _doc("repair/tools.md", REPAIR))}


def _batch() -> Batch:
    chunks = tuple(Chunk(d.id, 0, len(d.text), d.text, len(d.text) // 4) for d in DOCS.values())
    return Batch("bread", "bread", chunks, sum(c.tokens for c in chunks), "b" * 64)


def test_boundary_pairs_come_last_in_a_round_of_their_own():
    mix = normalise_mix(GenerateSettings().mix)
    rounds = plan_rounds(_batch(), 40, 8, mix)
    assert [r.n_pairs for r in rounds] == [8, 8, 8, 8, 3, 5]
    assert [r.boundary for r in rounds] == [False] * 5 + [True]
    assert all(k != "boundary" for r in rounds[:-1] for k, _ in r.kinds)
    # more boundary pairs than a round holds: more boundary rounds, still last
    many = plan_rounds(_batch(), 20, 4, normalise_mix({"genuine": 1, "boundary": 1}))
    assert [(r.boundary, r.n_pairs) for r in many] == [(False, 4), (False, 4), (False, 2), (True, 4), (True, 4), (True, 2)]
    # boundary=0 in the mix: none at all
    assert not any(r.boundary for r in plan_rounds(_batch(), 16, 8, normalise_mix({"genuine": 1, "scenario": 1})))


def test_the_boundary_round_lists_every_question_asked_and_says_how_to_decline():
    batch = _batch()
    rnd = plan_rounds(batch, 16, 8, normalise_mix(GenerateSettings().mix))[-1]
    params = build_request(rnd, batch, DOCS, "I am Oona.", ["Why bake?", "Why repair?"], model="m", max_tokens=100, mode="tool")
    text = params["messages"][0]["content"][1]["text"]
    assert f"Round {rnd.index + 1} of {rnd.of} for this batch: boundary pairs." in text
    assert "Pairs to write: 2 (boundary: 2)." in text and "do NOT answer" in text
    assert "- Why bake?" in text and "- Why repair?" in text
    assert "haven't written" in text and "leave \"quotes\" and \"sources\" empty" in text
    # the prefix (tools, system, documents) is the answer rounds' own: read from the cache
    first = build_request(plan_rounds(batch, 16, 8, normalise_mix(GenerateSettings().mix))[0], batch, DOCS, "I am Oona.", [],
                          model="m", max_tokens=100, mode="tool")
    assert first["tools"] == params["tools"] and first["system"] == params["system"]
    assert first["messages"][0]["content"][0] == params["messages"][0]["content"][0]
    item = params["tools"][0]["input_schema"]["properties"]["pairs"]["items"]
    assert "boundary" in item["properties"]["type"]["enum"] and "minItems" not in item["properties"]["quotes"]


def test_plan_generation_keeps_the_boundary_share_per_batch():
    plans = plan_generation([_batch()], {}, {}, GenerateSettings(pairs_total=40))
    assert sum(r.n_pairs for r in plans[0].rounds if r.boundary) == 5


# --- reviewing boundary pairs ------------------------------------------------------------------


def _boundary(question: str = "What do you make of kintsugi?", answer: str | None = None, quote: str | None = "the ugly loaf is where the information is",
              doc: str = "bread/ugly.md", **over) -> dict:
    pointer = f" What I did write is that {quote}." if quote else ""
    raw = {"type": "boundary", "question": question,
           "answer": answer or f"I haven't written about kintsugi.{pointer}",
           "sources": [doc] if quote else [], "quotes": [{"source": doc, "text": quote}] if quote else []}
    raw.update(over)
    return raw


@pytest.fixture(scope="module")
def small_check() -> AbsenceCheck:
    return absence_check(list(DOCS.values()), [])


@pytest.mark.parametrize(
    "raw, code",
    [
        (_boundary(), None),
        (_boundary(quote=None), None),  # nothing near: no pointer, no quotes
        ({k: v for k, v in _boundary(quote=None).items() if k not in ("quotes", "sources")}, None),
        (_boundary(question="Why is the ugly loaf where the information is?"), "answerable"),
        (_boundary(answer="I think kintsugi is beautiful: the ugly loaf is where the information is."), "not-a-decline"),
        (_boundary(quote="the ugly loaf is a work of art and a lesson in patience"), "invented-quote"),
        (_boundary(doc="bread/elsewhere.md"), "wrong-source"),
        (_boundary(answer="I haven't written about kintsugi. I like gold."), "unsupported-answer"),
        (_boundary(type="genuine"), "bad-type"),  # a boundary round takes boundary pairs only
        (_boundary(question=""), "missing-field"),
    ],
)
def test_review_of_a_boundary_round(small_check, raw, code):
    batch = _batch()
    rnd = plan_rounds(batch, 8, 8, normalise_mix({"boundary": 1.0}))[0]
    [(record, why)] = review_pairs([raw], batch, rnd, Context("m", {}), QuestionIndex(), absence=small_check)
    assert (why.code if why else None) == code, why
    if code is None:
        assert record["type"] == "boundary" and record["coverage"] < record["threshold"] == small_check.threshold
        assert record["quotes"] == raw.get("quotes", []) and record["sources"] == raw.get("sources", [])


def test_boundary_pairs_in_an_answer_round_and_declines_as_answers_are_rejected():
    batch = _batch()
    rnd = plan_rounds(batch, 8, 8, normalise_mix({"genuine": 1.0}))[0]
    genuine = {"type": "genuine", "question": "What is the ugly loaf?", "sources": ["bread/ugly.md"],
               "quotes": [{"source": "bread/ugly.md", "text": "the ugly loaf is where the information is"}]}
    raws = [_boundary(), {**genuine, "answer": "I haven't written about that, though the ugly loaf is where the information is."},
            {**genuine, "question": "Why the ugly one?", "answer": "I mean that the ugly loaf is where the information is."}]
    reviewed = review_pairs(raws, batch, rnd, Context("m", {}), QuestionIndex())
    assert [why.code if why else None for _, why in reviewed] == ["bad-type", "declines", None]


def test_a_boundary_pair_that_repeats_a_probe_is_held_out(small_check):
    batch = _batch()
    rnd = plan_rounds(batch, 8, 8, normalise_mix({"boundary": 1.0}))[0]
    probes = QuestionIndex()
    probes.add("What do you make of kintsugi?", "probes")
    [(_, why)] = review_pairs([_boundary()], batch, rnd, Context("m", {}), QuestionIndex(), absence=small_check, held_out=probes)
    assert why is not None and why.code == "held-out"


def test_check_pair_keeps_the_answer_kinds_strict():
    assert check_pair({**_boundary(), "type": "genuine", "sources": [], "quotes": []},
                      {"bread/ugly.md": BREAD}).code == "missing-field"


# --- probes ---------------------------------------------------------------------------------------


def test_probe_request_lists_documents_and_questions_and_forces_its_tool():
    params = build_probe_request(DOCS, "I am Oona.", ["Why bake?"], ["What of kintsugi?"], candidates_for(16),
                                 model="m", max_tokens=1000, mode="tool")
    assert candidates_for(16) == 24 and params["tool_choice"] == {"type": "tool", "name": PROBE_TOOL}
    outline, ask = (b["text"] for b in params["messages"][0]["content"])
    assert '<document id="bread/ugly.md" title="ugly.md" theme="bread">' in outline
    assert "Probe questions to write: 24." in ask and "- Why bake?" in ask and "- What of kintsugi?" in ask
    assert "I am Oona." in params["system"][0]["text"] and "do NOT answer" in params["system"][0]["text"]
    json_mode = build_probe_request(DOCS, "p", [], [], 4, model="m", max_tokens=100, mode="json", retry_note="cut off")
    assert "tools" not in json_mode and '{"questions"' in json_mode["messages"][0]["content"][1]["text"]


def test_review_probes(small_check):
    pairs = QuestionIndex()
    pairs.add("What do you make of wabi-sabi?")
    candidates = [{"question": "What do you make of kintsugi?"}, "Have you read Ivan Illich?",
                  {"question": "Why is the ugly loaf where the information is?"}, {"question": "  "},
                  {"question": "So what do you make of kintsugi?"}, {"question": "What do you make of wabi-sabi?"},
                  {"question": "Do you know Dieter Rams?"}]
    accepted, rejected = review_probes(candidates, small_check, pairs, 2, model="m", created="2026-12-01T00:00:00Z")
    assert [p["question"] for p in accepted] == ["What do you make of kintsugi?", "Have you read Ivan Illich?"]
    assert set(accepted[0]) == {"version", "id", "question", "coverage", "threshold", "model", "prompt_version", "created"}
    assert accepted[0]["version"] == PROBES_VERSION and accepted[0]["threshold"] == small_check.threshold
    assert [(r["position"], r["reason"]) for r in rejected] == [(2, "answerable"), (3, "missing-field"), (4, "duplicate"), (5, "duplicate")]
    # the last candidate is spare (two were wanted): neither kept nor rejected
