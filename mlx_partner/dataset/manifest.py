"""data/dataset.json, the record `dataset` writes last to vouch for the split files.

It holds the report, a content hash of data/{train,valid,test}.jsonl (what `train` records with
each run and checks before training), the settings, and the pair ids of each split (so
`dataset --keep-test` and `retrain` can keep the test split). It carries a "version"; a file
written before versions existed has none and reads as version 1, the same layout.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..workspace import Workspace

SPLITS = ("train", "valid", "test")
MANIFEST_NAME = "dataset.json"
MANIFEST_VERSION = 1  # bump when the layout changes, and teach load_manifest the older ones


def _split_hash(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes() if path.exists() else b"")
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def dataset_hash(ws: Workspace) -> str:
    """A content hash of data/train.jsonl, valid.jsonl and test.jsonl as they are now."""
    return _split_hash([ws.split_path(s) for s in SPLITS])


def manifest_path(ws: Workspace) -> Path:
    """Where the dataset manifest lives: data/dataset.json."""
    return ws.data_dir / MANIFEST_NAME


def load_manifest(ws: Workspace) -> dict[str, Any]:
    """data/dataset.json: the last report, the split hash and the pair ids of each split.

    "version" is filled in (1 when an older release wrote none); a newer version is refused.
    """
    path = manifest_path(ws)
    if not path.exists():
        raise DatasetError(f"{path} does not exist; run `mlx-partner dataset` first.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} cannot be read ({exc}); run `mlx-partner dataset` again.") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path} cannot be read (not a JSON object); run `mlx-partner dataset` again.")
    found = manifest.setdefault("version", 1)
    if not isinstance(found, int) or found > MANIFEST_VERSION:
        raise DatasetError(f"{path} has version {found!r}; this mlx-partner reads up to version "
                           f"{MANIFEST_VERSION}: upgrade mlx-partner, or run `mlx-partner dataset` again.")
    return manifest


def previous_test_ids(ws: Workspace) -> list[str]:
    """The pair ids of the last test split (empty when there is none)."""
    try:
        return list(load_manifest(ws).get("ids", {}).get("test", []))
    except DatasetError:
        return []
