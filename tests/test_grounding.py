"""Table tests for the grounding checks: quotes, sources, fields, answers, near-duplicates."""

from __future__ import annotations

import pytest

from mlx_partner.grounding import (
    QuestionIndex,
    check_pair,
    content_words,
    normalise,
    quote_in_document,
    quote_score,
    similarity,
)

DOC = (
    "The number of benches on a street is the most honest measure of whether a city wants people on it.\n"
    'Armrests in the middle of benches are a "confession" \u2014 they tell you who is not welcome.\n'
    "I counted 41 benches on my walk to the library, and I did not count a single drinking fountain.\n"
    "It's not that the council hates people; it's that nobody on the council walks."
)


@pytest.mark.parametrize(
    "quote, ok",
    [
        ("The number of benches on a street is the most honest measure of whether a city wants people on it.", True),
        # typography and layout: curly quotes, dashes, case, whitespace, line breaks, final stop
        ("Armrests in the middle of benches are a \u201cconfession\u201d -- they tell you who is not welcome", True),
        ("armrests in the MIDDLE of benches are a 'confession' - they tell you who is not welcome.", True),
        ("The number of benches on a street\n   is the most honest measure", True),
        ("It\u2019s not that the council hates people", True),
        # small differences: a typo, a dropped comma, a fixed spelling
        ("The number of benchs on a street is the most honest measure of whether a city wants people on it.", True),
        ("I counted 41 benches on my walk to the library and I did not count a single drinking fountain.", True),
        # paraphrases and made-up text: never
        ("The count of seats on a road is the most truthful gauge of whether a town wants people on it.", False),
        ("Whether a city wants people on it is measured most honestly by the number of benches on a street.", False),
        ("The number of benches on a street is the least honest measure of whether a city wants people on it.", False),
        ("I counted 14 benches on my walk to the library, and I did count a single drinking fountain.", False),
        ("Armrests in the middle of benches are a confession - they tell you who is welcome.", False),
        ("Cities should plant more trees along every avenue and boulevard in the district.", False),
        ("I have always believed that lanterns quietly negotiate with accountants.", False),
        # short quotes must match exactly, on word boundaries
        ("41 benches", True),
        ("1 benches", False),
        ("honest measure", True),
        ("honest measures", False),
        ("", False),
    ],
)
def test_quote_in_document(quote, ok):
    assert quote_in_document(quote, DOC) is ok, (quote, quote_score(quote, DOC))


def test_normalise_folds_typography_only():
    assert normalise("\u201cIt\u2019s\u201d \u2014  fine\u2026") == "\"it's\" - fine..."
    assert normalise("A\u00a0B") == "a b"


def _pair(**over):
    pair = {
        "type": "genuine",
        "question": "How do you judge whether a city wants people on its streets?",
        "answer": "I count the benches. The number of benches on a street is the most honest measure I know.",
        "sources": ["streets/benches.md"],
        "quotes": [{"source": "streets/benches.md", "text": "The number of benches on a street is the most honest measure"}],
    }
    pair.update(over)
    return pair


DOCS = {"streets/benches.md": DOC, "streets/crossing.md": "Waiting at a crossing is time the city takes from you."}


@pytest.mark.parametrize(
    "over, code",
    [
        ({}, None),
        ({"question": "  "}, "missing-field"),
        ({"answer": None}, "missing-field"),
        ({"type": "musing"}, "bad-type"),
        ({"sources": []}, "missing-field"),
        ({"sources": "streets/benches.md"}, "missing-field"),
        ({"quotes": []}, "missing-field"),
        ({"quotes": [{"source": "streets/benches.md"}]}, "missing-field"),
        ({"quotes": ["just a string"]}, "missing-field"),
        ({"sources": ["streets/elsewhere.md"]}, "wrong-source"),
        ({"quotes": [{"source": "other/x.md", "text": "The number of benches on a street"}]}, "wrong-source"),
        # quoting a batch document that the pair does not list in its sources
        ({"quotes": [{"source": "streets/crossing.md", "text": "Waiting at a crossing is time the city takes from you."}]}, "wrong-source"),
        # the quote is real, but from another document than the one named
        (
            {
                "sources": ["streets/crossing.md"],
                "quotes": [{"source": "streets/crossing.md", "text": "The number of benches on a street is the most honest measure"}],
            },
            "invented-quote",
        ),
        ({"quotes": [{"source": "streets/benches.md", "text": "Benches are the truest sign that a town cares about walkers"}]}, "invented-quote"),
        ({"answer": "I prefer trains to buses, and always have."}, "unsupported-answer"),
    ],
)
def test_check_pair(over, code):
    why = check_pair(_pair(**over), DOCS)
    assert (why.code if why else None) == code, why


def test_content_words_drop_stopwords_and_fold_plurals():
    assert content_words("The benches are what I counted on the streets") == {"benche", "counted", "street"}


@pytest.mark.parametrize(
    "a, b, dup",
    [
        ("What do you mean by honest friction?", "What do you mean by honest friction?", True),
        ("What do you mean by honest friction?", "So, what do you mean by 'honest friction'?", True),
        ("What do you mean by honest friction?", "what do you mean by honest friction", True),
        ("Why do you count benches on a street?", "Why do you count the benches on streets?", True),
        ("What do you mean by honest friction?", "What do you mean by dishonest friction in repair cafes?", False),
        ("Why do you bake every Saturday?", "How should a city council decide where to put benches?", False),
        (
            "What do you mean when you write that the ugly loaf is where the information is?",
            "What do you mean when you write that a good loaf tells you that many things went right?",
            False,
        ),
    ],
)
def test_near_duplicates(a, b, dup):
    index = QuestionIndex()
    index.add(a, "batch-1")
    found = index.find(b)
    assert (found is not None) is dup, similarity(a, b)
    if dup:
        assert found[0] == "batch-1" and found[1] == a


def test_question_index_is_deterministic_and_returns_the_closest():
    index = QuestionIndex()
    index.add("Why do you count benches?", "a")
    index.add("Why do you count benches on a street?", "b")
    assert index.find("Why do you count the benches on a street?")[0] == "b"
    assert len(index) == 2
    assert QuestionIndex().find("anything at all?") is None
