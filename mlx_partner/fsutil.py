"""Replacing a model folder safely: the old one moved aside, the new one renamed into place.

`models import` and `fuse` write a model under a hidden temporary name beside its target, check
it, then `swap_into_place(tmp, target)`. A kill between the two renames leaves the previous
folder in `.<name>.old-<pid>` and no target; `recover_swap(target)` puts it back (and deletes
any spare `.old-*` copy), so the target is always absent or whole.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .testhooks import reached


def swap_into_place(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`, replacing an existing folder only once the new one is complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old-{os.getpid()}") if target.exists() else None
    if old is not None:
        os.replace(target, old)
        reached("swap-moved-aside")  # test-only handshake (testhooks.py): between the renames
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_swap(target: Path) -> None:
    """Undo what a process killed inside `swap_into_place` left: the previous folder moved aside.

    Killed between its two renames, the old folder sits in .<name>.old-<pid> and the target is
    missing: put it back (when it holds a config.json), so `target` is whole again even if the next
    attempt fails too. Any other .old-* folder is a whole spare copy, never to be used again: delete it.
    """
    aside = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if aside and not target.exists() and (aside[-1] / "config.json").is_file():
        os.replace(aside.pop(), target)
    for stale in aside:
        shutil.rmtree(stale, ignore_errors=True)
