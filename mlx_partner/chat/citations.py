"""What chat shows under an answer, and the quote check: records and text, no index, no model.

    Citation(passages=(Cited(path, title, excerpt, score, line), ...), grounded=True, ...)
    citation_lines(citation)            # the lines the REPL prints under the answer, dimmed
    citation_markdown(citation)         # the same, as Markdown, for /save
    unverified_quotes(answer, texts)    # quoted spans found in none of her documents

Quotes: a span between double quotes (straight "..." or curly “...”) of at least
`QUOTE_MIN_WORDS` words is taken as a quotation of her writing (the partner speaks as the author,
so what it quotes it presents as hers) and checked with the check `generate` uses
(`grounding.quote_in_document`) against every document. Shorter spans are scare quotes or terms
("liveable", "defensive design") and are left alone, as is a span the question itself contains
(the partner quoting the user back). Single quotes are not read: they are apostrophes too often.

Ranking the passages needs the index: `passages.cite` builds a Citation; `index.open_citer` opens
the index for a chat. This module stays light so the REPL can import it without numpy.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..grounding import normalise, quote_in_document

QUOTE_MIN_WORDS = 4
NOT_GROUNDED = "Nothing in your writing is close to this question: this answer is not grounded in it."
NOTHING_CLOSE = "Nothing in your writing is close to this question."

_QUOTED = re.compile(r"[\"\u201c]([^\"\u201c\u201d]+?)[\"\u201d]")


@dataclass(frozen=True)
class Cited:
    """One passage under an answer: where it is (path under sources/, line) and a short excerpt."""

    path: str
    title: str
    excerpt: str  # verbatim words of the passage, whitespace folded, cut at a word with "..."
    score: float  # 0..1: closeness to the question and the answer together (1 = closest on both)
    line: int  # the excerpt's first line in the document's file


@dataclass(frozen=True)
class Citation:
    """What `chat` shows under one answer."""

    passages: tuple[Cited, ...] = ()
    grounded: bool = False
    declined: bool = False
    coverage: float = 0.0  # the question's coverage; grounded when it reaches the threshold
    unverified: tuple[str, ...] = ()
    off: str = ""  # why citations are off ('' when they are on)

    def to_json(self, answer: str) -> dict[str, Any]:
        """The object `chat --prompt ... --json` prints (passages best first)."""
        out: dict[str, Any] = {
            "answer": answer, "passages": [asdict(c) for c in self.passages], "grounded": self.grounded,
            "unverified_quotes": list(self.unverified),
        }
        if self.off:
            out["citations_off"] = self.off
        return out


# --- quotes --------------------------------------------------------------------------------------


def quoted_spans(answer: str, question: str = "") -> list[str]:
    """Spans of the answer in double quotes that read as quotations (the module's rule)."""
    asked = normalise(question)
    spans = []
    for match in _QUOTED.finditer(answer):
        if "\n\n" in match.group(1):  # a stray quote mark paired across paragraphs
            continue
        span = " ".join(match.group(1).split()).strip(" ,;:")
        if len(span.split()) < QUOTE_MIN_WORDS:
            continue
        if asked and normalise(span).strip(" .,;:!?") in asked:
            continue
        spans.append(span)
    return list(dict.fromkeys(spans))


def unverified_quotes(answer: str, texts: Sequence[str], question: str = "") -> list[str]:
    """The quoted spans of the answer that no document contains (`grounding.quote_in_document`)."""
    return [q for q in quoted_spans(answer, question) if not any(quote_in_document(q, t) for t in texts)]


# --- as text ---------------------------------------------------------------------------------------


def citation_lines(c: Citation, width: int = 100) -> list[str]:
    """The lines under an answer, at most `width` wide: the passages (or the pointer), then one
    status line when needed (nothing close, citations off, a quote not found)."""
    lines: list[str] = []
    if c.passages:
        lines.append(heading(c))
        for i, p in enumerate(c.passages, 1):
            lines.append(f"[{i}] {p.path}:{p.line}  {p.title}")
            lines += textwrap.wrap(f'"{p.excerpt}"', max(width - 4, 40), initial_indent="    ",
                                   subsequent_indent="     ")
    status = status_line(c)
    if status:  # one line; wrapped only where the width cannot hold it
        lines += textwrap.wrap(status, max(width, 40))
    return lines


def heading(c: Citation) -> str:
    """The line above the passages: a pointer after a decline, else where the answer comes from."""
    return "What I did write nearby:" if c.declined else "From your writing:"


def status_line(c: Citation) -> str:
    """The one line under the passages ('' when there is nothing to say): citations off, nothing
    close (the grounded flag), quotes not found in her writing."""
    status = []
    if c.off:
        status.append(c.off)
    elif not c.grounded:  # a decline too: it is right to decline, and the author should see why
        status.append(NOTHING_CLOSE if c.declined else NOT_GROUNDED)
    if c.unverified:
        shown = "; ".join(f'"{_short(q)}"' for q in c.unverified)
        status.append(f"Quoted, but not found in your writing: {shown}.")
    return " ".join(status)


def citation_markdown(c: Citation) -> list[str]:
    """What was shown under an answer, as Markdown for /save: a block quote holding the heading,
    the numbered passages (path:line, title, closeness, excerpt) and the status line."""
    lines: list[str] = []
    if c.passages:
        lines += [f"> {heading(c)}", ">"]
        for i, p in enumerate(c.passages, 1):
            lines += [f"> {i}. `{p.path}:{p.line}` {p.title} (closeness {p.score:.2f})",
                      f'>    "{p.excerpt}"']
    status = status_line(c)
    if status:
        lines += ([">"] if lines else []) + [f"> _{status}_"]
    return lines


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."
