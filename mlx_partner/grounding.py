"""Checks that keep generated pairs grounded in the author's documents. Pure functions, no I/O.

    reason = check_pair(pair, batch_texts, kinds)     # None when the pair is fine
    index = QuestionIndex(); index.find(question)     # near-duplicate lookup

Pairs come in `KINDS`: three that answer from her documents, and `boundary`, a near-domain
question her documents do not answer, whose answer declines (`decline.opens_with_decline`) and may
point, with quotes checked like any other, to what she did write. Whether the documents answer a
boundary question is not decided here but by `retrieval` over the whole corpus (`generate`).

A quote must occur in the document it cites. Both sides are normalised (Unicode, case, quote
marks, dashes, ellipses, whitespace) and a quote may differ from its source by a few characters
(a dropped comma, a typo fixed), but never by more: a paraphrase is not a quote.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .decline import opens_with_decline, says_not_written

BOUNDARY = "boundary"
ANSWER_KINDS = ("genuine", "scenario", "pushback")  # answered from her documents
KINDS = (*ANSWER_KINDS, BOUNDARY)

# How close a quote must be to a span of its document once both are normalised. 0.92 lets a
# couple of typos or dropped punctuation marks through in a sentence and rejects paraphrases.
QUOTE_MIN_RATIO = 0.92
# Quotes shorter than this (normalised characters) must match exactly: a fuzzy short quote
# could be anything.
QUOTE_MIN_FUZZY_CHARS = 24
QUOTE_MIN_CHARS = 12
# Near-duplicate questions: cosine similarity of the character 4-gram counts of their content
# words, above which two questions ask the same thing.
DUPLICATE_THRESHOLD = 0.82

_QUOTES = {ord(c): "'" for c in "\u2018\u2019\u201a\u201b\u2032\u00b4`"} | {
    ord(c): '"' for c in "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"
}
_DASHES = re.compile(r"\s*(?:[\u2010-\u2015\u2212]|--+)\s*")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

_STOPWORD_TEXT = """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them themselves
    then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself yourselves i'm it's don't
    isn't that's what's you're they're we're there's let's one ever even much many"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
NEGATIONS = frozenset(["not", "no", "never", "nor", "none", "nothing", "nobody", "nowhere", "neither", "cannot", "without"])


def normalise(text: str) -> str:
    """Fold the differences a copy-paste or a model may introduce without changing the words."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    text = text.replace("\u2026", "...").replace("\u00ad", "")
    text = _DASHES.sub(" - ", text)
    return _SPACE.sub(" ", text).strip().lower()


def words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


def content_words(text: str) -> set[str]:
    """Words that carry meaning: not stopwords, at least three letters, simple plural folded."""
    out = set()
    for w in words(text):
        if w in STOPWORDS or len(w) < 3:
            continue
        out.add(_fold(w))
    return out


# --- quotes ------------------------------------------------------------------------------------


def _negations(tokens: Iterable[str]) -> int:
    return sum(1 for w in tokens if w in NEGATIONS or w.endswith("n't"))


def _typo_of(word: str, candidates: Iterable[str]) -> bool:
    """A word the quote changed slightly (a typo, a spelling variant), not a different word."""
    return len(word) >= 4 and bool(difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.8))


def quote_score(quote: str, document: str) -> float:
    """How well `quote` matches its best span of `document`: 1.0 verbatim, 0.0 nowhere.

    Exact (normalised) containment scores 1.0. Otherwise candidate spans are anchored on word
    trigrams the quote shares with the document, and each span of about the quote's length is
    compared with difflib. A span only counts if the words agree too: every word of the quote
    missing from the span must be a near-spelling of a word there (a typo, not a synonym), at
    most one in ten, and both must hold the same number of negations ("not", "never", "n't"),
    so "is not" quoted as "is" fails however close the characters are.
    """
    q = normalise(quote).strip(" .,;:\"'")
    d = normalise(document)
    if len(q) < QUOTE_MIN_CHARS:
        return 1.0 if q and re.search(rf"(?<![a-z0-9]){re.escape(q)}(?![a-z0-9])", d) else 0.0
    if q in d:
        return 1.0
    if len(q) < QUOTE_MIN_FUZZY_CHARS:
        return 0.0
    q_words = q.split(" ")
    starts: set[int] = set()
    # Anchors: trigrams at several places in the quote, so one changed word cannot hide it.
    for i in sorted({0, len(q_words) // 3, len(q_words) // 2, 2 * len(q_words) // 3, max(0, len(q_words) - 3)}):
        gram = " ".join(q_words[i : i + 3])
        offset = len(" ".join(q_words[:i])) + (1 if i else 0)
        for m in re.finditer(re.escape(gram), d):
            starts.add(max(0, m.start() - offset))
            if len(starts) > 64:  # a very common trigram: enough candidates already
                break
    best = 0.0
    q_tokens = _WORD.findall(q)
    allowed = max(1, len(q_tokens) // 10)
    for start in sorted(starts):
        for lo in (start - 3, start, start + 3):
            lo = max(0, lo)
            for length in (len(q) - 4, len(q), len(q) + 4):
                span = d[lo : lo + length]
                ratio = difflib.SequenceMatcher(None, q, span, autojunk=False).ratio()
                if ratio <= best:
                    continue
                # The span widened to whole words, so a cut word at either end still counts.
                a = d.rfind(" ", 0, lo) + 1
                b = d.find(" ", lo + length)
                whole = _WORD.findall(d[a : len(d) if b < 0 else b])
                missing = list((Counter(q_tokens) - Counter(whole)).elements())
                if len(missing) > allowed or not all(_typo_of(w, whole) for w in missing):
                    continue
                if _negations(q_tokens) != _negations(whole):
                    continue
                best = ratio
    return best


def quote_in_document(quote: str, document: str, min_ratio: float = QUOTE_MIN_RATIO) -> bool:
    return quote_score(quote, document) >= min_ratio


# --- one pair ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """Why a pair was rejected: a short code for summaries and a sentence for people."""

    # missing-field | bad-type | wrong-source | invented-quote | unsupported-answer | duplicate |
    # not-a-decline (a boundary answer that does not decline) | declines (an answer kind that does) |
    # answerable (a boundary question her writing covers: generate) | held-out (repeats a probe: generate)
    code: str
    detail: str


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def check_fields(pair: Mapping[str, object], kinds: Iterable[str] = KINDS) -> Rejection | None:
    """Every required field present, of the right type, and not empty. A boundary pair's sources
    and quotes may be empty lists (nothing she wrote is near), or absent."""
    for name in ("question", "answer"):
        if not _text(pair.get(name)):
            return Rejection("missing-field", f"the {name} is missing or empty")
    kind = pair.get("type")
    if kind not in tuple(kinds):
        return Rejection("bad-type", f"type {kind!r} is not one of {', '.join(kinds)}")
    optional = kind == BOUNDARY
    sources = pair.get("sources", [] if optional else None)
    if not isinstance(sources, list) or not (sources or optional) or not all(_text(s) for s in sources):
        return Rejection("missing-field", "sources must be a non-empty list of document ids")
    quotes = pair.get("quotes", [] if optional else None)
    if not isinstance(quotes, list) or not (quotes or optional):
        return Rejection("missing-field", "quotes must be a non-empty list")
    for q in quotes:
        if not isinstance(q, dict) or not _text(q.get("source")) or not _text(q.get("text")):
            return Rejection("missing-field", "each quote needs a source and a text")
    return None


def check_pair(
    pair: Mapping[str, object],
    documents: Mapping[str, str],
    kinds: Iterable[str] = KINDS,
) -> Rejection | None:
    """Check one generated pair against the texts of its batch ({doc_id: text sent}).

    Returns None if the pair is grounded: fields complete, every cited id a document of the
    batch, every quote found in the document it names, and an answer that uses the quotes' words.
    A boundary answer must open with a decline; an answer of the other kinds must not say her
    writing does not cover the question.
    """
    bad = check_fields(pair, kinds)
    if bad:
        return bad
    answer = str(pair["answer"])
    if pair["type"] == BOUNDARY and not opens_with_decline(answer):
        return Rejection("not-a-decline", f"a boundary answer must decline up front, not answer: {answer[:80]!r}")
    if pair["type"] != BOUNDARY and says_not_written(answer):
        return Rejection("declines", f"a {pair['type']} answer says her writing does not cover it: {answer[:80]!r}")
    sources = [s.strip() for s in pair.get("sources") or []]  # type: ignore[union-attr]
    quotes = pair.get("quotes") or []
    for doc_id in sources:
        if doc_id not in documents:
            return Rejection("wrong-source", f"cites {doc_id!r}, which is not a document of this batch")
    for q in quotes:  # type: ignore[union-attr]
        doc_id, text = q["source"].strip(), q["text"]
        if doc_id not in documents:
            return Rejection("wrong-source", f"quotes {doc_id!r}, which is not a document of this batch")
        if doc_id not in sources:
            return Rejection("wrong-source", f"quotes {doc_id!r} but does not list it in sources")
        if not quote_in_document(text, documents[doc_id]):
            return Rejection("invented-quote", f"quote not found in {doc_id}: {text[:80]!r}")
    if not quotes:  # a boundary pair that points at nothing: nothing to compare
        return None
    quoted = set().union(*(content_words(q["text"]) for q in quotes))  # type: ignore[union-attr]
    shared = content_words(answer) & quoted
    if len(shared) < min(2, len(quoted)):
        return Rejection("unsupported-answer", "the answer shares almost no words with its quotes")
    return None


# --- near-duplicate questions ------------------------------------------------------------------


def question_key(question: str) -> str:
    """The question reduced to its words, for hashing and comparison."""
    return " ".join(words(question))


def _fold(word: str) -> str:
    return word[:-1] if len(word) > 4 and word.endswith("s") and not word.endswith("ss") else word


def _gist(question: str) -> str:
    """The question's content words in order (plurals folded): "Why do you count the benches on
    streets?" and "Why do you count benches on a street?" both become "count benche street"."""
    tokens = words(question)
    kept = [_fold(w) for w in tokens if w not in STOPWORDS and len(w) >= 3]
    return " ".join(kept) if len(kept) >= 2 else " ".join(tokens)


def question_grams(question: str, n: int = 4) -> Counter[str]:
    text = f" {_gist(question)} "
    return Counter(text[i : i + n] for i in range(max(1, len(text) - n + 1)))


def similarity(a: str, b: str) -> float:
    """Cosine similarity of the character 4-grams of two questions' content words (1.0 = same)."""
    return _cosine(question_grams(a), question_grams(b))


_DIM = 1 << 11  # hashed 4-gram space: small enough to be fast, collisions cost a percent or two


def _vector(grams: Counter[str]) -> Any:
    """The grams hashed (crc32: stable across runs, unlike hash()) into a unit vector."""
    import numpy as np

    vec = np.zeros(_DIM, dtype=np.float32)
    for g, v in grams.items():
        vec[zlib.crc32(g.encode()) & (_DIM - 1)] += v
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm else vec


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


class QuestionIndex:
    """Questions seen so far; `find` returns the earlier one a new question nearly repeats.

    Deterministic: the answer depends only on what was added, in which order. A matrix product
    over hashed 4-gram vectors finds candidates (fast for thousands of questions); the exact
    cosine of the gram counts decides.
    """

    def __init__(self, threshold: float = DUPLICATE_THRESHOLD) -> None:
        import numpy as np

        self.threshold = threshold
        self._items: list[tuple[str, str, Counter[str]]] = []  # (label, question, grams)
        self._matrix = np.zeros((64, _DIM), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, question: str, label: str = "") -> None:
        import numpy as np

        grams = question_grams(question)
        if len(self._items) == len(self._matrix):
            self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
        self._matrix[len(self._items)] = _vector(grams)
        self._items.append((label, question, grams))

    def find(self, question: str) -> tuple[str, str, float] | None:
        """(label, earlier question, similarity) of the closest earlier near-duplicate, or None."""
        import numpy as np

        if not self._items:
            return None
        grams = question_grams(question)
        vec = _vector(grams)
        nz = np.flatnonzero(vec)  # ~60 of the columns: a small product, no BLAS call
        approx = (self._matrix[: len(self._items), nz] * vec[nz]).sum(axis=1)
        best: tuple[str, str, float] | None = None
        # A hash collision moves the approximate cosine by a percent or two (measured: at most
        # 0.011 down for similar questions), so a margin keeps every true match among the
        # candidates; they are checked exactly, most similar first, until none can do better.
        margin = 0.03
        candidates = np.flatnonzero(approx >= self.threshold - margin)
        for i in candidates[np.argsort(-approx[candidates], kind="stable")]:
            if best is not None and approx[i] < best[2] - margin:
                break
            label, text, other = self._items[int(i)]
            sim = _cosine(grams, other)
            if sim >= self.threshold and (best is None or sim > best[2]):
                best = (label, text, sim)
        return best
