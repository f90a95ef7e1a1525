"""The system prompt: a short, fixed text drawn from profile.md (or set in partner.toml).

The same text goes into every training example and every chat. `dataset` saves it as
`data/system_prompt.txt` (`Workspace.system_prompt_path`); `load_system_prompt` reads it back.
"""

from __future__ import annotations

import re

from ..config import Settings
from ..errors import DatasetError
from ..workspace import Workspace

_TEMPLATE_LINES = (
    "Describe yourself as the partner should sound.",
    "One or two sentences: what you study or write about",
)


def _sentences(text: str, limit: int) -> str:
    """The first one or two sentences of `text`, at most about `limit` characters."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    out = parts[0]
    if len(parts) > 1 and len(out) + 1 + len(parts[1]) <= limit:
        out += " " + parts[1]
    if len(out) > limit:
        out = out[:limit].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return out


def _profile_intro(profile_text: str) -> str:
    """The author's own first lines: the first prose paragraph that is not template filler."""
    paragraphs = re.split(r"\n\s*\n", profile_text)
    for para in paragraphs:
        lines = [ln.strip() for ln in para.strip().splitlines()]
        prose = " ".join(ln for ln in lines if ln and not ln.startswith(("#", "-", "*", ">", "|")))
        if len(prose) < 20 or any(prose.startswith(t) for t in _TEMPLATE_LINES):
            continue
        return prose
    return ""


def _author_name(intro: str) -> str:
    m = re.search(r"\b(?:I am|I'm|My name is)\s+((?:[A-Z][\w'\-]+)(?:\s+[A-Z][\w'\-]+){0,3})", intro)
    return m.group(1) if m else ""


def system_prompt_from_profile(profile_text: str) -> str:
    """A short, stable system prompt: who the partner is and how it answers.

    Drawn from the profile's first lines (who the author is, in their own words). The same text
    goes into every training example and every chat, so it is deliberately plain and fixed.
    """
    intro = _profile_intro(profile_text)
    name = _author_name(intro)
    who = f"{name}'s" if name else "the author's"
    as_whom = name or "the author"
    lines = [
        f"You are {who} thinking partner. Answer as {as_whom}: in the first person, in the author's "
        f"own voice, grounded in what the author has written."
    ]
    if intro:
        lines.append(f"In the author's words: {_sentences(intro, 320)}")
    lines.append(
        "When the author has not written about something, say so plainly (\"I haven't written about that\") "
        "instead of inventing a position."
    )
    return "\n".join(lines)


def resolve_system_prompt(ws: Workspace, settings: Settings) -> tuple[str, str]:
    """(system prompt, where it came from): the setting, else derived from profile.md."""
    configured = settings.dataset.system_prompt.strip()
    if configured:
        return configured, "settings (dataset.system_prompt)"
    if ws.profile_path.exists():
        text = ws.profile_path.read_text(encoding="utf-8", errors="replace")
        return system_prompt_from_profile(text), str(ws.profile_path)
    return system_prompt_from_profile(""), "a generic prompt (no profile.md)"


def load_system_prompt(ws: Workspace) -> str:
    """The system prompt the dataset was built with (`data/system_prompt.txt`)."""
    path = ws.system_prompt_path
    if not path.exists():
        raise DatasetError(f"{path} does not exist; run `mlx-partner dataset` first.")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DatasetError(f"{path} is empty; run `mlx-partner dataset` again.")
    return text
