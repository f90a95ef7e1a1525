"""Answers that contradict the author's writing, found in code: negation flips. Pure, no model.

    her = her_sentences(question, ex.sources, texts, index)   # the cited essays + top passages
    flips = negation_flips(answer, her)       # [Flip(answer="Benches do not ...", source=..., where=...)]
    add_contradictions(scores, examples, documents, index)    # eval: every held-out answer, in place

A flip is an answer sentence that says what one of her sentences says with the polarity turned
over: "Benches do not make a street safer." against her "Benches make a street safer." This is a
deliberately narrow, high-precision *lower bound* on contradictions: an answer that contradicts
her in other words ("benches make a street more dangerous"), across two sentences, or by a
different number, is not caught. Count what it finds; never read zero as "no contradictions".

The rule, all of it:

- Sentences end at ".", "!" or "?" or at a blank line. Each sentence is compared clause by clause,
  cut at "," ";" ":" and the words in `CLAUSE_BREAKS` ("and", "but", "that", "which", "if", ...),
  so a negator counts only in its own clause: "read them, not the newest ones" is a positive
  claim about reading them and a negated one about the newest ones.
- Content words: `grounding.content_words` (lower-cased, stop words out, three letters or more,
  a plural -s folded), with the negators taken out first.
- Overlap: the two clauses share at least `MIN_OVERLAP` (70%) of the content words of the one
  with *more* of them (so of each), and each has at least `MIN_CONTENT_WORDS` (3).
- Negated: the clause holds a word of `NEGATORS` or one ending in "n't" ("doesn't", "can't").
  A sentence that opens "No," is answering someone; that "no" negates nothing that follows.
- A flip: exactly one of the two clauses is negated. Both negated agree; neither agrees.

Why these numbers: the author does not contradict herself, so her own 70 hand-written answers in
examples/pairs.jsonl, checked against her sentences exactly as eval checks a model's, should flag
(almost) nothing. Whole sentences at 60% of the shorter one's words flagged 31 of them (a negated
aside, ", and nobody has to apply", turned an agreeing sentence into a "flip"); clauses at 70% of
the longer flag 1 ("dough is not a train timetable" against her "as if dough were a train
timetable", which agree). Planted flips of her sentences are still found (tests/test_evaluate_contradiction.py).

Left out on purpose: "stop" and "refuse" (nouns as often, "a bus stop", "refuse collection", and
"stop doing X" reports a change, not a denial), and "without" ("a street without benches is
unfriendly" agrees with "benches make a street friendly"). Each would add false flips.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..grounding import content_words, words
from ..prompts import RAG_PASSAGES
from ..retrieval import SourceIndex
from ..sources.documents import Document
from .examples import EvalExample, plain_question

__all__ = [
    "CLAUSE_BREAKS", "MIN_CONTENT_WORDS", "MIN_OVERLAP", "NEGATORS", "PASSAGES", "Flip", "SourceSentence",
    "add_contradictions", "contradiction_method", "contradiction_record", "document_sentences", "her_sentences",
    "negation_flips", "split_sentences",
]

NEGATORS = frozenset(["not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "cannot"])
# Words that start another clause. Not "yet", "while" or "though": they are adverbs as often ("not
# yet made"), and a cut there parts a negator from what it negates, which makes a false flip.
CLAUSE_BREAKS = ("and", "but", "although", "whereas", "unless", "except", "that", "which", "who", "where",
                 "when", "because", "if")
MIN_OVERLAP = 0.7
MIN_CONTENT_WORDS = 3
PASSAGES = RAG_PASSAGES  # her passages retrieval finds for the question (as many as `chat --rag` puts)

_SENTENCE = re.compile(r"[^.!?\s][^.!?]*(?:[.!?]+[\"'\u201d\u2019)\]]*|$)")
_PARAGRAPH = re.compile(r"(?:[ \t]*\S[^\n]*(?:\n|$))+")
_CLAUSE = re.compile(r"[,;:]|\s\b(?:" + "|".join(CLAUSE_BREAKS) + r")\b", re.IGNORECASE)
_INTERJECTION = re.compile(r"^\W*no\s*[,!.\u2014-]", re.IGNORECASE)


@dataclass(frozen=True)
class SourceSentence:
    """One sentence of her writing and where it is ("streets/the-bench-is-an-argument.md:12")."""

    text: str
    where: str


@dataclass(frozen=True)
class Flip:
    """An answer sentence and the sentence of hers it turns over, with their content-word overlap."""

    answer: str
    source: str
    where: str
    overlap: float


def split_sentences(text: str) -> list[tuple[int, str]]:
    """(offset, sentence) for each sentence of `text`; a paragraph's line breaks are spaces."""
    out = []
    for para in _PARAGRAPH.finditer(text):
        for m in _SENTENCE.finditer(para.group(0)):
            sentence = " ".join(m.group(0).split())
            if sentence:
                out.append((para.start() + m.start(), sentence))
    return out


def document_sentences(doc_id: str, text: str, first_line: int = 1) -> list[SourceSentence]:
    """Her sentences in `text` (a document, or a passage starting at `first_line` of one)."""
    return [SourceSentence(s, f"{doc_id}:{first_line + text.count(chr(10), 0, at)}") for at, s in split_sentences(text)]


def _is_negator(word: str) -> bool:
    return word in NEGATORS or word.endswith("n't")


def _clauses(sentence: str) -> list[tuple[bool, frozenset[str]]]:
    """(negated, content words) for each clause of a sentence (the rule in the module docstring)."""
    sentence = _INTERJECTION.sub("", sentence, count=1)
    out = []
    for clause in _CLAUSE.split(sentence):
        tokens = words(clause)
        kept = " ".join(t for t in tokens if not _is_negator(t))
        out.append((any(_is_negator(t) for t in tokens), frozenset(content_words(kept))))
    return out


def _flip_overlap(a: Sequence[tuple[bool, frozenset[str]]], b: Sequence[tuple[bool, frozenset[str]]]) -> float:
    """The best overlap over clause pairs of opposite polarity that meet the rule, else 0."""
    best = 0.0
    for neg_a, words_a in a:
        for neg_b, words_b in b:
            if neg_a == neg_b or min(len(words_a), len(words_b)) < MIN_CONTENT_WORDS:
                continue
            overlap = len(words_a & words_b) / max(len(words_a), len(words_b))
            if overlap >= MIN_OVERLAP and overlap > best:
                best = overlap
    return best


def negation_flips(answer: str, sentences: Iterable[SourceSentence]) -> list[Flip]:
    """Each answer sentence that turns one of her `sentences` over, paired with the closest such
    sentence of hers (the highest overlap; the first on a tie). A narrow lower bound: see above."""
    hers = [(s, _clauses(s.text)) for s in dict.fromkeys(sentences)]
    flips = []
    for _, sentence in split_sentences(answer):
        mine = _clauses(sentence)
        best: Flip | None = None
        for source, theirs in hers:
            overlap = _flip_overlap(mine, theirs)
            if overlap and (best is None or overlap > best.overlap):
                best = Flip(sentence, source.text, source.where, round(overlap, 3))
        if best is not None:
            flips.append(best)
    return flips


def her_sentences(question: str, cited: Sequence[str], documents: Mapping[str, str],
                  index: SourceIndex | None, passages: int = PASSAGES) -> list[SourceSentence]:
    """What an answer to `question` should rest on: every sentence of the documents the pair cites
    (`documents` maps a document's id to its text) and of the top `passages` retrieval finds for
    the question (the passages `chat --rag` would put before it), each sentence once."""
    out = [s for doc_id in cited if doc_id in documents for s in document_sentences(doc_id, documents[doc_id])]
    for hit in index.search(question, k=passages) if index is not None else ():
        p = hit.passage
        if p.doc_id not in cited:  # a cited document's sentences are all there already
            out += document_sentences(p.doc_id, p.text, p.line)
    return list(dict.fromkeys(out))


def contradiction_record(answer: str, sentences: Iterable[SourceSentence]) -> list[dict[str, Any]]:
    """metrics.json's "contradictions" of one answer: each flip as {"answer", "source", "where",
    "overlap"} ([] when none)."""
    return [asdict(f) for f in negation_flips(answer, sentences)]


def add_contradictions(scores: dict[str, Any], examples: Sequence[EvalExample], documents: Sequence[Document],
                       index: SourceIndex | None) -> None:
    """Each held-out answer's "contradictions" (in place), from the answers eval already has, so a
    cached answer is checked again like a new one; a decline is not checked (None)."""
    texts = {d.id: d.text for d in documents}
    hers = {ex.key: her_sentences(plain_question(ex.question), ex.sources, texts, index) for ex in examples}
    for record in scores.values():
        for key, item in record["answers"].items():
            checked = key in hers and not item.get("abstained")
            item["contradictions"] = contradiction_record(item["answer"], hers[key]) if checked else None


def contradiction_method() -> dict[str, Any]:
    """metrics.json's "contradiction": the rule the counts were made with."""
    return {"measure": "negation flips, a lower bound", "min_overlap": MIN_OVERLAP, "overlap_of": "the longer clause",
            "min_content_words": MIN_CONTENT_WORDS, "negators": sorted(NEGATORS) + ["n't"],
            "clause_breaks": [",", ";", ":", *CLAUSE_BREAKS], "passages": PASSAGES,
            "her_text": "every sentence of the documents the pair cites and of the top passages for its question",
            "declines": "not checked"}
