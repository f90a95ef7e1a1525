"""Retrieval over the author's writing: BM25 (`bm25s`) over short passages of her documents.

    index = build_index(documents)
    hits = index.search("why repair before replacing?", k=3)    # [Hit(passage, score, coverage)]
    index.coverage("a question")                                # 0..1: how much of it her writing covers
    index.save(run_dir / "retrieval"); SourceIndex.load(run_dir / "retrieval")

One index serves three jobs: `generate` rejects a boundary question her writing does answer,
`eval` checks held-out questions find the passage their pair cites, and `chat` shows the passages
an answer rests on (or warns that nothing is close). Passages come from the same paragraph-first
chunker `generate` uses (`sources.chunk_document`), at about a paragraph each, so an excerpt points
at a place the author can find.

BM25 ranks passages, but its scores grow with the length of the question, so they cannot be
compared between questions. `coverage` is comparable: the idf-weighted share of the question's
words that one passage (the best of BM25's top five) contains, words her writing never uses
weighing the most. On the example corpus its 60 hand-written questions cover 0.18-1.0 (median
0.49) and a dozen near-domain questions she never wrote about 0.09-0.31 (median 0.19). The
threshold that separates "answered" from "absent" is calibrated per corpus on questions her
documents do answer (see `calibrate_threshold`) and recorded with the index.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .grounding import STOPWORDS
from .sources.chunking import chunk_document
from .sources.documents import Document
from .workspace import atomic_write_json

__all__ = [
    "INDEX_DIR",
    "INDEX_FILE",
    "Hit",
    "Passage",
    "SourceIndex",
    "build_index",
    "calibrate_threshold",
    "copy_index",
    "sources_fingerprint",
]

INDEX_DIR = "retrieval"  # under adapters/<run>/ and models/<run>/
INDEX_FILE = "index.json"
INDEX_VERSION = 1
PASSAGE_TOKENS = 120  # about a paragraph: short enough to show under an answer
K1, B = 1.5, 0.75  # BM25's usual constants (bm25s's defaults)
# Without a calibration, the coverage at which a question counts as answered by her writing: the
# 10th percentile of the example corpus's answerable questions (see the module docstring).
DEFAULT_THRESHOLD = 0.25
RERANK = 5  # coverage is the best over BM25's top passages

_TOKEN = re.compile(r"[a-z0-9]+")


def _fold(word: str) -> str:
    """A light stemmer: plural and common suffixes folded, so "benches" finds "bench"."""
    for suffix, keep in (("ies", "y"), ("sses", "ss"), ("ches", "ch"), ("shes", "sh"), ("es", "e"),
                         ("s", ""), ("ing", ""), ("ed", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: len(word) - len(suffix)] + keep
    return word


def tokens(text: str) -> list[str]:
    """The words BM25 sees: lower-cased, stopwords out, lightly stemmed."""
    text = text.lower().replace("\u2019", "'")
    return [_fold(w) for w in _TOKEN.findall(text) if w not in STOPWORDS and len(w) > 1]


@dataclass(frozen=True)
class Passage:
    doc_id: str  # the document's path under sources/
    title: str
    line: int  # 1-based line of the passage's start in the document's text
    start: int  # offsets into Document.text
    end: int
    text: str


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float  # raw BM25
    coverage: float  # idf-weighted share of the question's words this passage contains, 0..1


def sources_fingerprint(documents: Iterable[Document]) -> str:
    """One hash over the documents' ids and content hashes: changes when the sources do."""
    import hashlib

    raw = "\n".join(f"{d.id}\t{d.sha256}" for d in sorted(documents, key=lambda d: d.id))
    return hashlib.sha256(raw.encode()).hexdigest()


def passages_of(documents: Sequence[Document]) -> list[Passage]:
    out = []
    for doc in documents:
        for chunk in chunk_document(doc, PASSAGE_TOKENS):
            text = chunk.text.strip()
            if not text:
                continue
            lead = len(chunk.text) - len(chunk.text.lstrip())
            start = chunk.start + lead
            line = doc.text.count("\n", 0, start) + 1
            out.append(Passage(doc.id, doc.title, line, start, start + len(text), text))
    return out


class SourceIndex:
    """BM25 over passages, with the per-corpus threshold that tells covered from absent."""

    def __init__(self, passages: Sequence[Passage], fingerprint: str,
                 threshold: float = DEFAULT_THRESHOLD, calibration: dict | None = None):
        import bm25s

        self.passages = tuple(passages)
        self.fingerprint = fingerprint
        self.threshold = threshold
        self.calibration = calibration or {}
        corpus = [tokens(p.text) for p in self.passages]
        self._words = [frozenset(toks) for toks in corpus]
        self._df = Counter(t for toks in corpus for t in set(toks))
        self._bm25 = bm25s.BM25(k1=K1, b=B, method="lucene")
        if self.passages:
            self._bm25.index(corpus, show_progress=False)

    def _idf(self, token: str) -> float:
        n, df = len(self.passages), self._df.get(token, 0)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def _coverage(self, query: set[str], i: int) -> float:
        total = sum(self._idf(t) for t in query)
        return sum(self._idf(t) for t in query & self._words[i]) / total if total else 0.0

    def search(self, question: str, k: int = 3) -> list[Hit]:
        """The `k` passages closest to `question`, best first (none when nothing shares a word)."""
        query = tokens(question[:4000])  # a 50 KB paste: its first part says what it is about
        known = [t for t in query if t in self._df]
        if not self.passages or not known:
            return []
        scores = self._bm25.get_scores(known)
        order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:k]
        words = set(query)
        return [Hit(self.passages[i], float(scores[i]), self._coverage(words, i))
                for i in order if scores[i] > 0]

    def coverage(self, question: str) -> float:
        """How much of the question one passage of her writing covers, 0..1 (module docstring)."""
        hits = self.search(question, k=RERANK)
        return max((h.coverage for h in hits), default=0.0)

    def covers(self, question: str) -> bool:
        return self.coverage(question) >= self.threshold

    # --- on disk -------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """One JSON file: passages, fingerprint, threshold. The BM25 matrix is rebuilt on load
        (a few milliseconds for hundreds of passages), so the file stays readable and portable."""
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / INDEX_FILE, {
            "version": INDEX_VERSION, "fingerprint": self.fingerprint, "threshold": self.threshold,
            "calibration": self.calibration, "passages": [asdict(p) for p in self.passages],
        })

    @classmethod
    def load(cls, folder: Path) -> SourceIndex | None:
        """The index saved in `folder`, or None when there is none (or it cannot be read)."""
        try:
            data = json.loads((folder / INDEX_FILE).read_text())
            passages = [Passage(**p) for p in data["passages"]]
            return cls(passages, data["fingerprint"], float(data.get("threshold", DEFAULT_THRESHOLD)),
                       data.get("calibration"))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def calibrate_threshold(index: SourceIndex, answerable: Sequence[str], quantile: float = 0.1) -> dict:
    """A threshold from questions the documents do answer: a boundary question must cover less
    of her writing than all but the lowest `quantile` of them. Returns the record to keep."""
    scores = sorted(index.coverage(q) for q in answerable if q.strip())
    if len(scores) < 5:
        return {"threshold": DEFAULT_THRESHOLD, "questions": len(scores), "method": "default"}
    pos = quantile * (len(scores) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    value = scores[lo] + (scores[hi] - scores[lo]) * (pos - lo)
    # Never so low that near-domain questions (which share the field's words) all count as covered.
    threshold = max(value, 0.15)
    return {"threshold": round(threshold, 4), "questions": len(scores), "method": f"p{int(quantile * 100)}",
            "median_answerable": round(scores[len(scores) // 2], 4)}


def build_index(documents: Sequence[Document], answerable: Sequence[str] = ()) -> SourceIndex:
    """An index over `documents`, its threshold calibrated on `answerable` questions when given."""
    index = SourceIndex(passages_of(documents), sources_fingerprint(documents))
    if answerable:
        record = calibrate_threshold(index, answerable)
        index.threshold, index.calibration = record["threshold"], record
    return index


# --- the run's index, carried into the fused model (fuse) ----------------------------------------


def copy_index(run_dir: Path, model_dir: Path) -> bool:
    """Copy adapters/<run>/retrieval/ into a model folder, so the fused model cites what its run
    was trained on. False when the run has no index (trained before there was one)."""
    source = Path(run_dir) / INDEX_DIR
    if not (source / INDEX_FILE).is_file():
        return False
    shutil.copytree(source, Path(model_dir) / INDEX_DIR, dirs_exist_ok=True)
    return True
