"""Test-only handshakes: named points a test can see the product reach, and hold it at. Not for users.

    from .testhooks import reached
    reached("train-checkpoint-saved")      # does nothing unless MLX_PARTNER_TEST_HOOKS is set

With `MLX_PARTNER_TEST_HOOKS=<dir>` in the environment (only the test suite sets it), every
`reached(name)` appends one line (`<pid> <arrival>`) to `<dir>/<name>`, so a test can wait for
the Nth arrival instead of sleeping and hoping. If `<dir>/<name>.hold` exists, the process then
stops there until `<dir>/<name>.go` appears (the test kills it, or lets it go on): a kill "between
the renames" or "with a request in flight" lands exactly there, however busy the machine is.
A `.hold` file holding a number holds only at that arrival (1 = the first); an empty one, at
every arrival. Nothing else changes: with the variable unset, `reached` returns at once.

The points the product marks:
    generate-request        a Messages API request is about to be sent (it is in flight next)
    generate-batch-sent     a message batch was sent and recorded in the ledger; not polled yet
    generate-batch-waiting  a message batch is still processing; about to poll it again
    dataset-split-written   one of train/valid/test.jsonl renamed into place (then the next)
    swap-moved-aside        fuse, models import: the old folder moved aside, the new one not in yet
    train-checkpoint-saved  a checkpoint's files written, named in the manifest, old ones pruned
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

ENV = "MLX_PARTNER_TEST_HOOKS"
HOLD_LIMIT_S = 600.0  # a held process gives up waiting after this long (a test that forgot it)
_lock = threading.Lock()


def reached(name: str) -> None:
    """Mark `name` as reached (test-only, see the module docstring); hold there when asked to."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    root = Path(folder)
    with _lock:  # threads of one process (generate's concurrent requests) count in turn
        marker = root / name
        try:
            arrival = marker.read_bytes().count(b"\n") + 1
        except FileNotFoundError:
            arrival = 1
        with open(marker, "ab") as f:
            f.write(f"{os.getpid()} {arrival}\n".encode())
    hold = root / f"{name}.hold"
    try:
        wanted = hold.read_text().strip()
    except FileNotFoundError:
        return
    if wanted and wanted != str(arrival):
        return
    go, deadline = root / f"{name}.go", time.monotonic() + HOLD_LIMIT_S
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
