"""What a decline looks like: the phrase the partner is taught to say, and the patterns that spot it.

On a topic the author has not written about, the partner should say so instead of inventing a
position. The system prompt asks for `DECLINE_PHRASE`; `is_decline` also accepts the usual
paraphrases, so a model that declines in its own words still counts:

    is_decline("That's not something I've written about.")   # True

It sits low in the layers (it imports nothing of ours) because eval's groundedness probe, chat
and the boundary pairs of generation all need the same answer to "did it decline?".
"""

from __future__ import annotations

import re

__all__ = ["DECLINE_PATTERNS", "DECLINE_PHRASE", "is_decline"]

DECLINE_PHRASE = "I haven't written about that"

DECLINE_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b(haven't|have not|never|hasn't|has not|didn't|did not)\s+(really\s+|actually\s+|yet\s+)?"
        r"(written|thought|explored|covered|addressed|touched)\b",
        r"\bnot\s+(something|a\s+topic|a\s+subject|an\s+area|a\s+question|anything)\s+(that\s+)?"
        r"(i|the\s+author)\s*('ve|\s+have|\s+has)?\s*(written|covered|explored|addressed|thought|touched|know)",
        r"\b(don't|do\s+not|doesn't|does\s+not)\s+know\b",
        r"\bno\s+idea\b",
        r"\b(can't|cannot|can\s+not|couldn't)\s+(really\s+)?(speak|say|comment|answer)\b",
        r"\b(outside|beyond)\s+(of\s+)?(what\s+i('ve|\s+have)\s+written|my\s+(writing|notes|work|sources|documents))",
        r"\b(nothing|not\s+anything)\s+(that\s+)?i('ve|\s+have)\s+(written|said)",
        r"\bmy\s+(writing|notes|documents|sources|essays?)\s+(don't|do\s+not|doesn't|does\s+not|never)\s+"
        r"(cover|address|touch|discuss|mention)",
        r"\b(isn't|is\s+not|wasn't)\s+(something|a\s+topic)\s+i\b",
        r"\bnot\s+(in|covered\s+(in|by))\s+(my|the\s+author's)\s+(writing|notes|documents|sources)",
    )
)


def is_decline(answer: str) -> bool:
    """True if the answer says the author has not written about (or does not know) the topic."""
    text = answer.replace("\u2019", "'")
    return any(p.search(text) for p in DECLINE_PATTERNS)
