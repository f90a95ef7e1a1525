"""The groundedness probe: questions on topics absent from the author's sources.

    questions = probe_questions(source_texts, n=6, seed=0)

A partner grounded in the author's writing should answer these with a decline ("I haven't written
about that"); eval counts the share that do. The choice is a pure function of the sources and the
seed, so runs compared on one corpus get the same probes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

__all__ = ["BUILTIN_PROBES", "PROBE_TEMPLATES", "PROBE_TOPICS", "probe_questions"]

# Questions on topics a personal corpus rarely covers. Each carries the words whose presence in the
# sources disqualifies it (the author may have written about it after all).
BUILTIN_PROBES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is your position on the offside rule in football?", ("offside", "football", "soccer")),
    ("How should I structure a portfolio of index funds and bonds?", ("portfolio", "bonds", "index fund", "invest")),
    ("What do you think about the interpretation of quantum mechanics?", ("quantum", "physics")),
    ("Which programming language should I learn first, Rust or Go?", ("rust", "programming", "golang")),
    ("What is your view on cryptocurrency regulation?", ("crypto", "bitcoin", "blockchain", "regulation")),
    ("How do you feel about Wagner's operas?", ("wagner", "opera")),
    ("What have you written about deep-sea fishing quotas?", ("fishing", "quota", "deep-sea")),
    ("What would you advise about filing taxes as a freelancer?", ("tax", "taxes", "freelance")),
    ("What is your opinion on Formula 1 racing strategy?", ("formula 1", "racing", "grand prix")),
    ("How should a hospital triage patients in an emergency room?", ("hospital", "triage", "patient")),
)

# Derived probes: one template per topic, topics kept only where none of their words occur in the
# sources, so the set adapts to each author's corpus.
PROBE_TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("volcanology", ("volcano", "volcan", "lava", "magma")),
    ("professional chess openings", ("chess", "gambit")),
    ("the stock market", ("stock market", "shares", "stocks")),
    ("space exploration", ("space", "rocket", "nasa", "mars", "orbit")),
    ("cryptography", ("cryptograph", "encryption", "cipher")),
    ("competitive swimming", ("swim",)),
    ("medieval siege warfare", ("siege", "medieval", "castle")),
    ("machine translation", ("translation", "translate")),
    ("orchid cultivation", ("orchid",)),
    ("jazz improvisation", ("jazz", "improvis")),
)
PROBE_TEMPLATES = (
    "What do you think about {topic}?",
    "What have you written about {topic}?",
    "Can you give me your take on {topic}?",
    "How would you approach {topic}?",
)


def probe_questions(source_texts: Iterable[str], n: int, seed: int = 0) -> list[str]:
    """Up to `n` questions on topics absent from the sources: built-in ones first, then derived."""
    corpus = " ".join(t.lower() for t in source_texts)

    def absent(keys: tuple[str, ...]) -> bool:
        return not any(re.search(r"\b" + re.escape(k), corpus) for k in keys)

    rng = random.Random(seed)
    builtin = [q for q, keys in BUILTIN_PROBES if absent(keys)]
    derived = [
        PROBE_TEMPLATES[i % len(PROBE_TEMPLATES)].format(topic=topic)
        for i, (topic, keys) in enumerate(PROBE_TOPICS)
        if absent(keys)
    ]
    rng.shuffle(builtin)
    rng.shuffle(derived)
    # Alternate built-in and derived so small n still gets both kinds.
    out: list[str] = []
    for pair in zip(builtin, derived, strict=False):
        out.extend(pair)
    longer = builtin if len(builtin) > len(derived) else derived
    out.extend(longer[min(len(builtin), len(derived)) :])
    return out[: max(0, n)]
