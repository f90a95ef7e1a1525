"""The data a run trains on: data/train.jsonl and valid.jsonl, checked and tokenized.

The splits are tokenized the way mlx-lm's ChatDataset does (the answer-only mask included) and
refused, with the command that fixes them, when `dataset` did not finish writing them, a line is
broken, or a set is smaller than the batch. `dataset_info` is what the manifest records of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TrainSettings
from ..dataset.manifest import dataset_hash, load_manifest, manifest_path
from ..errors import DatasetError, TrainingError
from ..workspace import Workspace, read_jsonl


@dataclass(frozen=True)
class Data:
    """The tokenized splits of one run, with what the manifest records about them."""

    train: list  # (tokens, prompt_offset) per example, mlx-lm's processed chat format
    valid: list
    counts: dict[str, int]
    digest: str
    system_prompt: str
    notes: list[str]

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t, _ in self.train + self.valid]


def check_dataset_hash(ws: Workspace) -> None:
    """Refuse splits that data/dataset.json does not vouch for.

    `dataset` replaces train, valid and test one file at a time and writes dataset.json last, so a
    kill between two renames leaves splits from two different runs (an example can sit in both train
    and valid) beside the old manifest, whose hash then no longer matches. Splits made by hand,
    with no dataset.json, are taken as they are.
    """
    if not manifest_path(ws).exists():
        return
    recorded = load_manifest(ws).get("hash")
    if recorded and dataset_hash(ws) != recorded:
        raise DatasetError(
            f"The dataset files in {ws.data_dir} do not match data/dataset.json (an interrupted "
            "`mlx-partner dataset`?); run `mlx-partner dataset` again."
        )


def _read_chat_records(path: Path) -> list[dict[str, Any]]:
    """The records of one split, each a chat example ending with the assistant's answer."""
    records, bad = read_jsonl(path)
    if bad:
        raise DatasetError(f"{bad[0]}; rebuild the dataset with `mlx-partner dataset`.")
    for n, r in enumerate(records, 1):
        msgs = r.get("messages")
        if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
            raise DatasetError(f"{path}:{n}: not a chat example ending with an assistant message; "
                               "rebuild it with `mlx-partner dataset`.")
    return records


def _tokenize(path: Path, split: str, tokenizer: Any, s: TrainSettings, notes: list[str]) -> list:
    """One split as mlx-lm's ChatDataset processes it, without examples whose answer is cut off."""
    from mlx_lm.tuner.datasets import ChatDataset

    records = _read_chat_records(path)
    ds = ChatDataset(records, tokenizer, mask_prompt=s.mask_prompt)
    try:
        items = [ds.process(r) for r in records]
    except Exception as exc:  # chat templates raise their own errors (e.g. no system role)
        raise TrainingError(f"The base model's chat template rejects {path.name} ({exc}); "
                            "choose another base model.") from None
    keep = [(t, o) for t, o in items if min(len(t), s.max_seq_length) > o]
    if len(keep) < len(items):
        notes.append(f"{len(items) - len(keep)} {split} examples have no answer left within "
                     f"--max-seq-length {s.max_seq_length}; skipped.")
    return keep


def _system_prompt(ws: Workspace) -> str:
    """data/system_prompt.txt, else the system message of the first training example."""
    if ws.system_prompt_path.exists():
        return ws.system_prompt_path.read_text(encoding="utf-8")
    first = (read_jsonl(ws.split_path("train"))[0] or [{}])[0].get("messages", [{}])[0]
    return first.get("content", "") if first.get("role") == "system" else ""


def load_data(ws: Workspace, tokenizer: Any, s: TrainSettings) -> Data:
    """Read data/train.jsonl and valid.jsonl and tokenize them as mlx-lm's ChatDataset does."""
    train_path, valid_path = ws.split_path("train"), ws.split_path("valid")
    if not train_path.exists():
        raise DatasetError(f"No dataset in {ws.data_dir}: run `mlx-partner dataset` first.")
    check_dataset_hash(ws)
    sets, digest, notes = {}, hashlib.sha256(), []
    for split, path in (("train", train_path), ("valid", valid_path)):
        sets[split] = _tokenize(path, split, tokenizer, s, notes)
        digest.update(path.read_bytes() if path.exists() else b"")
    if not sets["valid"]:
        raise DatasetError(f"No validation examples in {valid_path}: run `mlx-partner dataset` (valid_fraction > 0).")
    if len(sets["valid"]) < s.batch_size:
        raise TrainingError(
            f"The validation set has {len(sets['valid'])} examples, fewer than the batch size {s.batch_size}; "
            f"use --batch-size {len(sets['valid'])} or less, or a larger valid_fraction in `mlx-partner dataset`."
        )
    test, _ = read_jsonl(ws.split_path("test"))
    counts = {"train": len(sets["train"]), "valid": len(sets["valid"]), "test": len(test)}
    return Data(sets["train"], sets["valid"], counts, digest.hexdigest(), _system_prompt(ws), notes)


def dataset_info(ws: Workspace, data: Data) -> dict[str, Any]:
    """The dataset's hash as `dataset` wrote it in dataset.json (so `retrain` can compare), else ours."""
    info: dict[str, Any] = {"hash": f"sha256:{data.digest}", "files_sha256": data.digest,
                            "counts": data.counts, "path": str(ws.data_dir)}
    with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
        meta = json.loads(manifest_path(ws).read_text(encoding="utf-8"))
        if meta.get("hash"):
            info["hash"] = meta["hash"]
    return info
