"""The workspace folder: where every stage reads and writes, and how it writes safely.

A workspace is a folder holding `sources/`, `profile.md` and an optional `partner.toml`; the
stages add `data/`, `adapters/`, `models/` and `eval/`. Every file a stage finishes is written
atomically (temp file + fsync + os.replace), logs are append-only JSONL with one fsync'd line
per record, and a lock file keeps two commands from writing one workspace at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PartnerError, WorkspaceLocked

SYSTEM_PROMPT_FILE = "system_prompt.txt"  # in data/ and in every run folder: the same text


@dataclass(frozen=True)
class Workspace:
    """Named paths inside one workspace folder."""

    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> Workspace:
        return cls(Path(path).expanduser().resolve())

    @property
    def sources_dir(self) -> Path:
        return self.root / "sources"

    @property
    def profile_path(self) -> Path:
        return self.root / "profile.md"

    @property
    def config_path(self) -> Path:
        return self.root / "partner.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def pairs_dir(self) -> Path:
        return self.data_dir / "pairs"

    @property
    def rejected_path(self) -> Path:
        return self.data_dir / "rejected.jsonl"

    @property
    def retired_path(self) -> Path:
        return self.data_dir / "retired.jsonl"

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.jsonl"

    @property
    def system_prompt_path(self) -> Path:
        return self.data_dir / SYSTEM_PROMPT_FILE

    def split_path(self, split: str) -> Path:
        """`data/train.jsonl`, `data/valid.jsonl` or `data/test.jsonl`."""
        return self.data_dir / f"{split}.jsonl"

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def lock_path(self) -> Path:
        return self.root / ".mlx-partner.lock"


def partner_home() -> Path:
    """Per-user cache (imported models, the demo model): $MLX_PARTNER_HOME or ~/.cache/mlx-partner."""
    home = os.environ.get("MLX_PARTNER_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "mlx-partner"


# --- safe writes -------------------------------------------------------------------------------


def _disk_error(path: Path, exc: OSError) -> PartnerError:
    if exc.errno == errno.ENOSPC:
        return PartnerError(f"The disk is full while writing {path}; free some space and run the command again (finished work is kept).")
    return PartnerError(f"Could not write {path}: {exc.strerror or exc}.")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    try:  # a folder that cannot be made (a file in the way, no permission) is a plain error too
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _disk_error(path, exc) from exc
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _disk_error(path, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], records: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def append_jsonl(path: str | os.PathLike[str], records: Iterable[Any]) -> None:
    """Append records as whole lines and fsync, so a kill loses at most the line in flight.

    A line cut short by an earlier crash is closed off first, so the new records stay parseable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    if not payload:
        return
    try:
        with open(path, "ab") as f:
            if f.tell() > 0:
                with open(path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        payload = b"\n" + payload
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise _disk_error(path, exc) from exc


@dataclass(frozen=True)
class BadLine:
    """A JSONL line that could not be parsed, named as file:line."""

    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def read_jsonl(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """Read JSON objects, one per line; bad lines (e.g. cut off by a crash) come back separately."""
    path = Path(path)
    records: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    if not path.exists():
        return records, bad
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append(BadLine(path, number, f"not valid JSON ({exc.msg})"))
                continue
            if not isinstance(obj, dict):
                bad.append(BadLine(path, number, "not a JSON object"))
                continue
            records.append(obj)
    return records, bad


# --- the lock ----------------------------------------------------------------------------------
#
# An flock on the lock file: the kernel releases it when its process dies, however it dies, so a
# lock left by a killed command is never mistaken for a live one (and a reused pid cannot keep a
# workspace locked). The file also holds the owner's pid and command, for the refusal message.

_held: set[Path] = set()


def _lock_owner(path: Path) -> str:
    try:
        owner = json.loads(path.read_text() or "{}")
        return f"{owner.get('command', 'unknown')}, pid {int(owner['pid'])}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "unknown"


@contextlib.contextmanager
def workspace_lock(ws: Workspace, command: str) -> Iterator[None]:
    """Hold the workspace's write lock for the duration of `command`.

    A second command refuses at once with a plain message naming the holder. Re-entrant within a
    process: `demo` and `retrain` run other stages under their one lock.
    """
    if ws.root in _held:
        yield
        return
    ws.root.mkdir(parents=True, exist_ok=True)
    path = ws.lock_path
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkspaceLocked(
                f"Another mlx-partner command ({_lock_owner(path)}) is writing this workspace; "
                f"wait for it to finish, or stop it and run again."
            ) from None
        # The holder we raced with may have removed the file after we opened it: lock the live one.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "command": command}).encode())
    _held.add(ws.root)
    try:
        yield
    finally:
        _held.discard(ws.root)
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # releases the flock
