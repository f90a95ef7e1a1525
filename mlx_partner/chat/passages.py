"""The passages of her writing an answer rests on, found in the run's index (pure, no model).

    citation = cite(index, texts, question, answer)   # a citations.Citation
    rag_passages(index, question)                      # what `chat --rag` puts before a question

Passages are ranked by how close they are to the question and to the answer together: BM25 over
the index for each (a passage's own score and its document's, see `DOC_WEIGHT`), each scaled to
its best, averaged; one under half the best is not shown. When the partner declines, its answer says nothing about her writing, so the passages
nearest the question alone are shown, as the pointer to what she did write. Whether the answer
is grounded is the question's coverage against the threshold calibrated on questions her writing
answers (`retrieval`); only a question's first `QUESTION_CHARS` characters are searched, so a
50 KB paste is placed by its beginning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..decline import is_decline
from ..prompts import RAG_PASSAGES
from ..retrieval import Passage, SourceIndex, tokens
from .citations import Citation, Cited, unverified_quotes

MAX_PASSAGES = 3
POOL = 20  # BM25's top passages for the question and for the answer, merged and re-ranked
RELATIVE_FLOOR = 0.5  # a passage under half the best one's closeness is not shown
# A passage's closeness is half its own BM25 and half its document's (the sum over its passages in
# the pool): an essay that matches in several places beats a stray word elsewhere. On the example
# corpus this puts the cited essay first for 63 of the 69 hand-written pairs' questions, against
# 57 for BM25's top passage alone, and for 11 of the 12 questions in tests/test_grounded_chat.py.
DOC_WEIGHT = 0.5
QUESTION_CHARS = 600
ANSWER_CHARS = 2000
EXCERPT_CHARS = 200
EXCERPT_MIN_CHARS = 90  # a shorter best sentence takes the next one along

_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"'\u201d\u2019)]*|\n|$)")


def excerpt(passage: Passage, words: set[str], limit: int = EXCERPT_CHARS) -> tuple[str, int]:
    """(a short verbatim excerpt of the passage, its line in the document's text): the sentence
    sharing most of `words`, the first such on a tie."""
    sentences = [(m.start(), m.group()) for m in _SENTENCE.finditer(passage.text)
                 if m.group().strip() and not m.group().lstrip().startswith("#")]  # not a heading
    if not sentences:
        return "", passage.line
    best = max(range(len(sentences)), key=lambda i: (len(words & set(tokens(sentences[i][1]))), -i))
    start, text = sentences[best][0], " ".join(sentences[best][1].split())
    end = start + len(sentences[best][1])
    for at, more in sentences[best + 1:]:
        if len(text) >= EXCERPT_MIN_CHARS or "\n\n" in passage.text[end - 1:at + 1]:
            break  # long enough, or the next sentence is in another paragraph
        text, end = f"{text} {' '.join(more.split())}", at + len(more)
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    lead = len(sentences[best][1]) - len(sentences[best][1].lstrip())
    return text, passage.line + passage.text.count("\n", 0, start + lead)


def closest(index: SourceIndex, question: str, answer: str = "", k: int = MAX_PASSAGES,
            floor: float = RELATIVE_FLOOR) -> list[tuple[Passage, float]]:
    """Up to `k` passages closest to the question and the answer together, best first, each with
    its closeness (0..1; none under `floor` times the best's); with no answer, closest to the
    question alone."""
    ranked: dict[Passage, float] = {}
    queries = [question[:QUESTION_CHARS]] + ([answer[:ANSWER_CHARS]] if answer.strip() else [])
    found = [hits for hits in (index.search(q, k=POOL) for q in queries) if hits]
    for hits in found:  # an answer sharing no word with her writing does not halve the scores
        top = max(h.score for h in hits)
        per_doc: dict[str, float] = {}
        for h in hits:
            per_doc[h.passage.doc_id] = per_doc.get(h.passage.doc_id, 0.0) + h.score
        doc_top = max(per_doc.values())
        for h in hits:
            near = (1 - DOC_WEIGHT) * h.score / top + DOC_WEIGHT * per_doc[h.passage.doc_id] / doc_top
            ranked[h.passage] = ranked.get(h.passage, 0.0) + near / len(found)
    order = sorted(ranked.items(), key=lambda item: -item[1])[:k]
    if not order:
        return []
    least = order[0][1] * floor
    return [(p, round(score, 3)) for p, score in order if score >= least]


def cite(index: SourceIndex, texts: Sequence[str], question: str, answer: str, k: int = MAX_PASSAGES,
         offsets: Mapping[str, int] | None = None) -> Citation:
    """The passages an answer rests on, whether it is grounded, and its unverified quotes.

    `offsets` ({doc_id: lines before its text}, its front matter) turns the line in a document's
    text into the line in its file, where an editor opens it."""
    declined = is_decline(answer)
    asked = question[:QUESTION_CHARS]
    coverage = index.coverage(asked)
    grounded = coverage >= index.threshold
    passages: list[Cited] = []
    if grounded or declined:
        # A decline says nothing about her writing: the question alone finds the pointer.
        used = "" if declined else answer
        words = set(tokens(asked)) | set(tokens(used[:ANSWER_CHARS]))
        for p, score in closest(index, asked, used, k):
            text, line = excerpt(p, words)
            passages.append(Cited(p.doc_id, p.title, text, score, line + (offsets or {}).get(p.doc_id, 0)))
    return Citation(tuple(passages), grounded, declined, round(coverage, 4),
                    tuple(unverified_quotes(answer, texts, question)))


def rag_passages(index: SourceIndex, question: str, k: int = RAG_PASSAGES) -> list[Passage]:
    """The passages `chat --rag` puts before a question: the `k` closest to its first part, by the
    ranking the citations use, however weak (training shows the model weak ones too: the
    distractors of `dataset.passages`, and the nearest passages before a boundary question)."""
    return [p for p, _ in closest(index, question, k=k, floor=0.0)]
