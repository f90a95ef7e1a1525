"""`chat`: talk to the partner, offline, with the exact system prompt it was trained with.

    target = resolve_target(ws)                      # the latest run: fused model, else base + adapters
    session, loaded = open_session(target, temperature=0.7, top_p=0.9, max_tokens=512)
    citer = open_citer(ws, target)                   # chat.index: the run's index of her writing
    run_repl(session, target.label, citer)           # or: run_prompt(session, citer, "a question")

Modules, each importing only those above it in this list:

  target.py      which model to load (run, fused model, base, any folder) and its system prompt
  session.py     ChatSession: history, one KV cache reused across turns, trimming to the window,
                 streaming; open_session loads the target's model (mlx and mlx_lm stay lazy)
  citations.py   what goes under an answer (Citation, Cited, the lines, as Markdown), the quote check
  transcript.py  the conversation as Markdown, for /save, with the citation under each answer
  passages.py    the passages an answer rests on, ranked over the index; --rag's passages
  index.py       Citer and open_citer: the run's index checked against the current sources
  repl.py        the REPL loop, its /commands, and --prompt (--json)

The names below are the package's public API; code and tests inside the project import them from
the module that defines them. `passages` and `index` are not imported here: they load numpy
(through `retrieval`), and `mlx-partner --help` imports this package.
"""

from .citations import (
    Citation,
    Cited,
    citation_lines,
    citation_markdown,
    quoted_spans,
    unverified_quotes,
)
from .repl import HELP, handle_command, run_prompt, run_repl
from .session import ChatSession, TurnStats, common_prefix, context_window, open_session
from .target import ChatTarget, no_run_message, resolve_target
from .transcript import save_transcript, transcript_markdown

__all__ = [
    "HELP",
    "ChatSession",
    "ChatTarget",
    "Citation",
    "Cited",
    "TurnStats",
    "citation_lines",
    "citation_markdown",
    "common_prefix",
    "context_window",
    "handle_command",
    "no_run_message",
    "open_session",
    "quoted_spans",
    "resolve_target",
    "run_prompt",
    "run_repl",
    "save_transcript",
    "transcript_markdown",
    "unverified_quotes",
]
