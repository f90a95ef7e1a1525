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


def summarize(scores: dict[str, Any], keys: set[str] | None = None) -> dict[str, Any]:
    """Means over the items (restricted to `keys` if given): loss/perplexity per split, F1, ROUGE-L,
    style, and the share of probes answered with a decline."""
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
    # The other side of groundedness: declining questions the author did answer.
    out["abstained_answerable"] = mean(1.0 if a.get("abstained") else 0.0 for a in answers)
    probes = list(scores["probes"].values())
    out["probes"] = len(probes)
    out["grounded"] = mean(1.0 if p["abstained"] else 0.0 for p in probes)
    return out


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Both runs' tuned metrics over the test pairs both were scored on (by content key)."""
    old_tuned, new_tuned = old["scores"]["tuned"], new["scores"]["tuned"]
    shared_answers = set(old_tuned["answers"]) & set(new_tuned["answers"])
    shared_loss = {k for k in set(old_tuned["loss"]) & set(new_tuned["loss"]) if new_tuned["loss"][k]["split"] == "test"}
    keys = shared_answers | shared_loss
    return {
        "old": old["run"],
        "new": new["run"],
        "shared_answers": len(shared_answers),
        "shared_test_loss": len(shared_loss),
        "old_summary": summarize(old_tuned, keys),
        "new_summary": summarize(new_tuned, keys),
        "base_summary": summarize(new["scores"]["base"], keys) if "base" in new["scores"] else None,
    }
