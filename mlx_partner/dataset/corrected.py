"""Corrections from chat (data/corrections.jsonl) as training pairs, for `dataset`.

    pairs, fixes, warnings = with_corrections(ws, pairs)          # before the split
    split_pairs, pairs, warnings, notes = place_corrections(fixes, split_pairs, pairs)   # after it

A `/good` answer joins the pairs as an ordinary hand-written pair (kind genuine) and is split like
the others. A `/fix` becomes a pair of kind `correction` with the author's answer as its target:
always in train, never in valid or test, so the held-out comparison stays fair; where a train pair
asks the same question, the correction replaces it (the author said what she would answer). A
correction (or a /good answer placed in train) that asks a test question is reported and kept out
of train: training on it would leak the held-out answer. The latest correction of a question wins.
Questions are compared as `pairs.duplicate_key` folds them.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..corrections import CORRECTIONS_FILE, Correction, corrections_path, read_corrections
from ..workspace import Workspace
from .manifest import SPLITS
from .pairs import Pair, duplicate_key

CORRECTION = "correction"  # the kind of a /fix pair
CHAT_THEME = "chat"  # the theme of a chat pair whose question no other pair asks


def _latest(corrections: Sequence[Correction]) -> list[Correction]:
    """One correction per question and kind, the latest (file order) winning."""
    by_question = {(duplicate_key(c.question), c.kind): c for c in corrections}
    return sorted(by_question.values(), key=lambda c: corrections.index(c))


def from_chat(p: Pair) -> bool:
    """A pair made here from a correction (its origin names data/corrections.jsonl and its id)."""
    return CORRECTIONS_FILE in p.origin and p.origin.endswith(f"({p.id})")


def _pair(c: Correction, theme: str, where: str) -> Pair:
    return Pair(c.id, c.question.strip(), c.target.strip(), theme, CORRECTION if c.kind == "fix" else "genuine",
                f"{where} ({c.id})")


def with_corrections(ws: Workspace, pairs: list[Pair]) -> tuple[list[Pair], list[Pair], list[str]]:
    """(pairs with the /good answers added, the /fix pairs to place after the split, warnings)."""
    found = read_corrections(ws)
    warnings = [f"Skipped {bad}" for bad in found.bad]
    if not found.corrections:
        return pairs, [], warnings
    theme_of = {duplicate_key(p.question): p.theme for p in pairs}
    seen = {(duplicate_key(p.question), duplicate_key(p.answer)) for p in pairs}
    where = str(corrections_path(ws))
    goods, fixes = [], []
    for c in _latest(found.corrections):
        pair = _pair(c, theme_of.get(duplicate_key(c.question), CHAT_THEME), where)
        if c.kind == "fix":
            fixes.append(pair)
        elif (duplicate_key(pair.question), duplicate_key(pair.answer)) not in seen:
            goods.append(pair)
    return [*pairs, *goods], fixes, warnings


def _show(pairs: Sequence[Pair]) -> str:
    shown = ", ".join(f"{p.id} ({p.question[:50]!r})" for p in pairs[:3])
    return shown + (f" and {len(pairs) - 3} more" if len(pairs) > 3 else "")


def place_corrections(fixes: Sequence[Pair], split_pairs: dict[str, list[Pair]], pairs: Sequence[Pair],
                      ) -> tuple[dict[str, list[Pair]], list[Pair], list[str], list[str]]:
    """The /fix pairs put in train (pure): (split_pairs, every pair kept, warnings, notes)."""
    chat_ids = {p.id for p in [*fixes, *pairs] if from_chat(p)}
    tested = {duplicate_key(p.question) for p in split_pairs["test"]}
    leaks = [p for p in [*fixes, *split_pairs["train"]] if p.id in chat_ids and duplicate_key(p.question) in tested]
    placed = [p for p in fixes if p not in leaks]
    fixed = {duplicate_key(p.question) for p in placed}
    replaced = [p for p in split_pairs["train"] if p.id not in chat_ids and duplicate_key(p.question) in fixed]
    gone = {p.id for p in leaks} | {p.id for p in replaced}
    out = {s: [p for p in split_pairs[s] if p.id not in gone] for s in SPLITS}
    out["train"] += placed
    warnings, notes = [], []
    if leaks:
        warnings.append(f"{len(leaks)} correction(s) from chat ask a question held out for testing and were kept out "
                        f"of train, so the held-out comparison stays fair: {_show(leaks)}.")
    if placed:
        notes.append(f"{len(placed)} correction(s) from chat in train (kind {CORRECTION}, never valid or test)"
                     + (f"; they replace {len(replaced)} pair(s) asking the same question: {_show(replaced)}"
                        if replaced else "") + ".")
    kept = [p for p in pairs if p.id not in gone] + placed
    return out, kept, warnings, notes
