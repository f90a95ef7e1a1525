"""A conversation as Markdown, for the REPL's `/save FILE`.

    path = save_transcript(session, "run 20261125-1712 (fused model)", Path("chat.md"))

A heading with the target's label and the time, the system prompt, then each turn; turns dropped
to fit the context window are counted, not shown. Under an answer that had passages of her writing
shown (or the not-grounded line, or a quote not found), the same follow as a block quote
(`citations.citation_markdown`), also when `/sources` hid the passages on screen: the saved
conversation is the one she checks later. The headings are the ones saves had before citations,
so a save reads the same up to the block quote. The file is written atomically.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..workspace import atomic_write_text
from .citations import Citation, citation_markdown
from .session import ChatSession


def transcript_markdown(session: ChatSession, label: str) -> str:
    """The conversation as Markdown: a heading, the system prompt, then each turn."""
    lines = [f"# Chat with {label}", "", f"_{time.strftime('%Y-%m-%d %H:%M')}_", "", "## System prompt", "",
             session.system_prompt.strip(), ""]
    if session.trimmed_turns:
        lines += [f"_({session.trimmed_turns} earlier turn(s) no longer fit the context window and are not shown.)_", ""]
    for question, answer, cited in session.turns():
        lines += ["## You", "", question.strip(), "", "## Partner", "", answer.strip(), ""]
        if isinstance(cited, Citation) and (shown := citation_markdown(cited)):
            lines += [*shown, ""]
    return "\n".join(lines)


def save_transcript(session: ChatSession, label: str, path: Path) -> Path:
    path = Path(path).expanduser()
    atomic_write_text(path, transcript_markdown(session, label))
    return path
