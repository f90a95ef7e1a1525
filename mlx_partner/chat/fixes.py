"""`/fix` and `/good` in the chat REPL: what the author would have said, or a mark that the partner
said it, appended to data/corrections.jsonl (see `corrections`) for the next `retrain`.

    fixes = Fixes(workspace, run=target.run_name, model=target.model)
    say(fixes.fix(session))    # reads the author's answer, saves it, returns the one line to show
    say(fixes.good(session))

`/fix` reads a multi-line entry: lines until one holding only ".", or Ctrl-D (end of input); with
$VISUAL or $EDITOR set and a terminal attached, the editor opens instead (click.edit). An empty
entry saves nothing and says so; a data/ that cannot be written is one line, the file untouched,
and the conversation goes on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import click

from ..corrections import add_correction
from ..errors import PartnerError
from ..workspace import Workspace
from .session import ChatSession

END = "."
EDITOR_NOTE = "# Write what you would answer, above or below. Lines starting with # are left out.\n"


def use_editor() -> bool:
    """An editor is set and a terminal is attached: /fix opens the editor."""
    return bool(os.environ.get("VISUAL") or os.environ.get("EDITOR")) and sys.stdin.isatty() and sys.stdout.isatty()


def read_lines(prompt: Callable[[], str]) -> str:
    """The lines `prompt` returns until one holding only "." or end of input (Ctrl-D)."""
    lines = []
    while True:
        try:
            line = prompt()
        except (click.Abort, EOFError):
            break
        if line.strip() == END:
            break
        lines.append(line)
    return "\n".join(lines).strip()


def read_in_editor(question: str, answer: str) -> str:
    """The entry written in $EDITOR, the question and the partner's answer shown as # lines."""
    shown = "".join(f"# {line}\n" for line in (f"Question: {question}", "The partner answered:", *answer.splitlines()))
    text = click.edit("\n" + EDITOR_NOTE + shown) or ""
    return "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()


def read_entry(question: str, answer: str) -> str:
    """The author's answer, from the editor or typed in lines ending with a "." line."""
    if use_editor():
        return read_in_editor(question, answer)
    click.echo(click.style("Your answer; end with a line holding only \".\" (or Ctrl-D):", dim=True))
    return read_lines(lambda: click.prompt("", default="", show_default=False, prompt_suffix="... "))


@dataclass
class Fixes:
    """Where corrections go and what they record of the model they correct."""

    ws: Workspace
    run: str | None = None
    model: str | None = None

    def _last(self, session: ChatSession) -> tuple[str, str, list[dict[str, str]]] | None:
        if not session.history:
            return None
        question, answer = session.history[-1]
        context = [{"role": role, "content": text} for q, a in session.history[:-1]
                   for role, text in (("user", q), ("assistant", a))]
        return question, answer, context

    def fix(self, session: ChatSession, read: Callable[[str, str], str] = read_entry) -> str:
        """/fix: read what the author would answer to the last question and save it."""
        last = self._last(session)
        if last is None:
            return "(Nothing to correct yet: ask something first, then /fix its answer.)"
        question, answer, context = last
        text = read(question, answer)
        if not text:
            return "(Nothing saved: the correction was empty.)"
        return self._save(question, answer, context, correction=text)

    def good(self, session: ChatSession) -> str:
        """/good: mark the last answer as what the author would say."""
        last = self._last(session)
        if last is None:
            return "(Nothing to mark yet: ask something first, then /good its answer.)"
        question, answer, context = last
        if not answer.strip():
            return "(Nothing saved: the last answer is empty.)"
        return self._save(question, answer, context, good=True)

    def _save(self, question: str, answer: str, context: list[dict[str, str]], **kind: object) -> str:
        try:
            c = add_correction(self.ws, question, answer, run=self.run, model=self.model, context=context, **kind)
        except PartnerError as exc:
            return f"({exc} The conversation goes on.)"
        what = "Saved your answer" if c.kind == "fix" else "Marked the last answer good"
        return f"({what} as {c.id} in data/corrections.jsonl; `mlx-partner retrain` trains on it.)"
