"""Eval's corrections measure: does a run answer the questions the author corrected in chat the way
she said she would, rather than the way the partner did?

    fixes = fixes_to_measure(ws)          # the latest `/fix` of each question in data/corrections.jsonl
    raw = answer_corrections(loaded, fixes.fixes, system_prompt, max_tokens=96, label="run-2")
    records = score_corrections(fixes.fixes, raw, style)   # {id: {"answer", "f1", "style", ...}}
    section = corrections_section(fixes, {"base": ..., "tuned": records})   # metrics.json's "corrections"

Each correction's question is asked greedily in a fresh conversation with the run's system prompt,
after the conversation chat recorded before it (`context`), through `prompts.chat_messages` as
eval's probes are: that is the situation the author corrected. (Training sees the question alone:
`dataset` makes the pair from the question and her answer.) For a run trained with passages, the
question is asked as eval asks all its questions then (`ask`, `grounded.passages_ask`). The answer is scored with eval's own
functions: word F1 (`metrics.word_f1`) against her corrected answer and against the partner's
original, corrected-away answer, and style similarity to each, the cosine of eval's character
n-gram TF-IDF vectors (`StyleModel.vector`, fitted on her sources). The corrected-away answer's
own F1 and style to her correction are the bar a run should clear. `/good` marks are not measured
(there is nothing to move away from); removed corrections are gone from the file.

`run.py` calls `answer_corrections` while each model is loaded, and `report.py` renders the
section; everything here but `answer_corrections` is pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..corrections import Correction, corrections_path, read_corrections
from ..dataset.pairs import duplicate_key
from ..prompts import chat_messages
from ..workspace import Workspace
from .metrics import StyleModel, word_f1
from .scoring import GENERATION_BATCH, Progress, generate_answers, prompt_tokens
from .summary import mean

__all__ = ["PASSAGES", "PROMPT", "Fixes", "answer_corrections", "compare_corrections", "correction_messages", "corrections_section",
           "corrections_summary", "fixes_to_measure", "score_answer", "score_corrections", "style_between"]

PROMPT = "the recorded conversation before the question, then the question, with the run's system prompt"
PASSAGES = ", the passages `chat --rag` finds put before the question"


@dataclass(frozen=True)
class Fixes:
    """The `/fix` corrections eval measures, and what it left out of data/corrections.jsonl."""

    file: str
    fixes: list[Correction]  # the latest /fix of each question, in file order
    superseded: int  # earlier /fix answers to a question corrected again
    good_marks: int  # /good marks: not measured
    skipped: list[str]  # broken lines, as file:line: reason


def fixes_to_measure(ws: Workspace) -> Fixes:
    """The latest `/fix` of each question (questions compared as `dataset` compares them)."""
    found = read_corrections(ws)
    fixes = [c for c in found.corrections if c.kind == "fix"]
    latest = {duplicate_key(c.question): c for c in fixes}  # the later line wins, as in `dataset`
    kept = [c for c in fixes if latest[duplicate_key(c.question)] is c]
    return Fixes(file=str(corrections_path(ws)), fixes=kept, superseded=len(fixes) - len(kept),
                 good_marks=len(found.corrections) - len(fixes),
                 skipped=[f"{b.path}:{b.line}: {b.reason}" for b in found.bad])


def correction_messages(tokenizer: Any, system_prompt: str, c: Correction,
                        ask: Callable[[str], str] | None = None) -> list[dict[str, str]]:
    """The conversation a correction's question is asked in: its recorded context, then the question
    (as `ask` renders it, when eval puts passages before every question)."""
    question = ask(c.question) if ask else c.question
    return chat_messages(system_prompt, [*c.context, {"role": "user", "content": question}], tokenizer)


def answer_corrections(loaded: Any, fixes: Sequence[Correction], system_prompt: str, *, max_tokens: int,
                       label: str, cached: Mapping[str, dict[str, Any]] | None = None,
                       progress: bool = True, ask: Callable[[str], str] | None = None) -> dict[str, dict[str, Any]]:
    """{correction id: {"answer"}}: one loaded model's greedy answers to the corrected questions.

    `cached` maps "correction:ID" to an earlier record of this same model and settings (as
    `scoring.cached_records` reads them); those are reused instead of generated again.
    """
    cached = cached or {}
    out = {c.id: {"answer": cached[f"correction:{c.id}"]["answer"]} for c in fixes if f"correction:{c.id}" in cached}
    todo = [c for c in fixes if c.id not in out]
    bar = Progress(f"{label}: answers to your corrections", len(todo), progress and bool(todo))
    model, tokenizer = loaded.model, loaded.tokenizer
    for start in range(0, len(todo), GENERATION_BATCH):
        chunk = todo[start : start + GENERATION_BATCH]
        prompts = [prompt_tokens(tokenizer, correction_messages(tokenizer, system_prompt, c, ask)) for c in chunk]
        for c, answer in zip(chunk, generate_answers(model, tokenizer, prompts, max_tokens), strict=True):
            out[c.id] = {"answer": answer}
            bar.step()
    return {c.id: out[c.id] for c in fixes}


# --- scoring (pure) -----------------------------------------------------------------------------


def style_between(style: StyleModel, a: str, b: str) -> float:
    """Style similarity of two texts: the cosine of eval's character n-gram TF-IDF vectors (0..1)."""
    if not a.strip() or not b.strip():
        return 0.0
    return float(style.vector(a) @ style.vector(b))


def score_answer(answer: str, c: Correction, style: StyleModel) -> dict[str, Any]:
    """One answer against the author's correction and against the corrected-away answer."""
    corrected = c.correction or ""
    return {"answer": answer, "f1": word_f1(answer, corrected), "style": style_between(style, answer, corrected),
            "f1_corrected_away": word_f1(answer, c.answer),
            "style_corrected_away": style_between(style, answer, c.answer)}


def score_corrections(fixes: Sequence[Correction], answers: Mapping[str, dict[str, Any]],
                      style: StyleModel) -> dict[str, dict[str, Any]]:
    """{correction id: record} for the fixes a model answered (`answers` as `answer_corrections` gives)."""
    return {c.id: score_answer(answers[c.id]["answer"], c, style) for c in fixes if c.id in answers}


def corrections_summary(records: Mapping[str, dict[str, Any]], bar: Mapping[str, float]) -> dict[str, Any]:
    """Means over one model's records, and on how many questions it beats the corrected-away answer.

    `bar` maps a correction id to the corrected-away answer's F1 to the correction."""
    items = [(cid, r) for cid, r in records.items() if cid in bar]
    return {"questions": len(items), "f1": mean(r["f1"] for _, r in items), "style": mean(r["style"] for _, r in items),
            "f1_corrected_away": mean(r["f1_corrected_away"] for _, r in items),
            "style_corrected_away": mean(r["style_corrected_away"] for _, r in items),
            "closer": sum(1 for cid, r in items if r["f1"] > bar[cid])}


def corrections_section(found: Fixes, scores: Mapping[str, Mapping[str, dict[str, Any]]],
                        style: StyleModel, passages: bool = False) -> dict[str, Any]:
    """metrics.json's "corrections": each measured correction, and a summary per model in `scores`
    ({label: records}) beside the corrected-away answers' own; `passages`: asked with passages."""
    items = [{"id": c.id, "question": c.question, "context_turns": len(c.context), "correction": c.correction,
              "corrected_away": c.answer, "run": c.run, "time": c.time,
              "corrected_away_f1": word_f1(c.answer, c.correction or ""),
              "corrected_away_style": style_between(style, c.answer, c.correction or "")} for c in found.fixes]
    bar = {i["id"]: i["corrected_away_f1"] for i in items}
    summary: dict[str, Any] = {"corrected_away": {"questions": len(items), "f1": mean(bar.values()),
                                                  "style": mean(i["corrected_away_style"] for i in items)}}
    summary.update({label: corrections_summary(records, bar) for label, records in scores.items()})
    return {"file": found.file, "questions": len(items), "superseded": found.superseded,
            "good_marks": found.good_marks, "skipped": found.skipped, "prompt": PROMPT + (PASSAGES if passages else ""),
            "items": items, "summary": summary}


def compare_corrections(old: str, new: str, old_records: Mapping[str, dict[str, Any]],
                        section: dict[str, Any], new_records: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The comparison's "corrections": both runs on the corrected questions both answered."""
    bar = {i["id"]: i["corrected_away_f1"] for i in section["items"]}
    shared = set(old_records) & set(new_records) & set(bar)
    pick = {cid: bar[cid] for cid in shared}
    return {"old": old, "new": new, "questions": len(shared), "old_summary": corrections_summary(old_records, pick),
            "new_summary": corrections_summary(new_records, pick), "old_answers": dict(old_records)}
