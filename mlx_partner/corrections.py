"""data/corrections.jsonl: what the author said the partner should have answered, or marked right.

    c = add_correction(ws, question, answer, correction="What I would say ...", run=..., model=...)
    c = add_correction(ws, question, answer, good=True)      # `/good`: the answer was right
    found = read_corrections(ws)                             # .corrections, .bad (file:line, skipped)
    remove_correction(ws, c.id)                              # the file rewritten without it

`chat` appends (`/fix`, `/good`), `dataset` reads them as hand-written pairs, `retrain` counts the
new ones as a change, and `mlx-partner corrections` lists and removes them. One JSON object a line,
each with a "version" (CORRECTIONS_VERSION; missing means 1): id, kind (fix | good), question, the
partner's answer, the author's correction (fix only), run, model, time (UTC ISO 8601) and the
conversation before the question (context: [{role, content}]).

An addition is one fsync'd line appended (a kill loses at most that line; earlier lines are never
rewritten); a removal rewrites the file atomically, keeping every other line, broken ones too, as
it was. Both hold data/.corrections.lock (an flock, as the workspace lock is), so a removal never
drops a line that chat appended meanwhile. `chat` runs beside a `train` that holds the workspace
lock, so corrections do not take that one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CorrectionError, PartnerError
from .textfmt import utc_now
from .workspace import BadLine, Workspace, append_jsonl, atomic_write_text

CORRECTIONS_VERSION = 1
CORRECTIONS_FILE = "corrections.jsonl"
LOCK_FILE = ".corrections.lock"
KINDS = ("fix", "good")


def corrections_path(ws: Workspace) -> Path:
    return ws.data_dir / CORRECTIONS_FILE


@dataclass(frozen=True)
class Correction:
    """One correction: a `/fix` (the author's own answer) or a `/good` mark on the partner's answer."""

    id: str
    kind: str  # fix | good
    question: str
    answer: str  # what the partner answered
    correction: str | None = None  # what the author would say (fix); None for good
    run: str | None = None
    model: str | None = None
    time: str = ""
    context: tuple[dict[str, str], ...] = field(default_factory=tuple)  # the turns before the question

    @property
    def target(self) -> str:
        """The answer to train on: the author's correction, or the partner's answer she marked good."""
        return self.correction if self.kind == "fix" and self.correction else self.answer

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"version": CORRECTIONS_VERSION, "id": self.id, "kind": self.kind,
                                  "question": self.question, "answer": self.answer}
        if self.kind == "fix":
            record["correction"] = self.correction
        record.update({"run": self.run, "model": self.model, "time": self.time, "context": list(self.context)})
        return record


def from_record(record: dict[str, Any]) -> Correction:
    """A Correction from one line's object; ValueError says what is wrong with it."""
    version = record.get("version", 1)
    if not isinstance(version, int) or version > CORRECTIONS_VERSION:
        raise ValueError(f"version {version!r} (this mlx-partner reads up to {CORRECTIONS_VERSION})")
    kind = record.get("kind", "fix")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    for key in ("id", "question", "answer") + (("correction",) if kind == "fix" else ()):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise ValueError(f"no {key}")
    context = record.get("context") or []
    if not isinstance(context, list) or not all(isinstance(t, dict) and isinstance(t.get("content"), str)
                                                and isinstance(t.get("role"), str) for t in context):
        raise ValueError("context is not a list of {role, content} turns")
    return Correction(
        id=record["id"], kind=kind, question=record["question"], answer=record["answer"],
        correction=record.get("correction") if kind == "fix" else None,
        run=record.get("run"), model=record.get("model"), time=str(record.get("time") or ""),
        context=tuple({"role": t["role"], "content": t["content"]} for t in context),
    )


def new_correction(question: str, answer: str, *, correction: str | None = None, good: bool = False,
                   run: str | None = None, model: str | None = None,
                   context: Sequence[dict[str, str]] = ()) -> Correction:
    """A correction stamped with a fresh id and the time (pure apart from those two)."""
    has_text = bool(correction and correction.strip())
    if good and has_text:
        raise CorrectionError("A correction is either the author's own answer or a `good` mark, not both.")
    if not good and not has_text:
        raise CorrectionError("The correction is empty; nothing was saved.")
    if not question.strip():
        raise CorrectionError("There is no question to correct the answer of.")
    return Correction(
        id=f"c-{uuid.uuid4().hex[:8]}", kind="good" if good else "fix", question=question, answer=answer,
        correction=None if good else correction.strip() if correction else None, run=run, model=model,
        time=utc_now(), context=tuple({"role": t["role"], "content": t["content"]} for t in context),
    )


# --- the file ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(ws: Workspace) -> Iterator[None]:
    """Hold data/.corrections.lock (an flock, released by the kernel if the holder dies)."""
    path = ws.data_dir / LOCK_FILE
    try:
        ws.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CorrectionError(f"Could not write to {ws.data_dir} ({exc.strerror or exc}); "
                              "nothing was saved.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add_correction(ws: Workspace, question: str, answer: str, **fields: Any) -> Correction:
    """Append one correction (see `new_correction` for the fields) as an fsync'd line."""
    c = new_correction(question, answer, **fields)
    with _locked(ws):
        try:
            append_jsonl(corrections_path(ws), [c.to_record()])
        except PartnerError as exc:
            raise CorrectionError(f"{exc} Nothing was saved.") from None
    return c


@dataclass(frozen=True)
class Corrections:
    corrections: list[Correction]
    bad: list[BadLine]  # lines skipped, named as file:line


def _parse(path: Path, number: int, line: str) -> Correction | BadLine:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return BadLine(path, number, f"not valid JSON ({exc.msg})")
    if not isinstance(obj, dict):
        return BadLine(path, number, "not a JSON object")
    try:
        return from_record(obj)
    except ValueError as exc:
        return BadLine(path, number, f"not a correction: {exc}")


def read_corrections(ws: Workspace) -> Corrections:
    """Every correction in data/corrections.jsonl, oldest first; broken lines skipped and named."""
    path = corrections_path(ws)
    good: list[Correction] = []
    bad: list[BadLine] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    parsed = _parse(path, number, line)
                    (bad if isinstance(parsed, BadLine) else good).append(parsed)  # type: ignore[arg-type]
    except FileNotFoundError:
        pass
    return Corrections(good, bad)


def remove_correction(ws: Workspace, correction_id: str) -> Correction:
    """Remove one correction by id: the file is rewritten atomically with every other line as it was."""
    path = corrections_path(ws)
    with _locked(ws):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        except FileNotFoundError:
            lines = []
        keep, removed = [], None
        for number, line in enumerate(lines, start=1):
            parsed = _parse(path, number, line) if line.strip() else None
            if isinstance(parsed, Correction) and parsed.id == correction_id and removed is None:
                removed = parsed
                continue
            keep.append(line if line.endswith("\n") else line + "\n")
        if removed is None:
            raise CorrectionError(f"No correction '{correction_id}' in {path}; "
                                  "`mlx-partner corrections list` shows their ids.")
        atomic_write_text(path, "".join(keep))
    return removed


def corrections_since(ws: Workspace, when: str) -> list[Correction]:
    """The corrections made after `when` (a UTC ISO 8601 time, such as a run's start)."""
    return [c for c in read_corrections(ws).corrections if c.time > when]
