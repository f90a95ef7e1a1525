"""Safe writes, append-only logs, and the workspace lock."""

from __future__ import annotations

import errno
import json
import os

import pytest

from mlx_partner.errors import PartnerError, WorkspaceLocked
from mlx_partner.workspace import (
    Workspace,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    workspace_lock,
)


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a" / "b.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]  # no temp files left


def test_full_disk_keeps_old_file_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "kept.txt"
    atomic_write_text(path, "finished work")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(PartnerError, match="disk is full"):
        atomic_write_text(path, "new half-written work")
    monkeypatch.undo()
    assert path.read_text() == "finished work"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]


def test_full_disk_on_append_is_a_plain_error(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(PartnerError, match="disk is full"):
        append_jsonl(tmp_path / "log.jsonl", [{"a": 1}])


def test_append_after_a_torn_line_keeps_records_parseable(tmp_path):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, [{"n": 1}])
    with open(log, "a") as f:  # a crash mid-write leaves half a line
        f.write('{"n": 2, "tru')
    append_jsonl(log, [{"n": 3}])
    records, bad = read_jsonl(log)
    assert [r["n"] for r in records] == [1, 3]
    assert len(bad) == 1 and bad[0].line == 2 and "not valid JSON" in str(bad[0])


@pytest.mark.parametrize(
    "text, good, bad",
    [
        ('{"a": 1}\n{"a": 2}\n', 2, 0),
        ('{"a": 1}\n\n\n{"a": 2}', 2, 0),
        ('{"a": 1}\n[1, 2]\n', 1, 1),
        ("not json\n", 0, 1),
        ("", 0, 0),
    ],
)
def test_read_jsonl_table(tmp_path, text, good, bad):
    path = tmp_path / "x.jsonl"
    path.write_text(text)
    records, errors = read_jsonl(path)
    assert (len(records), len(errors)) == (good, bad)


def test_read_jsonl_missing_file_is_empty(tmp_path):
    assert read_jsonl(tmp_path / "none.jsonl") == ([], [])


def test_lock_refuses_a_second_writer(tmp_path, hold_lock):
    ws = Workspace.at(tmp_path)
    holder = hold_lock(tmp_path, "train")
    with pytest.raises(WorkspaceLocked, match=rf"train, pid {holder.pid}"), workspace_lock(ws, "generate"):
        pass
    assert ws.lock_path.exists()  # the live owner's lock is left alone


def test_lock_of_a_killed_process_is_taken_over(tmp_path, hold_lock):
    ws = Workspace.at(tmp_path)
    holder = hold_lock(tmp_path)
    holder.kill()  # SIGKILL: no cleanup, the lock file stays behind
    holder.wait()
    assert ws.lock_path.exists()
    with workspace_lock(ws, "dataset"):
        assert json.loads(ws.lock_path.read_text())["command"] == "dataset"
    assert not ws.lock_path.exists()


def test_leftover_lock_file_with_a_reused_pid_does_not_block(tmp_path):
    ws = Workspace.at(tmp_path)
    # A lock file from before a reboot, whose pid now belongs to an unrelated live process.
    ws.lock_path.write_text(json.dumps({"pid": os.getpid(), "command": "generate"}))
    with workspace_lock(ws, "train"):
        assert json.loads(ws.lock_path.read_text())["command"] == "train"


def test_lock_is_reentrant_and_released(tmp_path):
    ws = Workspace.at(tmp_path)
    with workspace_lock(ws, "demo"):
        with workspace_lock(ws, "train"):
            assert ws.lock_path.exists()
        assert ws.lock_path.exists()  # the outer holder still owns it
    assert not ws.lock_path.exists()


def test_lock_released_on_error(tmp_path):
    ws = Workspace.at(tmp_path)
    with pytest.raises(RuntimeError), workspace_lock(ws, "train"):
        raise RuntimeError("boom")
    assert not ws.lock_path.exists()
