"""The absence check for boundary pairs and probes: is a question one her writing answers?

    check = absence_check(documents, answerable_questions(active_pairs))
    coverage, hit = check.score("What do you make of rye starters?")
    check.answers(question)          # coverage >= threshold: her writing covers it, not a boundary
    write_calibration(ws, check)     # data/boundary.json: the threshold and how it was found

Decided in code, not by a judge: `retrieval`'s BM25 index over the passages of EVERY document
(not just the batch's) gives each question a coverage, 0..1, comparable between questions. The
threshold is calibrated on the corpus's own answered questions (the accepted pairs of the answer
kinds in data/pairs/): a boundary question must cover less of her writing than all but the lowest
tenth of those. With fewer than five to go on, retrieval's default threshold stands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..grounding import BOUNDARY
from ..retrieval import Hit, SourceIndex, build_index
from ..sources.documents import Document
from ..textfmt import utc_now
from ..workspace import Workspace, atomic_write_json

CALIBRATION_FILE = "boundary.json"  # under data/
CALIBRATION_VERSION = 1


def answerable_questions(pairs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The questions of accepted pairs of the answer kinds: questions her documents answer."""
    return [str(p["question"]) for p in pairs if p.get("type") != BOUNDARY and p.get("question")]


@dataclass(frozen=True)
class AbsenceCheck:
    """The index over every document, with the threshold that tells covered from absent."""

    index: SourceIndex

    @property
    def threshold(self) -> float:
        return float(self.index.threshold)

    @property
    def calibration(self) -> dict[str, Any]:
        return dict(self.index.calibration) or {"threshold": self.threshold, "questions": 0, "method": "default"}

    def score(self, question: str) -> tuple[float, Hit | None]:
        """(coverage, the passage that covers the question best), as `SourceIndex.coverage` scores it."""
        hits = self.index.search(question, k=5)
        best = max(hits, key=lambda h: h.coverage, default=None)
        return (round(best.coverage, 4), best) if best else (0.0, None)

    def answers(self, question: str) -> bool:
        return self.score(question)[0] >= self.threshold

    def detail(self, coverage: float, hit: Hit | None) -> str:
        """Why a question counts as answered, for data/rejected.jsonl."""
        where = f", closest passage {hit.passage.doc_id} line {hit.passage.line}" if hit else ""
        return f"her writing answers it: coverage {coverage:.2f} >= threshold {self.threshold:.2f}{where}"

    def describe(self) -> str:
        """One phrase for reports: the threshold and where it came from."""
        cal = self.calibration
        if cal.get("method") == "default":
            return (f"absence threshold {self.threshold:.2f} (the default: {cal.get('questions', 0)} answered "
                    f"questions, fewer than 5, to calibrate on)")
        return (f"absence threshold {self.threshold:.2f} (calibrated: the {cal.get('method')} coverage of "
                f"{cal.get('questions')} answered questions, median {cal.get('median_answerable', 0):.2f})")


def absence_check(documents: Sequence[Document], answerable: Sequence[str]) -> AbsenceCheck:
    """The absence check over `documents`, calibrated on `answerable` questions."""
    return AbsenceCheck(build_index(documents, answerable=list(answerable)))


def write_calibration(ws: Workspace, check: AbsenceCheck) -> None:
    """data/boundary.json: the threshold a run's boundary pairs and probes were checked against."""
    atomic_write_json(ws.data_dir / CALIBRATION_FILE, {
        "version": CALIBRATION_VERSION, **check.calibration, "threshold": check.threshold,
        "passages": len(check.index.passages), "fingerprint": check.index.fingerprint, "time": utc_now(),
    })
