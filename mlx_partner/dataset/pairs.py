"""Reading question/answer pairs: `generate`'s files and hand-written {question, answer} JSONL.

    read = read_pairs(pair_files(ws, extra=[Path("mine.jsonl")]))
    kept, dropped = drop_duplicates(read.pairs)

A line that cannot be used is named as file:line and skipped; a pair of a kind other than
genuine, scenario or pushback is kept, with a warning. A hand-written pair without an id gets a
stable one from its text, so re-running `dataset` puts it in the same split.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from ..grounding import KINDS
from ..workspace import Workspace


@dataclass(frozen=True)
class Pair:
    """One question/answer pair, from `generate` or written by hand."""

    id: str
    question: str
    answer: str
    theme: str
    kind: str
    origin: str  # file:line
    sources: tuple[str, ...] = ()  # the documents the pair cites (ids under sources/)


def _stable_id(question: str, answer: str) -> str:
    return "hand-" + hashlib.sha1(f"{question}\n{answer}".encode()).hexdigest()[:12]


def parse_pair(record: dict, origin: str, default_theme: str) -> tuple[Pair | None, str]:
    """A Pair from one JSON object, or (None, why it cannot be used)."""
    question, answer = record.get("question"), record.get("answer")
    if not isinstance(question, str) or not question.strip():
        return None, "no question"
    if not isinstance(answer, str) or not answer.strip():
        return None, "no answer"
    kind = record.get("type", record.get("kind")) or "genuine"
    theme = record.get("theme") or record.get("batch") or default_theme
    pid = record.get("id")
    pid = str(pid) if pid not in (None, "") else _stable_id(question.strip(), answer.strip())
    cited = record.get("sources")
    sources = tuple(str(s) for s in cited if isinstance(s, str) and s.strip()) if isinstance(cited, list) else ()
    return Pair(pid, question.strip(), answer.strip(), str(theme), str(kind), origin, sources), ""


@dataclass(frozen=True)
class PairsRead:
    """What `read_pairs` found: the usable pairs, the files read, and what was wrong."""

    pairs: list[Pair]
    files: list[str]
    malformed: list[str]  # "file:line: why"
    warnings: list[str]


def _read_file(path: Path, pairs: list[Pair], malformed: list[str]) -> None:
    """Append the usable pairs of one file to `pairs` and its bad lines to `malformed`."""
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            malformed.append(f"{path}:{number}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            malformed.append(f"{path}:{number}: not a JSON object")
            continue
        pair, why = parse_pair(record, f"{path}:{number}", default_theme=path.stem)
        if pair is None:
            malformed.append(f"{path}:{number}: {why}")
            continue
        pairs.append(pair)


def read_pairs(paths: Iterable[Path]) -> PairsRead:
    """Read pair files; bad lines are named file:line and skipped, unknown kinds kept with a warning."""
    pairs: list[Pair] = []
    files: list[str] = []
    malformed: list[str] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"Pairs file {path} does not exist; check the --pairs path.")
        files.append(str(path.resolve()))  # absolute: `retrain` reads the same files again later
        _read_file(path, pairs, malformed)
    unknown = Counter(p.kind for p in pairs if p.kind not in KINDS)
    warnings = [
        f"{n} pair(s) of unknown kind '{k}' kept (known kinds: {', '.join(KINDS)})." for k, n in sorted(unknown.items())
    ]
    return PairsRead(pairs, files, malformed, warnings)


def pair_files(ws: Workspace, extra: Iterable[Path] = ()) -> list[Path]:
    """data/pairs/*.jsonl, then the extra files; a file named twice is read once."""
    files = sorted(ws.pairs_dir.glob("*.jsonl")) if ws.pairs_dir.is_dir() else []
    out: list[Path] = []
    seen: set[Path] = set()
    for path in [*files, *(Path(p) for p in extra)]:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


# --- exact duplicates ----------------------------------------------------------------------------


def duplicate_key(text: str) -> str:
    """`text` folded for exact-duplicate comparison: Unicode, case, punctuation and spacing."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def drop_duplicates(pairs: Sequence[Pair]) -> tuple[list[Pair], list[Pair]]:
    """(kept, dropped): a pair is dropped when its id, or its question and answer, came before."""
    seen_ids: set[str] = set()
    seen_text: set[tuple[str, str]] = set()
    kept: list[Pair] = []
    dropped: list[Pair] = []
    for pair in pairs:
        key = (duplicate_key(pair.question), duplicate_key(pair.answer))
        if pair.id in seen_ids or key in seen_text:
            dropped.append(pair)
            continue
        seen_ids.add(pair.id)
        seen_text.add(key)
        kept.append(pair)
    return kept, dropped
