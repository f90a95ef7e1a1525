"""The groundedness probes: questions the author's writing does not answer, near and far.

    far = probe_questions(source_texts, n=6, seed=0)       # built in: football, index funds, ...
    near = read_near_probes(ws.data_dir / PROBES_FILE)    # data/probes.jsonl, from `generate`
    install_probes(ws, ws.root / "examples" / "probes.jsonl")   # the demo: the example's own

A partner grounded in the author's writing should answer these with a decline ("I haven't written
about that"); eval counts the share that do. Far probes are off her field altogether, so declining
them is the easy half; near-domain probes are in her field and register (a designer she never
discussed), where a fine-tuned partner is most tempted to invent a position. The far choice is a
pure function of the sources and the seed, and the near file is written once and kept, so runs
compared on one corpus get the same probes.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..workspace import Workspace, atomic_write_text

__all__ = ["BUILTIN_PROBES", "PROBES_FILE", "PROBES_VERSION", "PROBE_TEMPLATES", "PROBE_TOPICS", "NearProbes",
           "install_probes", "probe_questions", "read_near_probes"]

PROBES_FILE = "probes.jsonl"  # under data/: {"version": 1, "id", "question", "coverage", "threshold", ...}
PROBES_VERSION = 1  # the newest line format this reads

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


# --- near-domain probes: data/probes.jsonl -------------------------------------------------------------


@dataclass(frozen=True)
class NearProbes:
    """The near-domain probe questions of one file, in its order, and what could not be used."""

    path: str
    questions: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "line N: why"

    @property
    def present(self) -> bool:
        return bool(self.path)


def read_near_probes(path: Path) -> NearProbes:
    """The questions of a probes file (one JSON object a line, `generate`'s format). A missing file
    gives none; a bad line, a repeated question or a line of a newer version is skipped and named."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return NearProbes("")
    questions: list[str] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped.append(f"line {number}: not valid JSON")
            continue
        question = record.get("question") if isinstance(record, dict) else None
        version = record.get("version", 1) if isinstance(record, dict) else None
        if not isinstance(question, str) or not question.strip():
            skipped.append(f"line {number}: no question")
        elif not isinstance(version, int) or version > PROBES_VERSION:
            skipped.append(f"line {number}: version {version!r} (this mlx-partner reads up to {PROBES_VERSION})")
        elif " ".join(question.split()).casefold() in seen:
            skipped.append(f"line {number}: the same question as an earlier line")
        else:
            seen.add(" ".join(question.split()).casefold())
            questions.append(question.strip())
    return NearProbes(str(path), questions, skipped)


def install_probes(ws: Workspace, source: Path) -> Path | None:
    """Copy a probes file (the example workspace's hand-written examples/probes.jsonl) to
    data/probes.jsonl, unless the workspace has one already (generate's are kept as they are).
    Returns the path written, or None when nothing was copied."""
    target = ws.data_dir / PROBES_FILE
    if target.exists() or not Path(source).is_file():
        return None
    atomic_write_text(target, Path(source).read_text(encoding="utf-8"))
    return target
