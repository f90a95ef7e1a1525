"""The chat REPL: read a line, stream the answer, run /commands. The terminal I/O lives here.

    run_repl(session, target.label)   # until /quit, Ctrl-D or end of input

Answers stream to stdout; the banner and the session's notices (old turns being dropped) go to
stderr. Ctrl-C stops a reply, not the REPL. `cli.py` only parses the flags and calls `run_repl`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import click

from ..errors import PartnerError
from .session import ChatSession
from .transcript import save_transcript

HELP = """Commands:
  /help        this list
  /reset       forget the conversation (the system prompt stays)
  /save FILE   write the conversation to FILE as Markdown
  /system      show the system prompt
  /temp X      set the sampling temperature (0 = greedy)
  /quit        leave (Ctrl-D works too)
Ctrl-C stops a reply without leaving."""


def handle_command(session: ChatSession, label: str, line: str, say: Callable[[str], None]) -> bool:
    """Run one /command; return False when the REPL should end."""
    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    name = name.lower()
    if name in ("/quit", "/exit", "/q"):
        return False
    if name in ("/help", "/?"):
        say(HELP)
    elif name == "/reset":
        session.reset()
        say("(Conversation cleared.)")
    elif name == "/system":
        say(session.system_prompt)
    elif name == "/save":
        if not arg:
            say("Usage: /save FILE  (e.g. /save chat.md)")
        else:
            try:
                path = save_transcript(session, label, Path(arg))
            except PartnerError as exc:
                say(str(exc))
            else:
                say(f"(Saved {len(session.history)} turn(s) to {path}.)")
    elif name == "/temp":
        try:
            value = float(arg)
            if value < 0:
                raise ValueError
        except ValueError:
            say(f"Usage: /temp X with X a number >= 0 (now {session.temperature:g}).")
        else:
            session.temperature = value
            say(f"(Temperature {value:g}{', greedy' if value == 0 else ''}.)")
    else:
        say(f"Unknown command {name}; /help lists them.")
    return True


def run_repl(session: ChatSession, label: str) -> None:
    """Read questions, stream answers, until /quit or end of input. Terminal I/O lives here."""

    def say(text: str) -> None:
        click.echo(click.style(text, dim=True) if text.startswith("(") else text)

    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    click.echo(click.style(f"Chatting with {label}. /help for commands, /quit to leave.", dim=True), err=True)
    while True:
        try:
            line = click.prompt(click.style(">>>", fg="green", bold=True), default="", show_default=False,
                                prompt_suffix=" ")
        except (click.Abort, EOFError):
            click.echo("")
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not handle_command(session, label, line, say):
                break
            continue
        stream = session.ask(line)
        try:
            for piece in stream:
                click.echo(piece, nl=False)
        except KeyboardInterrupt:
            stream.close()
            click.echo(click.style(" [stopped]", dim=True), nl=False)
        except PartnerError as exc:
            stream.close()
            click.echo(str(exc), err=True)
            continue
        click.echo("")
        for note in session.pop_notices():
            click.echo(click.style(note, fg="yellow"), err=True)
