"""What one model's scores amount to, and two runs side by side on the pairs both were scored on.

    summary = summarize(record)                 # means: loss/perplexity per split, F1, ROUGE-L, ...
    comparison = compare(old_metrics, new_metrics)

Pure functions over the records `scoring.score_model` makes (as metrics.json holds them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["compare", "mean", "summarize"]


def mean(values: Iterable[float]) -> float | None:
    """The arithmetic mean, or None for no values."""
    values = list(values)
    return sum(values) / len(values) if values else None


def _share(flags: Iterable[bool]) -> float | None:
    return mean(1.0 if f else 0.0 for f in flags)


def summarize(scores: dict[str, Any], keys: set[str] | None = None,
              questions: set[str] | None = None) -> dict[str, Any]:
    """Means over the items (held-out items restricted to `keys`, probes to `questions`, if given):
    loss/perplexity per split, F1, ROUGE-L, style, and the decline figures.

    The three decline figures: `near_declines`, the share of near-domain probes (data/probes.jsonl)
    declined; `grounded`, the share of the built-in far probes declined; `abstained_answerable`,
    the share of held-out questions the author did answer that were declined (false declines,
    lower is better). `boundary_declines` is the share of held-out boundary pairs declined, and
    `quotes_verified` the share of quoted spans in all generated answers found in her writing.
    `contradicted` is the share of the `contradiction_checked` held-out answers (those not declined)
    with a negation flip of one of her sentences, `contradicted_answers` their number.
    """
    out: dict[str, Any] = {}
    for split in ("test", "valid"):
        items = [r for k, r in scores["loss"].items() if r["split"] == split and (keys is None or k in keys)]
        tokens = sum(i["tokens"] for i in items)
        loss = sum(i["loss_sum"] for i in items) / tokens if tokens else None
        out[split] = {"loss": loss, "perplexity": math.exp(loss) if loss is not None and loss < 50 else None,
                      "examples": len(items), "tokens": tokens}
    answers = [a for k, a in scores["answers"].items() if keys is None or k in keys]
    out["answers"] = len(answers)
    for metric in ("f1", "rouge_l", "style"):
        out[metric] = mean(a[metric] for a in answers)
    answerable = [a for a in answers if not a.get("expects_decline")]
    boundary = [a for a in answers if a.get("expects_decline")]
    out["answerable"] = len(answerable)
    # The other side of groundedness: declining questions the author did answer.
    out["abstained_answerable"] = _share(a.get("abstained") for a in answerable)
    out["boundary_answers"] = len(boundary)
    out["boundary_declines"] = _share(a.get("abstained") for a in boundary)

    def probes_of(group: str) -> list[dict[str, Any]]:
        return [p for q, p in (scores.get(group) or {}).items() if questions is None or q in questions]

    far, near = probes_of("probes"), probes_of("near_probes")
    out["probes"] = len(far)
    out["grounded"] = _share(p["abstained"] for p in far)
    out["near_probes"] = len(near)
    out["near_declines"] = _share(p["abstained"] for p in near)
    # Negation flips against her writing (evaluate/contradiction.py): a lower bound; declines unchecked.
    checked = [a for a in answers if a.get("contradictions") is not None]
    out["contradiction_checked"] = len(checked)
    out["contradicted_answers"] = sum(1 for a in checked if a["contradictions"])
    out["contradicted"] = _share(bool(a["contradictions"]) for a in checked)
    quotes = [q for r in [*answers, *far, *near] for q in r.get("quotes") or ()]
    out["quote_spans"] = len(quotes)
    out["quotes_verified"] = _share(q.get("verified") for q in quotes)
    return out


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Both runs' tuned metrics over the test pairs and the probes both were scored on."""
    old_tuned, new_tuned = old["scores"]["tuned"], new["scores"]["tuned"]
    shared_answers = set(old_tuned["answers"]) & set(new_tuned["answers"])
    shared_loss = {k for k in set(old_tuned["loss"]) & set(new_tuned["loss"]) if new_tuned["loss"][k]["split"] == "test"}
    keys = shared_answers | shared_loss
    shared_probes = {q for group in ("probes", "near_probes")
                     for q in set(old_tuned.get(group) or {}) & set(new_tuned.get(group) or {})}
    return {
        "old": old["run"],
        "new": new["run"],
        "shared_answers": len(shared_answers),
        "shared_test_loss": len(shared_loss),
        "shared_probes": len(shared_probes),
        "old_summary": summarize(old_tuned, keys, shared_probes),
        "new_summary": summarize(new_tuned, keys, shared_probes),
        "base_summary": summarize(new["scores"]["base"], keys, shared_probes) if "base" in new["scores"] else None,
    }
