"""Cutting a long document into chunks that fit one request, at paragraph, then sentence, breaks.

    chunks = chunk_document(doc, max_tokens=12000)   # doc.text[c.start:c.end] == c.text

Offsets point into `Document.text`, so quotes can be checked against the original text later.
"""

from __future__ import annotations

import re

from .documents import Chunk, Document, estimate_tokens

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")


def _spans(text: str, start: int, end: int, breaks: re.Pattern[str]) -> list[tuple[int, int]]:
    """Split text[start:end] at `breaks`, returning (start, end) spans without the separators."""
    out, pos = [], start
    for match in breaks.finditer(text, start, end):
        piece_end = match.start() if breaks is _PARAGRAPH_BREAK else match.start() + len(match.group(0).rstrip())
        if piece_end > pos:
            out.append((pos, piece_end))
        pos = match.end()
    if pos < end:
        out.append((pos, end))
    trimmed = []
    for s, e in out:  # no chunk starts or ends in whitespace
        piece = text[s:e]
        if piece.strip():
            trimmed.append((s + len(piece) - len(piece.lstrip()), e - len(piece) + len(piece.rstrip())))
    return trimmed


def _word_spans(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Last resort for a sentence longer than the budget: cut between words, or hard at max_chars."""
    out = []
    for match in re.finditer(r"\S+", text[start:end]):
        s, e = start + match.start(), start + match.end()
        while e - s > max_chars:
            out.append((s, s + max_chars))
            s += max_chars
        out.append((s, e))
    return out


def _greedy(text: str, spans: list[tuple[int, int]], cap: int) -> list[tuple[int, int]]:
    pieces: list[tuple[int, int]] = []
    for s, e in spans:
        if pieces and estimate_tokens(text[pieces[-1][0] : e]) <= cap:
            pieces[-1] = (pieces[-1][0], e)
        else:
            pieces.append((s, e))
    return pieces


def _pack(text: str, spans: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """Join consecutive spans into as few pieces of at most `limit` tokens as possible, as even
    as possible (a 1.2x-budget text gives two pieces of ~0.6x, not 1.0x + 0.2x)."""
    fewest = len(_greedy(text, spans, limit))
    lo = max((estimate_tokens(text[s:e]) for s, e in spans), default=0)
    hi = limit
    while lo < hi:  # the smallest cap that still needs no more pieces
        mid = (lo + hi) // 2
        if len(_greedy(text, spans, mid)) <= fewest:
            hi = mid
        else:
            lo = mid + 1
    return _greedy(text, spans, hi)


def chunk_document(doc: Document, max_tokens: int) -> list[Chunk]:
    """The document as chunks of at most `max_tokens`, cut at paragraph, then sentence, boundaries.

    Chunks are balanced (a 1.2x-budget document gives two chunks of ~0.6x, not 1.0x + 0.2x) and
    `doc.text[c.start:c.end] == c.text` always holds.
    """
    text = doc.text
    if doc.tokens <= max_tokens:
        return [Chunk(doc.id, 0, len(text), text, doc.tokens)]
    max_chars = max(4, max_tokens * 4)
    units: list[tuple[int, int]] = []
    for ps, pe in _spans(text, 0, len(text), _PARAGRAPH_BREAK):
        if estimate_tokens(text[ps:pe]) <= max_tokens:
            units.append((ps, pe))
            continue
        for ss, se in _spans(text, ps, pe, _SENTENCE_END):
            if estimate_tokens(text[ss:se]) <= max_tokens:
                units.append((ss, se))
            else:
                units.extend(_pack(text, _word_spans(text, ss, se, max_chars), max_tokens))
    return [Chunk(doc.id, s, e, text[s:e], estimate_tokens(text[s:e])) for s, e in _pack(text, units, max_tokens)]
