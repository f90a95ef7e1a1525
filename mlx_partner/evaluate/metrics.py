"""Pure text metrics for eval: word-overlap F1, ROUGE-L and style similarity to the author's sources.

    word_f1("the cat", "the cat sat")       # SQuAD-style bag-of-words F1
    rouge_l("cat the", "the cat")           # 0.5: word order matters, unlike F1
    style = fit_style(source_texts)         # character n-gram TF-IDF over the author's passages
    style.similarity(answer)                # cosine similarity 0..1 to the sources as a whole

No model and no I/O here; whether an answer declines is `mlx_partner.decline.is_decline`.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SourceError

__all__ = ["STYLE_DIM", "STYLE_NGRAMS", "StyleModel", "fit_style", "lcs_length", "rouge_l", "word_f1", "words"]

# --- word overlap ------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*", re.UNICODE)


def words(text: str) -> list[str]:
    """Lowercased word tokens; apostrophes inside a word are kept ("don't" is one word)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _f1(overlap: int, predicted: int, expected: int) -> float:
    precision, recall = overlap / predicted, overlap / expected
    return 2 * precision * recall / (precision + recall)


def word_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-words F1 between two texts (1.0 when both are empty)."""
    pred, ref = words(prediction), words(reference)
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    overlap = sum((Counter(pred) & Counter(ref)).values())
    return _f1(overlap, len(pred), len(ref)) if overlap else 0.0


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, in O(len(a) * len(b)) time and O(len(b)) space."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over word tokens (1.0 when both are empty)."""
    pred, ref = words(prediction), words(reference)
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(pred, ref)
    return _f1(lcs, len(pred), len(ref)) if lcs else 0.0


# --- style: character n-gram TF-IDF -----------------------------------------------------------

STYLE_NGRAMS = (3, 4, 5)
STYLE_DIM = 1 << 18  # hashed features; collisions are rare enough at this size for prose


def _char_ngram_counts(text: str, sizes: Sequence[int] = STYLE_NGRAMS,
                       dim: int = STYLE_DIM) -> tuple[np.ndarray, np.ndarray]:
    """Sparse hashed n-gram counts: (sorted feature indices, counts). crc32, so stable across runs."""
    text = " " + re.sub(r"\s+", " ", text.lower()).strip() + " "
    grams = [text[i : i + n] for n in sizes for i in range(len(text) - n + 1)]
    if not grams:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    index = np.fromiter((zlib.crc32(g.encode("utf-8")) % dim for g in grams), dtype=np.int64, count=len(grams))
    features, counts = np.unique(index, return_counts=True)
    return features, counts.astype(np.float64)


def _passages(text: str, size: int = 1200) -> list[str]:
    """Split a document into paragraph-aligned passages of about `size` characters (for IDF)."""
    out, current = [], ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        current = f"{current}\n\n{para}" if current else para
        if len(current) >= size:
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


@dataclass(frozen=True)
class StyleModel:
    """IDF weights fitted on the author's source passages, and their normalised centroid."""

    idf: np.ndarray
    centroid: np.ndarray
    passages: int

    def vector(self, text: str) -> np.ndarray:
        features, counts = _char_ngram_counts(text, dim=len(self.idf))
        vec = np.zeros(len(self.idf))
        vec[features] = (1.0 + np.log(counts)) * self.idf[features]
        norm = np.linalg.norm(vec)
        return vec / norm if norm else vec

    def similarity(self, text: str) -> float:
        """Cosine similarity (0..1) of `text` to the author's sources as a whole."""
        return float(self.vector(text) @ self.centroid) if text.strip() else 0.0


def fit_style(texts: Iterable[str], dim: int = STYLE_DIM) -> StyleModel:
    """Fit a StyleModel on the author's documents (split into passages so IDF means something)."""
    sparse = [_char_ngram_counts(p, dim=dim) for t in texts for p in _passages(t)]
    if not sparse:
        raise SourceError("There are no source documents to measure style against; add writing to sources/.")
    df = np.zeros(dim)
    for features, _ in sparse:
        df[features] += 1
    idf = np.log((1 + len(sparse)) / (1 + df)) + 1.0
    centroid = np.zeros(dim)
    for features, counts in sparse:
        weights = (1.0 + np.log(counts)) * idf[features]
        centroid[features] += weights / np.linalg.norm(weights)
    centroid /= np.linalg.norm(centroid)
    return StyleModel(idf=idf, centroid=centroid, passages=len(sparse))
