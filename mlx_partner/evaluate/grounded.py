"""Eval's retrieval measures, pure: does her writing's index find the passage a pair rests on, and
do the quotations in generated answers occur in her writing?

    index = build_index(documents, answerable=questions)           # retrieval, once per eval
    retrieval = retrieval_accuracy(index, held_out_examples)       # {"accuracy": 0.92, ...}
    quote_record(answer, texts, question)                          # [{"text", "verified"}, ...]
    probe_coverage(index, near_probe_questions)                    # are the probes really absent?
    ask = passages_ask(index); ask(question)                       # the user turn `chat --rag` sends

Retrieval accuracy is the share of held-out questions (of the answer kinds, citing at least one
document) whose best passage, BM25 over the question alone, is from a document the pair cites:
what `chat` shows under an answer rests on that passage. Quoted spans follow `chat`'s rule: a span
between double quotes (straight or curly) of at least `QUOTE_MIN_WORDS` words, not one the question
itself holds, is a quotation of her writing; shorter ones are scare quotes or terms ("liveable").
Each is checked with the quote check `generate` uses (`grounding.quote_in_document`) against
every document.

A run trained with passages before each question (`[dataset] passages = true`) is used through
`chat --rag`, so eval asks it every question the same way: `passages_ask` is chat's own retrieval
(`chat.passages.rag_passages`) and the one renderer (`prompts.with_passages`), not a copy of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..chat.passages import rag_passages
from ..grounding import normalise, quote_in_document
from ..prompts import RAG_PASSAGES, with_passages
from ..retrieval import SourceIndex
from .examples import EvalExample, plain_question

__all__ = ["QUOTE_MIN_WORDS", "passages_ask", "passages_record", "probe_coverage", "quote_record", "quote_summary", "quoted_spans", "retrieval_accuracy"]

# The same rule as chat's (chat/citations.py); the two belong in grounding.py, beside the check.
QUOTE_MIN_WORDS = 4
_QUOTED = re.compile(r"[\"\u201c]([^\"\u201c\u201d]+?)[\"\u201d]")


def quoted_spans(answer: str, question: str = "") -> list[str]:
    """Spans of the answer in double quotes that read as quotations of her writing (the rule above)."""
    asked = normalise(question)
    spans = []
    for match in _QUOTED.finditer(answer):
        span = " ".join(match.group(1).split()).strip(" ,;:")
        if len(span.split()) < QUOTE_MIN_WORDS or "\n\n" in match.group(1):
            continue
        if asked and normalise(span).strip(" .,;:!?") in asked:
            continue
        spans.append(span)
    return list(dict.fromkeys(spans))


def retrieval_accuracy(index: SourceIndex, examples: Sequence[EvalExample]) -> dict[str, Any]:
    """The share of held-out questions whose top passage is from a document their pair cites,
    with each question's top passage (doc id, line) and whether it hit."""
    items = []
    for ex in examples:
        if ex.expects_decline or not ex.sources:
            continue
        question = plain_question(ex.question)
        hits = index.search(question, k=1)
        top = hits[0].passage if hits else None
        items.append({"key": ex.key, "question": question, "cited": list(ex.sources),
                      "top": f"{top.doc_id}:{top.line}" if top else "", "hit": bool(top and top.doc_id in ex.sources)})
    hits_n = sum(1 for i in items if i["hit"])
    return {"questions": len(items), "hits": hits_n, "accuracy": hits_n / len(items) if items else None,
            "method": "BM25 over passages of every document, the question alone, top passage", "items": items}


def quote_record(answer: str, texts: Sequence[str], question: str = "") -> list[dict[str, Any]]:
    """Each quotation in an answer and whether some document contains it."""
    return [{"text": span, "verified": any(quote_in_document(span, t) for t in texts)}
            for span in quoted_spans(answer, question)]


def quote_summary(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """{"spans", "verified", "share"} over the `quotes` of answer records (share None: no quotes)."""
    quotes = [q for r in records for q in r.get("quotes") or ()]
    verified = sum(1 for q in quotes if q.get("verified"))
    return {"spans": len(quotes), "verified": verified, "share": verified / len(quotes) if quotes else None}


def probe_coverage(index: SourceIndex, questions: Sequence[str]) -> dict[str, Any]:
    """How much of her writing each near-domain probe covers, against the index's threshold: a
    probe at or above it reads like a question she answered, so its decline figure means less."""
    scored = [(q, round(index.coverage(q), 4)) for q in questions]
    covered = [q for q, c in scored if c >= index.threshold]
    return {"threshold": round(float(index.threshold), 4), "probes": len(scored), "covered": len(covered),
            "covered_questions": covered, "coverage": {q: c for q, c in scored}}


def passages_ask(index: SourceIndex) -> Callable[[str], str]:
    """question -> the user turn `chat --rag` sends for it: the passages its retrieval finds
    closest to the question, rendered before it as training renders them."""
    return lambda question: with_passages(question, rag_passages(index, question))


def passages_record(used: bool) -> dict[str, Any]:
    """metrics.json's "passages": whether eval put passages of her writing in the prompts, and how."""
    if not used:
        return {"in_prompt": False}
    return {"in_prompt": True, "per_question": RAG_PASSAGES,
            "chosen_by": "chat --rag's retrieval over her documents (chat.passages.rag_passages)",
            "asked": "every question: held-out pairs, near-domain and far probes"}
