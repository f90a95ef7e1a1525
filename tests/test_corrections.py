"""data/corrections.jsonl and `mlx-partner corrections`: appended line by line and never lost, a broken
line named as file:line and skipped, one correction removed by id with the rest kept as they were,
and new corrections alone reason enough for `retrain`."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.corrections import (
    CORRECTIONS_VERSION,
    add_correction,
    corrections_path,
    from_record,
    read_corrections,
    remove_correction,
)
from mlx_partner.errors import CorrectionError
from mlx_partner.workspace import Workspace

CONTEXT = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."}]


def invoke(ws: Path, *args: str):
    return CliRunner().invoke(cli, ["-w", str(ws), *args])


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.at(tmp_path)


def test_a_fix_and_a_good_mark_are_appended_with_everything_they_need(ws):
    fix = add_correction(ws, "Why benches?", "Because parks.", correction="Benches say you may stay.",
                         run="run-1", model="/models/tiny", context=CONTEXT)
    good = add_correction(ws, "Is bread slow?", "Yes, and that is the point.", good=True, run="run-1")
    lines = corrections_path(ws).read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["version"] == CORRECTIONS_VERSION and first["kind"] == "fix" and first["id"] == fix.id
    assert first["question"] == "Why benches?" and first["answer"] == "Because parks."
    assert first["correction"] == "Benches say you may stay."
    assert first["run"] == "run-1" and first["model"] == "/models/tiny" and first["context"] == CONTEXT
    assert first["time"].endswith("Z") and "T" in first["time"]
    second = json.loads(lines[1])
    assert second["kind"] == "good" and "correction" not in second and second["id"] == good.id
    found = read_corrections(ws)
    assert [c.id for c in found.corrections] == [fix.id, good.id] and found.bad == []
    assert found.corrections[0].target == "Benches say you may stay."
    assert found.corrections[1].target == "Yes, and that is the point."


def test_an_empty_fix_saves_nothing(ws):
    with pytest.raises(CorrectionError, match="empty; nothing was saved"):
        add_correction(ws, "Why?", "Because.", correction="  \n ")
    assert not corrections_path(ws).exists()


def test_a_broken_line_is_named_and_skipped_and_later_lines_still_read(ws):
    add_correction(ws, "Q1", "A1", correction="Mine 1")
    with open(corrections_path(ws), "a", encoding="utf-8") as f:
        f.write('{"id": "c-cut", "question": "Q2", "answ')  # a line cut off by a crash
    add_correction(ws, "Q3", "A3", good=True)  # appended after: the cut line is closed off first
    with open(corrections_path(ws), "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "c-x", "kind": "fix", "question": "Q4", "answer": "A4"}) + "\n")
        f.write(json.dumps({"version": 99, "id": "c-new", "kind": "fix", "question": "Q", "answer": "A",
                            "correction": "C"}) + "\n")
    found = read_corrections(ws)
    assert [c.question for c in found.corrections] == ["Q1", "Q3"]
    assert [str(b).split(": ", 1)[0] for b in found.bad] == [f"{corrections_path(ws)}:{n}" for n in (2, 4, 5)]
    assert "not valid JSON" in found.bad[0].reason and "no correction" in found.bad[1].reason
    assert "version 99" in found.bad[2].reason

    listed = invoke(ws.root, "corrections", "list")
    assert listed.exit_code == 0
    assert f"Skipped {corrections_path(ws)}:2: not valid JSON" in listed.output
    assert "Q1" in listed.output and "Q3" in listed.output


def test_remove_one_keeps_every_other_line_as_it_was(ws):
    keep1 = add_correction(ws, "Q1", "A1", correction="Mine 1")
    gone = add_correction(ws, "Q2", "A2", correction="Mine 2")
    with open(corrections_path(ws), "a", encoding="utf-8") as f:
        f.write("not json at all\n")
    keep2 = add_correction(ws, "Q3", "A3", good=True)
    before = corrections_path(ws).read_text().splitlines()

    result = invoke(ws.root, "corrections", "remove", gone.id)
    assert result.exit_code == 0, result.output
    assert f"Removed {gone.id} (fix): Q2" in result.output
    after = corrections_path(ws).read_text().splitlines()
    assert after == [before[0], before[2], before[3]]  # the broken line too, byte for byte
    assert [c.id for c in read_corrections(ws).corrections] == [keep1.id, keep2.id]

    again = invoke(ws.root, "corrections", "remove", gone.id)
    assert again.exit_code == 1 and f"No correction '{gone.id}'" in again.output and "Traceback" not in again.output
    assert corrections_path(ws).read_text().splitlines() == after


def test_appends_during_a_removal_are_not_lost(ws):
    first = add_correction(ws, "Q0", "A0", correction="C0")
    added = []

    def append_many():
        for i in range(30):
            added.append(add_correction(ws, f"Q{i + 1}", "A", correction="C").id)

    writer = threading.Thread(target=append_many)
    writer.start()
    remove_correction(ws, first.id)
    writer.join()
    assert [c.id for c in read_corrections(ws).corrections] == added


def test_list_table_and_json(ws):
    fix = add_correction(ws, "What is a good street?", "Wide lanes.", correction="One with benches.", run="run-7")
    table = invoke(ws.root, "corrections", "list")
    assert table.exit_code == 0
    line = next(ln for ln in table.output.splitlines() if ln.startswith(fix.id))
    assert "fix" in line and "run-7" in line and "One with benches." in line
    as_json = json.loads(invoke(ws.root, "corrections", "list", "--json").output)
    assert as_json[0]["id"] == fix.id and as_json[0]["correction"] == "One with benches."


def test_list_without_corrections(ws):
    result = invoke(ws.root, "corrections", "list")
    assert result.exit_code == 0 and "No corrections yet" in result.output and "/fix" in result.output


@pytest.mark.parametrize("record, reason", [
    ({"id": "c", "kind": "fix", "question": "Q", "answer": "A"}, "no correction"),
    ({"id": "c", "kind": "meh", "question": "Q", "answer": "A"}, "kind 'meh'"),
    ({"id": "c", "kind": "good", "question": "", "answer": "A"}, "no question"),
    ({"id": "c", "kind": "good", "question": "Q", "answer": "A", "context": ["hi"]}, "context"),
])
def test_from_record_rejects(record, reason):
    with pytest.raises(ValueError, match=reason):
        from_record(record)


def test_a_line_without_a_version_reads_as_version_1():
    c = from_record({"id": "c-1", "kind": "good", "question": "Q", "answer": "A"})
    assert c.kind == "good" and c.target == "A"


def test_new_corrections_alone_are_a_change_for_retrain(ws, monkeypatch):
    import mlx_partner.retrain as retrain

    manifest = {"run": "run-1", "started": "2026-01-01T00:00:00Z", "settings": {}}
    monkeypatch.setattr(retrain, "_latest", lambda _ws: (ws.adapters_dir / "run-1", manifest))
    monkeypatch.setattr(retrain, "prepare", lambda *a, **k: _Nothing())
    monkeypatch.setattr(retrain, "_dataset_outdated", lambda *a: "")
    from mlx_partner.config import Settings

    assert retrain.pending_changes(ws, Settings()).reasons == ()
    add_correction(ws, "Q", "A", correction="C")
    changes = retrain.pending_changes(ws, Settings())
    assert changes.anything and changes.new_corrections == 1
    assert changes.reasons == ("1 new correction from chat since run run-1",)


class _Nothing:
    """What generate's `prepare` says when no document changed and nothing is left to send."""

    previous_hashes: dict = {}
    hashes: dict = {}
    plans: tuple = ()
    stale: tuple = ()
