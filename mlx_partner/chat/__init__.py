"""`chat`: talk to the partner, offline, with the exact system prompt it was trained with.

    target = resolve_target(ws)                      # the latest run: fused model, else base + adapters
    session, loaded = open_session(target, temperature=0.7, top_p=0.9, max_tokens=512)
    run_repl(session, target.label)                  # or: session.reply("one question")

Modules, each importing only those above it in this list:

  target.py      which model to load (run, fused model, base, any folder) and its system prompt
  session.py     ChatSession: history, one KV cache reused across turns, trimming to the window,
                 streaming; open_session loads the target's model (mlx and mlx_lm stay lazy)
  transcript.py  the conversation as Markdown, for /save
  repl.py        the REPL loop and its /commands

The names below are the package's public API; code and tests inside the project import them from
the module that defines them.
"""

from .repl import HELP, handle_command, run_repl
from .session import ChatSession, TurnStats, common_prefix, context_window, open_session
from .target import ChatTarget, no_run_message, resolve_target
from .transcript import save_transcript, transcript_markdown

__all__ = [
    "HELP",
    "ChatSession",
    "ChatTarget",
    "TurnStats",
    "common_prefix",
    "context_window",
    "handle_command",
    "no_run_message",
    "open_session",
    "resolve_target",
    "run_repl",
    "save_transcript",
    "transcript_markdown",
]
