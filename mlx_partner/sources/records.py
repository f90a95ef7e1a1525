"""What the workspace records about the sources: data/sources.json, read and written here only.

    recorded = recorded_source_hashes(ws)          # {doc_id: sha256}, {} before any generate
    write_source_hashes(ws, {doc.id: doc.sha256})  # generate and retrain, after a run
    status = document_status(docs, recorded)       # doc id -> new / changed / unchanged

The record is format 1: a flat {doc_id: sha256} map, keys sorted. It carries no "version" key
yet (its readers and the tests treat every top-level key as a document id); a later format
would bump SOURCES_RECORD_VERSION and be told apart here, in `recorded_source_hashes`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import SourceError
from ..workspace import Workspace, atomic_write_json
from .documents import Document

SOURCES_RECORD = "sources.json"  # under data/: {doc_id: sha256} of the documents generate used
SOURCES_RECORD_VERSION = 1  # the flat map; see the module docstring


def recorded_source_hashes(ws: Workspace) -> dict[str, str]:
    """The {doc_id: sha256} map `generate` wrote to data/sources.json ({} before any run)."""
    path = Path(ws.data_dir) / SOURCES_RECORD
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"Could not read {path} ({exc}); delete it and the next `generate` rewrites it.") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise SourceError(f"{path} should map document ids to hashes; delete it and the next `generate` rewrites it.")
    return data


def write_source_hashes(ws: Workspace, hashes: Mapping[str, str] | Iterable[Document]) -> None:
    """Record which document texts the pairs were generated from: a {doc_id: sha256} map, or the
    documents themselves. Written atomically, keys sorted, in the form `recorded_source_hashes` reads."""
    record = dict(hashes) if isinstance(hashes, Mapping) else {d.id: d.sha256 for d in hashes}
    atomic_write_json(Path(ws.data_dir) / SOURCES_RECORD, dict(sorted(record.items())))


def document_status(documents: list[Document], recorded_hashes: dict[str, str]) -> dict[str, str]:
    """doc id -> 'new' (never generated from), 'changed' (text differs) or 'unchanged'."""
    out = {}
    for d in documents:
        old = recorded_hashes.get(d.id)
        out[d.id] = "new" if old is None else ("unchanged" if old == d.sha256 else "changed")
    return out
