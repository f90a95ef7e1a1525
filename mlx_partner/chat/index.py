"""The index chat cites from: the run's own (adapters/<run>/ or models/<run>/retrieval/), checked
against the sources as they are now.

    citer = open_citer(ws, target, show=True, rag=False)   # never raises: citations just go off
    citer.notes                                            # what to say once, at start-up
    citer.cite(question, answer)                           # a citations.Citation
    citer.context(question)                                # the passages --rag puts in the prompt

- The run's index matches the sources (same fingerprint): it is used as it is (measured on the
  example corpus: ~15 ms to load after mlx-lm is imported, which chat does anyway).
- The sources changed since the run: the index is built again from the current sources (the
  run's calibrated threshold kept), and chat says the citations come from the current sources.
- A run trained before runs had an index: one is built from the current sources, calibrated on
  the dataset, saved into adapters/<run>/retrieval/ (so this is said once), and if any document
  changed after the run was trained, chat says the citations come from the current sources.
- Sources missing or unreadable: chat works and citations are off, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PartnerError
from ..retrieval import INDEX_DIR, Passage, SourceIndex, passages_of, sources_fingerprint
from ..runs import ADAPTER_WEIGHTS
from ..sources.decoding import decode_text, normalise_newlines
from ..sources.documents import TEXT_SUFFIXES, Document, load_documents
from ..train.index import workspace_index
from ..workspace import Workspace
from .citations import Citation
from .passages import cite, rag_passages
from .target import ChatTarget


@dataclass
class Citer:
    """The index and texts chat cites from, and the switches: shown (`/sources`) and --rag."""

    index: SourceIndex | None = None
    texts: list[str] = field(default_factory=list)  # her documents, for the quote check
    show: bool = True
    rag: bool = False
    off: str = ""  # why citations are off ('' when they are on)
    notes: list[str] = field(default_factory=list)  # said once, when chat starts
    offsets: dict[str, int] = field(default_factory=dict)  # {doc_id: front-matter lines}

    @property
    def on(self) -> bool:
        return self.index is not None and not self.off

    def context(self, question: str) -> list[Passage]:
        """The passages to put before the question in the prompt (with --rag), else none."""
        if not self.rag or self.index is None or self.off:
            return []
        return rag_passages(self.index, question)

    def cite(self, question: str, answer: str) -> Citation:
        if self.index is None or self.off:
            return Citation(off=self.off or "Citations are off.")
        return cite(self.index, self.texts, question, answer, offsets=self.offsets)


def index_folders(ws: Workspace, target: ChatTarget) -> list[Path]:
    """Where the target's index may be: the model folder's own (fused), then its run's."""
    folders = []
    model = Path(target.model).expanduser()
    if model.is_dir():
        folders.append(model / INDEX_DIR)
    if target.run_name:
        folders.append(ws.adapters_dir / target.run_name / INDEX_DIR)
    return folders


def line_offsets(documents: Sequence[Document]) -> dict[str, int]:
    """{doc_id: lines in the file before its text} (its front matter), so a cited line is the
    line an editor shows. Documents that are not plain text (PDF, Word) count from their text."""
    out = {}
    for doc in documents:
        if doc.path.suffix.lower() not in TEXT_SUFFIXES:
            continue
        try:
            whole = normalise_newlines(decode_text(doc.path.read_bytes())[0])
        except (OSError, ValueError):
            continue
        at = whole.find(doc.text[:200])
        if at > 0:
            out[doc.id] = whole.count("\n", 0, at)
    return out


def _changed_after(documents: Sequence[Document], run_dir: Path) -> bool:
    """True when a document was modified after the run's adapters were written."""
    try:
        trained = (run_dir / ADAPTER_WEIGHTS).stat().st_mtime
        return any(d.path.stat().st_mtime > trained + 1 for d in documents)
    except OSError:
        return False


def open_citer(ws: Workspace, target: ChatTarget, *, show: bool = True, rag: bool = False) -> Citer:
    """The Citer for `target`: its run's index checked against the current sources (see module)."""
    citer = Citer(show=show, rag=rag)
    try:
        documents, _skipped = load_documents(ws.sources_dir)
    except PartnerError as exc:
        citer.off = f"Citations are off: {_first_sentence(str(exc))}."
        return citer
    citer.texts = [d.text for d in documents]
    citer.offsets = line_offsets(documents)
    fingerprint = sources_fingerprint(documents)
    folders = index_folders(ws, target)
    saved = next((i for i in (SourceIndex.load(f) for f in folders) if i is not None), None)
    run = target.run_name
    current = (f"your sources changed since run {run} was trained: citations come from the current sources"
               if run else "your sources changed since this model's index was built: citations come from "
               "the current sources")
    if saved is not None and saved.fingerprint == fingerprint:
        citer.index = saved
    elif saved is not None:
        citer.index = SourceIndex(passages_of(documents), fingerprint, saved.threshold, saved.calibration)
        citer.notes.append(f"({current[0].upper()}{current[1:]}.)")
    else:
        citer.index = workspace_index(ws, documents)
        run_dir = ws.adapters_dir / run if run else None
        if run_dir is not None and run_dir.is_dir():
            note = (f"(Run {run} has no index of your writing (it was trained before runs had one): "
                    f"built one from sources/ now")
            try:
                citer.index.save(run_dir / INDEX_DIR)
                note += f" and saved it in {run}/{INDEX_DIR}/"
            except (OSError, PartnerError):
                pass
            if _changed_after(documents, run_dir):
                note += f"; {current}"
            citer.notes.append(note + ".)")
    return citer


def _first_sentence(text: str) -> str:
    """The reason, without the advice after it (the user asked to chat, not to fix sources/)."""
    head = text.split("; ", 1)[0].strip()
    return head.rstrip(".")
