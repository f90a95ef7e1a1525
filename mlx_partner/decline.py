"""What a decline looks like: the phrase the partner is taught to say, and the patterns that spot it.

On a topic the author has not written about, the partner should say so instead of inventing a
position. The system prompt asks for `DECLINE_PHRASE`; `is_decline` also accepts the usual
paraphrases, so a model that declines in its own words still counts:

    is_decline("That's not something I've written about.")          # True: eval, chat
    opens_with_decline("I haven't written about rye. I did write...") # True: a boundary answer
    says_not_written("I mean it plainly: benches are an argument.")    # False: an answer may pass

It sits low in the layers (it imports nothing of ours) because eval's groundedness probe, chat
and the boundary pairs of generation all need the same answer to "did it decline?".
`NOT_WRITTEN_PATTERNS` is the narrow part, an answer saying her writing does not cover the topic:
generation rejects an answer-kind pair (genuine, scenario, pushback) that says it, since such a
pair would teach the partner to decline questions her writing does answer.
"""

from __future__ import annotations

import re

__all__ = [
    "DECLINE_PATTERNS",
    "DECLINE_PHRASE",
    "NOT_WRITTEN_PATTERNS",
    "is_decline",
    "opens_with_decline",
    "says_not_written",
]

DECLINE_PHRASE = "I haven't written about that"

_I_HAVE = r"(i\s+have|i've|i\s+had|i'd|i)"
_NOT_DONE = r"(haven't|have\s+not|'ve\s+not|have\s+never|'ve\s+never|never|hasn't|has\s+not|didn't|did\s+not)"
_WRITING = r"(writing|notes|documents|sources|essays?|pieces?|work|pages)"


def _compile(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


# Her writing does not cover it: "I haven't written about that", "my essays don't cover it".
NOT_WRITTEN_PATTERNS: tuple[re.Pattern[str], ...] = _compile(
    rf"\b{_NOT_DONE}\s+(really\s+|actually\s+|yet\s+|ever\s+|properly\s+|much\s+)?(written|wrote)\b",
    r"\bnot\s+(something|a\s+topic|a\s+subject|an\s+area|a\s+question|one|anything|a\s+thing)\s+(that\s+)?"
    r"(i|the\s+author)\s*('ve|\s+have|\s+has|\s+had)?\s*(ever\s+)?(written|put\s+(down\s+)?on\s+paper)",
    rf"\b(outside|beyond)\s+(of\s+)?(what\s+{_I_HAVE}\s*(written|covered)|my\s+{_WRITING})",
    r"\b(nothing|not\s+anything|not\s+a\s+word)\s+(that\s+)?i('ve|\s+have)\s+(ever\s+)?(written|said)",
    rf"\bmy\s+{_WRITING}\s+(don't|do\s+not|doesn't|does\s+not|never|didn't|did\s+not)\s+"
    r"(really\s+)?(cover|address|touch|discuss|mention|go\s+into|get\s+into|deal\s+with|reach)",
    rf"\bmy\s+{_WRITING}\s+(is|are)\s+silent\b",
    rf"\bnot\s+(in|covered\s+(in|by))\s+(my|the\s+author's)\s+{_WRITING}",
    rf"\b{_NOT_DONE}\s+put\s+(anything|much|it|that|this|a\s+word)\s+(down\s+)?(on|in)\s+(paper|writing)",
)

# Any decline, eval's and chat's test: the above, and "I haven't thought about it", "I don't know".
DECLINE_PATTERNS: tuple[re.Pattern[str], ...] = NOT_WRITTEN_PATTERNS + _compile(
    rf"\b{_NOT_DONE}\s+(really\s+|actually\s+|yet\s+|properly\s+)?"
    r"(thought|explored|covered|addressed|touched|tackled|gone\s+into|got(ten)?\s+into|dealt\s+with|worked\s+(that|this|it)\s+out)\b",
    r"\bnot\s+(something|a\s+topic|a\s+subject|an\s+area|a\s+question|one|anything)\s+(that\s+)?"
    r"(i|the\s+author)\s*('ve|\s+have|\s+has)?\s*(covered|explored|addressed|thought|touched|tackled|know)",
    # first person only: "you do not know which change helped" is an answer, not a decline
    r"\b(i|the\s+author)\s+(really\s+|honestly\s+|simply\s+|just\s+)?(don't|do\s+not|doesn't|does\s+not)\s+know\b",
    r"\bno\s+idea\b",
    r"\b(can't|cannot|can\s+not|couldn't)\s+(really\s+|honestly\s+)?(speak|say|comment|answer|tell\s+you)\b",
    r"\b(isn't|is\s+not|wasn't)\s+(something|a\s+topic)\s+i\b",
    r"\b(i'd|i\s+would)\s+rather\s+not\s+(guess|speculate|invent|pretend)\b",
    r"\bi\s+(won't|will\s+not)\s+(guess|speculate|invent|pretend)\b",
    r"\bi\s+(don't|do\s+not)\s+have\s+(a|any)\s+(considered\s+|settled\s+|written\s+|real\s+)?(view|position|opinion|answer)\b",
    r"\bi\s+have\s+no\s+(considered\s+|settled\s+|written\s+)?(view|position|opinion)\s+on\b",
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _plain(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'")


def is_decline(answer: str) -> bool:
    """True if the answer says the author has not written about (or does not know) the topic."""
    text = _plain(answer)
    return any(p.search(text) for p in DECLINE_PATTERNS)


def says_not_written(answer: str) -> bool:
    """True if the answer says her writing does not cover the topic (the narrow patterns)."""
    text = _plain(answer)
    return any(p.search(text) for p in NOT_WRITTEN_PATTERNS)


def opens_with_decline(answer: str) -> bool:
    """True if the answer declines up front: in its first sentence, or its second after a short
    opening ("Honestly? I haven't written about that."). A boundary answer must; one that argues
    a position first and declines later does not read as a decline."""
    sentences = _SENTENCE_END.split(_plain(answer).strip(), maxsplit=2)
    head = sentences[0]
    if len(head.split()) <= 4 and len(sentences) > 1:
        head += " " + sentences[1]
    return is_decline(head)
