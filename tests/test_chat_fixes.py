"""`/fix` and `/good` in the chat REPL, driven through the real CLI with CliRunner: the multi-line
entry ends at a "." line or at Ctrl-D (input ending inside it), an empty entry saves nothing and
says so in one line, $EDITOR opens when a terminal is attached, and a data/ that cannot be written
costs one line: nothing earlier lost, the conversation goes on."""

from __future__ import annotations

import builtins
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.corrections import corrections_path, read_corrections
from mlx_partner.workspace import Workspace

SYSTEM = "You are a test partner."


@pytest.fixture
def model_dir(tiny_model, tmp_path) -> Path:
    path = tmp_path / "model"
    shutil.copytree(tiny_model, path)
    (path / "system_prompt.txt").write_text(SYSTEM, encoding="utf-8")
    return path


def chat(ws: Path, model_dir: Path, lines: list[str], end: str = "\n"):
    args = ["-w", str(ws), "chat", "--model", str(model_dir), "--max-tokens", "4", "--temp", "0"]
    return CliRunner().invoke(cli, args, input="\n".join(lines) + end)


def saved(ws: Path):
    return read_corrections(Workspace.at(ws)).corrections


def test_fix_takes_lines_until_a_dot_and_the_repl_goes_on(model_dir, tmp_path):
    result = chat(tmp_path, model_dir, ["What is bread for?", "And streets?", "/fix", "Streets are for staying.",
                                        "", "Benches say so.", ".", "/good", "/quit"])
    assert result.exit_code == 0, result.output
    fix, good = saved(tmp_path)
    assert fix.kind == "fix" and fix.question == "And streets?"
    assert fix.correction == "Streets are for staying.\n\nBenches say so."
    assert fix.model == str(model_dir) and fix.run is None
    assert [t["content"] for t in fix.context][0] == "What is bread for?" and len(fix.context) == 2
    assert fix.answer  # the partner's answer it replaces
    assert good.kind == "good" and good.question == "And streets?" and good.answer == fix.answer
    assert f"(Saved your answer as {fix.id} in data/corrections.jsonl" in result.output
    assert f"(Marked the last answer good as {good.id}" in result.output
    assert 'end with a line holding only "."' in result.output


def test_ctrl_d_inside_the_entry_ends_it_and_keeps_it(model_dir, tmp_path):
    result = chat(tmp_path, model_dir, ["Why repair?", "/fix", "Because a thing mended", "is a thing known."], end="")
    assert result.exit_code == 0, result.output
    (fix,) = saved(tmp_path)
    assert fix.correction == "Because a thing mended\nis a thing known."
    assert "Traceback" not in result.output


def test_an_empty_fix_saves_nothing_and_says_so_once(model_dir, tmp_path):
    result = chat(tmp_path, model_dir, ["Why repair?", "/fix", "", "  ", ".", "/fix", ".", "Still here?", "/quit"])
    assert result.exit_code == 0, result.output
    assert result.output.count("(Nothing saved: the correction was empty.)") == 2
    assert not corrections_path(Workspace.at(tmp_path)).exists()
    assert result.output.count(">>> ") >= 4  # the REPL went on and answered the next question


def test_fix_before_any_answer(model_dir, tmp_path):
    result = chat(tmp_path, model_dir, ["/fix", "/good", "/quit"])
    assert "(Nothing to correct yet: ask something first" in result.output
    assert "(Nothing to mark yet" in result.output
    assert not corrections_path(Workspace.at(tmp_path)).exists()


def test_with_an_editor_and_a_terminal_the_editor_opens(model_dir, tmp_path, monkeypatch):
    import mlx_partner.chat.fixes as fixes

    seen = {}

    def fake_edit(text):
        seen["text"] = text
        return "My own answer.\n# a comment line\n" + text

    monkeypatch.setenv("EDITOR", "true")
    monkeypatch.setattr(fixes, "use_editor", lambda: True)
    monkeypatch.setattr(fixes.click, "edit", fake_edit)
    result = chat(tmp_path, model_dir, ["Why benches?", "/fix", "/quit"])
    assert result.exit_code == 0, result.output
    (fix,) = saved(tmp_path)
    assert fix.correction == "My own answer."
    assert "# Question: Why benches?" in seen["text"]


def test_use_editor_needs_a_terminal(monkeypatch):
    from mlx_partner.chat.fixes import use_editor

    monkeypatch.setenv("EDITOR", "vi")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert not use_editor()


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder and its files read-only; as root (which permissions do not stop) refuse writes
    there the way the kernel refuses them for everyone else: PermissionError from open()."""
    made = []

    def make(folder: Path) -> None:
        for path in [*folder.iterdir(), folder]:
            made.append((path, path.stat().st_mode))
            path.chmod(0o555 if path.is_dir() else 0o444)
        if os.geteuid() != 0:
            return
        real_open, real_os_open = builtins.open, os.open

        def inside(path) -> bool:
            return Path(os.fspath(path)).resolve().parent == folder.resolve()

        def guarded_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and inside(file) and any(c in mode for c in "wax+"):
                raise PermissionError(13, "Permission denied", os.fspath(file))
            return real_open(file, mode, *args, **kwargs)

        def guarded_os_open(path, flags, *args, **kwargs):
            if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_os_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(os, "open", guarded_os_open)

    yield make
    for path, mode in reversed(made):
        path.chmod(mode)


def test_a_read_only_data_folder_is_one_line_and_nothing_is_lost(model_dir, tmp_path, read_only):
    first = chat(tmp_path, model_dir, ["Why bread?", "/fix", "Slow dough.", ".", "/quit"])
    assert first.exit_code == 0, first.output
    path = corrections_path(Workspace.at(tmp_path))
    before = path.read_bytes()
    read_only(path.parent)
    result = chat(tmp_path, model_dir, ["Why streets?", "/fix", "For people.", ".", "/good", "And now?", "/quit"])
    assert result.exit_code == 0, result.output
    refusals = [ln for ln in result.output.splitlines() if "nothing was saved. The conversation goes on." in ln]
    assert len(refusals) == 2 and all("Permission denied" in ln for ln in refusals)
    assert "Traceback" not in result.output
    assert path.read_bytes() == before  # the earlier correction is still there, whole
    assert result.output.count(">>> ") >= 5  # and the REPL answered the question after
    assert [json.loads(line)["correction"] for line in before.decode().splitlines()] == ["Slow dough."]
