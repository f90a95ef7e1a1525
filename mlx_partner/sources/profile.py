"""The author profile, profile.md: read, and refused while it is missing, empty or the template.

    profile = load_profile(ws)   # SourceError says what to write

Generate sends the profile with every request; an unedited template would teach the partner to
sound like the template, so it is refused before any request is made.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceError
from ..templates import PROFILE_TEMPLATE
from ..workspace import Workspace
from .decoding import decode_text, normalise_newlines


def _squash(text: str) -> str:
    return " ".join(text.split())


def load_profile(ws: Workspace) -> str:
    """profile.md as text (newlines normalised). SourceError when missing, empty or still the template."""
    path = Path(ws.profile_path)
    if not path.exists():
        raise SourceError(f"There is no author profile at {path}; run `mlx-partner init` or write profile.md describing your voice and convictions.")
    try:
        text, _ = decode_text(path.read_bytes())
    except OSError as exc:
        raise SourceError(f"Could not read {path} ({exc.strerror or exc}).") from None
    except ValueError as exc:
        raise SourceError(f"{path} is {exc}.") from None
    text = normalise_newlines(text).strip()
    if not text:
        raise SourceError(f"{path} is empty; describe your voice, style and convictions in it (a page is plenty).")
    template_lines = {_squash(line) for line in PROFILE_TEMPLATE.splitlines() if line.strip()}
    own = [line for line in text.splitlines() if line.strip() and _squash(line) not in template_lines and not line.lstrip().startswith("#")]
    if not own:
        raise SourceError(f"{path} is still the unedited template; replace its prompts with your own voice, style and convictions.")
    return text
