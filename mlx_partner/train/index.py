"""The run's index of the author's writing: built by `train`, saved in adapters/<run>/retrieval/.

    record, message = save_run_index(ws, run_dir)    # record goes into the manifest (None: no index)
    index = workspace_index(ws, documents)           # the same index, in memory (chat's fallback)

The index covers the documents in sources/ (the ones `generate` used) and its "is this question
covered?" threshold is calibrated on the dataset's answerable questions: the training pairs whose
kind is not `boundary` (read back from the pair files data/dataset.json names). `fuse` copies the
folder into models/<run>/ and `chat` cites from it. A resumed run keeps its index when the
sources have not changed since (the fingerprint); otherwise it is built again, in a few tens of
milliseconds for the example corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..dataset.manifest import load_manifest
from ..dataset.pairs import read_pairs
from ..errors import PartnerError
from ..retrieval import INDEX_DIR, SourceIndex, build_index, sources_fingerprint
from ..sources.documents import Document, load_documents
from ..workspace import Workspace

BOUNDARY = "boundary"  # the pair kind that declines: not an answerable question


def answerable_questions(ws: Workspace) -> list[str]:
    """The questions of the dataset's training pairs that her writing answers (kind not boundary);
    empty when there is no dataset or its pair files are gone."""
    try:
        manifest = load_manifest(ws)
        files = [Path(f) for f in manifest.get("files", []) if Path(f).is_file()]
        train_ids = set(manifest.get("ids", {}).get("train", []))
        pairs = read_pairs(files).pairs if files else []
    except (PartnerError, OSError):
        return []
    return [p.question for p in pairs if p.id in train_ids and p.kind != BOUNDARY]


def workspace_index(ws: Workspace, documents: Sequence[Document]) -> SourceIndex:
    """An index over `documents`, calibrated on the dataset's answerable questions when there are
    enough of them (else retrieval's default threshold)."""
    return build_index(documents, answerable=answerable_questions(ws))


def index_record(index: SourceIndex, documents: int) -> dict[str, Any]:
    """What the manifest says about the run's index."""
    return {"folder": INDEX_DIR, "passages": len(index.passages), "documents": documents,
            "fingerprint": index.fingerprint, "threshold": index.threshold,
            "calibration": index.calibration}


def save_run_index(ws: Workspace, run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """Build (or keep) adapters/<run>/retrieval/; returns (the manifest's record, a line to say).

    No readable sources is not an error for training: the record is None, and the line says that
    chat will not cite passages and why."""
    try:
        documents, _skipped = load_documents(ws.sources_dir)
    except PartnerError as exc:
        return None, f"No index of your writing for chat's citations: {str(exc).rstrip('.')}."
    folder = run_dir / INDEX_DIR
    index = SourceIndex.load(folder)
    kept = index is not None and index.fingerprint == sources_fingerprint(documents)
    if index is None or not kept:
        index = workspace_index(ws, documents)
        index.save(folder)
    how = "kept (sources unchanged)" if kept else "saved"
    return index_record(index, len(documents)), (
        f"Index of your writing: {len(index.passages)} passages from {len(documents)} document(s), "
        f"threshold {index.threshold:g}, {how} in {run_dir.name}/{INDEX_DIR}/.")
