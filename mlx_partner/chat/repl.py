"""The chat REPL: read a line, stream the answer, run /commands. The terminal I/O lives here.

    run_repl(session, target.label, citer)          # until /quit, Ctrl-D or end of input
    run_prompt(session, citer, "a question", as_json=False)   # chat --prompt

Answers stream to stdout; the banner, the session's notices (old turns being dropped) and the
passages of her writing under each answer (dimmed; `/sources` toggles them) go to stderr, so
stdout stays the answer. Ctrl-C stops a reply, not the REPL. `cli.py` only parses the flags and
calls these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import PartnerError
from .citations import Citation, citation_lines
from .fixes import Fixes  # [learn-from-use] /fix and /good
from .session import ChatSession
from .transcript import save_transcript

if TYPE_CHECKING:  # index loads numpy (retrieval); cli imports it inside `chat`
    from .index import Citer

HELP = """Commands:
  /help        this list
  /reset       forget the conversation (the system prompt stays)
  /save FILE   write the conversation to FILE as Markdown, with the passages under each answer
  /system      show the system prompt
  /sources     show or hide the passages of your writing under each answer
  /temp X      set the sampling temperature (0 = greedy)
  /fix         write what you would have answered to the last question (end with a "." line)
  /good        mark the last answer as what you would say
  /quit        leave (Ctrl-D works too)
Ctrl-C stops a reply without leaving."""


def handle_command(session: ChatSession, label: str, line: str, say: Callable[[str], None],
                   citer: Citer | None = None, fixes: Fixes | None = None) -> bool:
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
    elif name == "/sources":
        say(toggle_sources(citer))
    elif name in ("/fix", "/good"):  # [learn-from-use] corrections for the next retrain (chat/fixes.py)
        say("(Corrections are saved only in a workspace chat.)" if fixes is None
            else fixes.fix(session) if name == "/fix" else fixes.good(session))
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


def toggle_sources(citer: Citer | None) -> str:
    """/sources: flip whether passages are shown; the line that says what now happens."""
    if citer is None or not citer.on:
        return f"({(citer.off if citer else '') or 'Citations are off.'})"
    citer.show = not citer.show
    if citer.show:
        return "(Passages of your writing are shown under each answer.)"
    return "(Passages hidden; the not-grounded warning and quote checks stay. /sources shows them again.)"


def _dim(text: str) -> str:
    return click.style(text, dim=True)


def show_citation(citer: Citer | None, question: str, answer: str) -> Citation | None:
    """The passages under an answer, dimmed, on stderr; with /sources off only the status line.
    Returns the whole citation (the hidden passages too), for /save; None when citations are off."""
    if citer is None or not citer.on:
        return None
    citation = citer.cite(question, answer)
    shown = citation if citer.show else dataclasses.replace(citation, passages=())
    width = shutil.get_terminal_size((100, 24)).columns
    for line in citation_lines(shown, width - 2):
        click.echo(_dim("  " + line), err=True)
    return citation


def say_notices(session: ChatSession) -> None:
    for note in session.pop_notices():
        click.echo(click.style(note, fg="yellow"), err=True)


def say_startup(citer: Citer | None) -> None:
    """What the user should know once about the citations (an index built now, sources off)."""
    for note in (citer.notes if citer else []) + ([citer.off] if citer and citer.off else []):
        click.echo(_dim(note), err=True)


def run_prompt(session: ChatSession, citer: Citer | None, prompt: str, as_json: bool = False) -> None:
    """chat --prompt: the answer on stdout (streamed), the passages on stderr; with `as_json` one
    JSON object on stdout: {"answer", "passages", "grounded", "unverified_quotes"}."""
    say_startup(citer)
    passages = citer.context(prompt) if citer else []
    if as_json:
        answer = session.reply(prompt, passages).strip()
        say_notices(session)
        citation = citer.cite(prompt, answer) if citer else None
        record = citation.to_json(answer) if citation else {"answer": answer, "passages": [], "grounded": False,
                                                             "unverified_quotes": []}
        click.echo(json.dumps(record, ensure_ascii=False))
        return
    pieces = []
    for piece in session.ask(prompt, passages):
        pieces.append(piece)
        click.echo(piece, nl=False)
    click.echo("")
    say_notices(session)
    show_citation(citer, prompt, "".join(pieces))


def run_repl(session: ChatSession, label: str, citer: Citer | None = None, fixes: Fixes | None = None) -> None:
    """Read questions, stream answers, until /quit or end of input. Terminal I/O lives here."""

    def say(text: str) -> None:
        click.echo(_dim(text) if text.startswith("(") else text)

    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    click.echo(_dim(f"Chatting with {label}. /help for commands, /quit to leave."), err=True)
    say_startup(citer)
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
            if not handle_command(session, label, line, say, citer, fixes):
                break
            continue
        stream = session.ask(line, citer.context(line) if citer else [])
        pieces = []
        try:
            for piece in stream:
                pieces.append(piece)
                click.echo(piece, nl=False)
        except KeyboardInterrupt:
            stream.close()
            click.echo(_dim(" [stopped]"), nl=False)
        except PartnerError as exc:
            stream.close()
            click.echo(str(exc), err=True)
            continue
        click.echo("")
        say_notices(session)
        session.annotate(show_citation(citer, line, "".join(pieces)))
