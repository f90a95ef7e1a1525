"""eval's report: the summary rows the CLI prints, report.md and chart.png, from a metrics dict.

    rows = summary_rows(metrics)          # (metric, base, tuned), as `mlx-partner eval` prints them
    text = render_report(metrics)         # eval/<run>/report.md
    write_chart(out_dir / "chart.png", metrics)

Pure rendering over what metrics.json holds, except `write_chart`, which draws with matplotlib
(`plots.bar_chart`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..decline import DECLINE_PHRASE
from ..plots import bar_chart
from ..textfmt import md_table

__all__ = ["CHART_METRICS", "COMPARE_ROWS", "comparison_rows", "fmt", "render_report", "summary_rows", "write_chart"]

# (row name, split or None, summary key, which direction is better)
COMPARE_ROWS = (
    ("test loss", "test", "loss", "lower"),
    ("test perplexity", "test", "perplexity", "lower"),
    ("answer F1", None, "f1", "higher"),
    ("ROUGE-L", None, "rouge_l", "higher"),
    ("style similarity", None, "style", "higher"),
    ("grounded (probes)", None, "grounded", "higher"),
    ("declines held-out questions", None, "abstained_answerable", "lower"),
)

# The chart's groups: (label, summary key), all on a 0..1 scale.
CHART_METRICS = (("F1", "f1"), ("ROUGE-L", "rouge_l"), ("style", "style"), ("grounded", "grounded"))


def fmt(value: Any, digits: int = 3) -> str:
    """A metric for a table: floats to `digits` places, None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _count(share: float | None, total: int) -> str:
    """A share of `total` items as "k/n", or "-" when there is none to count."""
    if not total or share is None:
        return "-"
    return f"{round(share * total)}/{total}"


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, base, tuned) rows for the summary table."""
    base, tuned = metrics["summary"]["base"], metrics["summary"]["tuned"]

    def grounded(s: dict[str, Any]) -> str:
        return _count(s["grounded"], s["probes"])

    def declined(s: dict[str, Any]) -> str:
        return _count(s.get("abstained_answerable"), s["answers"])

    return [
        (f"test loss ({base['test']['examples']} pairs)", fmt(base["test"]["loss"]), fmt(tuned["test"]["loss"])),
        ("test perplexity", fmt(base["test"]["perplexity"], 2), fmt(tuned["test"]["perplexity"], 2)),
        (f"valid loss ({base['valid']['examples']} pairs)", fmt(base["valid"]["loss"]), fmt(tuned["valid"]["loss"])),
        ("valid perplexity", fmt(base["valid"]["perplexity"], 2), fmt(tuned["valid"]["perplexity"], 2)),
        (f"answer F1 ({tuned['answers']} answers)", fmt(base["f1"]), fmt(tuned["f1"])),
        ("answer ROUGE-L", fmt(base["rouge_l"]), fmt(tuned["rouge_l"])),
        (f"style similarity (references: {fmt(metrics.get('reference_style'))})", fmt(base["style"]), fmt(tuned["style"])),
        ("grounded: says it has not written on it", grounded(base), grounded(tuned)),
        ("declines held-out questions (lower is better)", declined(base), declined(tuned)),
    ]


def comparison_rows(comparison: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, old run, new run, which is better) rows."""
    rows = []
    old, new = comparison["old_summary"], comparison["new_summary"]
    for name, split, key, better in COMPARE_ROWS:
        a = old[split][key] if split else old[key]
        b = new[split][key] if split else new[key]
        verdict = ""
        if a is not None and b is not None and abs(a - b) > 1e-9:
            verdict = comparison["new"] if (b < a) == (better == "lower") else comparison["old"]
        rows.append((name, fmt(a), fmt(b), verdict))
    return rows


def _quote(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return (text[: limit - 1] + "…") if len(text) > limit else text


def render_report(metrics: dict[str, Any]) -> str:
    """report.md: the summary table, the comparison if any, every answer, the probe's answers."""
    run, s = metrics["run"], metrics["settings"]
    lines = [
        f"# Evaluation of run {run}",
        "",
        f"Base model: `{metrics['base_model']}`. Evaluated {metrics['created']}, greedy decoding, seed {s['seed']}, "
        f"at most {s['max_tokens']} new tokens an answer. Loss is on the author's answers only (the prompt is "
        f"masked, as in training); answers are scored against the author's reference answers; style is the "
        f"character n-gram TF-IDF cosine similarity to the author's sources; grounded counts the questions on "
        f"topics absent from the sources that were answered with \"{DECLINE_PHRASE}\" or the like, "
        f"and declines counts the same kind of answer to held-out questions the author did answer.",
        "",
        "![base and tuned scores](chart.png)",
        "",
        md_table(["metric", "base", run], summary_rows(metrics)),
        "",
    ]
    comparison = metrics.get("comparison")
    if comparison:
        lines += [
            f"## {comparison['new']} against {comparison['old']}",
            "",
            f"On the same held-out pairs: {comparison['shared_answers']} answered by both, "
            f"{comparison['shared_test_loss']} test pairs scored for loss by both.",
            "",
            md_table(["metric", comparison["old"], comparison["new"], "better"], comparison_rows(comparison)),
            "",
        ]
    return "\n".join(lines + _answer_lines(metrics) + _probe_lines(metrics))


def _answer_lines(metrics: dict[str, Any]) -> list[str]:
    """The "Answers" section: each held-out question with the author's, base's and run's answers."""
    run = metrics["run"]
    base, tuned = metrics["scores"]["base"], metrics["scores"]["tuned"]
    lines = ["## Answers", ""]
    for ex in metrics["examples"]:
        key = ex["key"]
        b, t = base["answers"].get(key), tuned["answers"].get(key)
        if not b or not t:
            continue
        lines += [
            f"**Q ({ex['split']}):** {_quote(ex['question'])}",
            "",
            f"- *author:* {_quote(ex['reference'])}",
            f"- *base* (F1 {fmt(b['f1'], 2)}): {_quote(b['answer'])}",
            f"- *{run}* (F1 {fmt(t['f1'], 2)}): {_quote(t['answer'])}",
            "",
        ]
    return lines


def _probe_lines(metrics: dict[str, Any]) -> list[str]:
    """The "Groundedness probe" section, if any probes were asked."""
    run = metrics["run"]
    base, tuned = metrics["scores"]["base"], metrics["scores"]["tuned"]
    if not tuned["probes"]:
        return []
    rows = []
    for question, t in tuned["probes"].items():
        b = base["probes"].get(question, {})
        rows.append([_quote(question, 80), "yes" if b.get("abstained") else "no", "yes" if t["abstained"] else "no",
                     _quote(t["answer"], 160)])
    return ["## Groundedness probe", "", "Questions on topics the author has not written about.", "",
            md_table(["question", "base abstains", f"{run} abstains", f"{run} answer"], rows), ""]


def write_chart(path: Path, metrics: dict[str, Any]) -> None:
    """chart.png: base and tuned scores; with a comparison, base, the old run and the new one on
    the pairs both runs share."""
    comparison = metrics.get("comparison")
    if comparison and comparison.get("base_summary"):
        summaries = [comparison["base_summary"], comparison["old_summary"], comparison["new_summary"]]
        names = ["base", comparison["old"], comparison["new"]]
    else:
        summaries = [metrics["summary"]["base"], metrics["summary"]["tuned"]]
        names = ["base", metrics["run"]]
    series: dict[str, list[float | None]] = {}
    for name, summary in zip(names, summaries, strict=True):
        label = name if name not in series else f"{name} (now)"  # --compare with the run itself
        series[label] = [summary[key] or 0.0 for _, key in CHART_METRICS]
    last = summaries[-1]
    title = f"{last['answers']} held-out answers, {last['probes']} probes"
    bar_chart(path, title, [label for label, _ in CHART_METRICS], series, "score (0 to 1)",
              ylim=(0.0, 1.1), value_format="{:.0%}")
