"""What the fake Messages API server (fake_anthropic.py) writes for boundary rounds and the probe request.

    pairs, produced = boundary_pairs(docs, sentences_pool, n, asked_text, faults, rng)
    questions, produced = probe_questions(openings, n, listed_text, faults, rng)

A boundary question names a topic made of two words no example document uses ("tidal heraldry",
"baroque falconry"), so her writing does not cover it; its answer declines in the first person
and, most times, points to a real sentence of the batch as a verbatim quote. On request
(rates per pair, like the server's other faults) a pair comes out bad in one of the three ways
the checks must catch: a question the documents answer (`boundary_answered`), an answer that
takes a position instead of declining (`boundary_position`), or a pointer quote that is not in the
documents (`boundary_invented`). `boundary_none` answers the round with no pairs at all. Probe
questions are made the same way; `probe_answered` makes some answerable, `probe_none` none at all.

As for the server's other pairs, what a good pair says depends only on what the request asks
(its documents and the questions listed), not on the attempt: a round asked again after a bad
reply gets the same good pairs. `rng` (seeded by the whole request) only rolls the faults.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from typing import Any

# Words none of the example documents (sources/) uses, checked by tests/test_generate_boundary.py.
ADJECTIVES = ["byzantine", "tidal", "volcanic", "arctic", "baroque", "nocturnal", "maritime", "alpine", "orbital",
              "lunar", "glacial", "tropical", "seismic", "monastic", "nautical", "imperial", "coastal",
              "subterranean", "feudal", "venetian", "ottoman", "andean", "siberian"]
NOUNS = ["heraldry", "falconry", "cartography", "beekeeping", "astronomy", "taxidermy", "calligraphy", "glassblowing",
         "bookbinding", "navigation", "perfumery", "tapestry", "shipbuilding", "clockmaking", "viticulture",
         "origami", "embroidery", "sailmaking", "puppetry", "lacquerware", "mosaics"]
BOUNDARY_TEMPLATES = ["Have you written about {t}?", "What do you make of {t}?", "Where do you stand on {t}?"]
PROBE_TEMPLATES = ["How would you approach {t}?", "Do you have a view on {t}?", "What is your opinion of {t}?"]


def topic(rng: random.Random, taken: str) -> str:
    """Two absent words, not already in `taken` (the questions asked so far)."""
    for _ in range(50):
        t = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        if t not in taken:
            return t
    return t


def _phrase(sentence: str) -> str:
    words = re.findall(r"[A-Za-z0-9'’-]+", sentence)
    return " ".join(words[:11]).lower()


def _content_rng(*parts: str) -> random.Random:
    return random.Random(hashlib.sha256("\x00".join(parts).encode()).hexdigest())


def _made_up(rng: random.Random) -> str:
    words = rng.sample(ADJECTIVES, 4) + rng.sample(NOUNS, 4)
    rng.shuffle(words)
    return "I have always believed that " + " ".join(words) + " belong together."


def boundary_pair(t: str, pointer: tuple[str, str] | None, question: str) -> dict[str, Any]:
    """A good boundary pair: a decline, with the pointer (doc id, sentence) quoted when given."""
    if pointer is None:
        return {"type": "boundary", "question": question, "sources": [], "quotes": [],
                "answer": f"That's not something I've written about, and I would rather not guess at a view on {t} "
                          "I haven't worked out."}
    doc_id, sentence = pointer
    return {"type": "boundary", "question": question, "sources": [doc_id], "quotes": [{"source": doc_id, "text": sentence}],
            "answer": f"I haven't written about {t}. The nearest I have come is this, from {doc_id}: \"{sentence}\""}


def boundary_pairs(pool: Sequence[tuple[str, str]], n: int, asked_text: str, faults: Any,
                   rng: random.Random) -> tuple[list[dict[str, Any]], list[tuple[str, str | None, str, tuple[str, ...]]]]:
    """(pairs, [(question, fault, quote, sources)]) for a boundary round of `n` pairs."""
    if faults.boundary_none:
        return [], []
    pairs, produced = [], []
    taken = asked_text
    what = _content_rng("boundary", *(d for d, _ in pool), asked_text)
    for _ in range(n):
        t = topic(what, taken)
        taken += " " + t
        question = what.choice(BOUNDARY_TEMPLATES).format(t=t)
        near = what.random() < 0.7  # most boundary answers point to something she wrote nearby
        pointer = pool[what.randrange(len(pool))] if pool and near else None
        pair = boundary_pair(t, pointer, question)
        roll, fault = rng.random(), None
        if roll < faults.boundary_answered and pool:
            fault = "boundary-answered"
            doc_id, sentence = pool[rng.randrange(len(pool))]
            pair["question"] = f"What do you mean when you write that {_phrase(sentence)}?"
        elif roll < faults.boundary_answered + faults.boundary_position:
            fault = "boundary-position"
            pair["answer"] = f"I think {t} matters more than people admit, and I would put it first every time."
        elif roll < faults.boundary_answered + faults.boundary_position + faults.boundary_invented:
            fault = "boundary-invented"
            doc_id = pointer[0] if pointer else (pool[0][0] if pool else "unknown.md")
            made_up = _made_up(rng)
            pair.update(sources=[doc_id], quotes=[{"source": doc_id, "text": made_up}],
                        answer=f"I haven't written about {t}. The nearest I have come is this: \"{made_up}\"")
        quote = pair["quotes"][0]["text"] if pair["quotes"] else ""
        pairs.append(pair)
        produced.append((pair["question"], fault, quote, tuple(pair["sources"])))
    return pairs, produced


def probe_questions(openings: Sequence[str], n: int, listed_text: str, faults: Any,
                    rng: random.Random) -> tuple[list[dict[str, str]], list[tuple[str, str | None]]]:
    """(questions, [(question, fault)]) for the probe request."""
    if faults.probe_none:
        return [], []
    out, produced = [], []
    taken = listed_text
    what = _content_rng("probes", listed_text)
    for _ in range(n):
        t = topic(what, taken)
        taken += " " + t
        question, fault = what.choice(PROBE_TEMPLATES).format(t=t), None
        if rng.random() < faults.probe_answered and openings:
            question, fault = f"What do you mean when you write that {_phrase(rng.choice(openings))}?", "probe-answered"
        out.append({"question": question})
        produced.append((question, fault))
    return out, produced
