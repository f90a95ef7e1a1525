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

__all__ = ["CHART_METRICS", "COMPARE_ROWS", "CONTRADICTION_ROW", "DECLINE_ROWS", "comparison_rows", "contradiction_line",
           "corrections_line", "fmt", "passages_line", "render_report", "retrieval_line", "summary_rows", "write_chart"]

# The three decline figures (and the held-out boundary pairs'): (row name, share key, count key).
DECLINE_ROWS = (
    ("declines near-domain probes", "near_declines", "near_probes"),
    ("declines far probes", "grounded", "probes"),
    ("false declines: answerable held-out (lower is better)", "abstained_answerable", "answerable"),
    ("declines held-out boundary pairs", "boundary_declines", "boundary_answers"),
)

# (row name, split or None, summary key, which direction is better)
COMPARE_ROWS = (
    ("test loss", "test", "loss", "lower"),
    ("test perplexity", "test", "perplexity", "lower"),
    ("answer F1", None, "f1", "higher"),
    ("ROUGE-L", None, "rouge_l", "higher"),
    ("style similarity", None, "style", "higher"),
    ("declines near-domain probes", None, "near_declines", "higher"),
    ("declines far probes", None, "grounded", "higher"),
    ("false declines (answerable)", None, "abstained_answerable", "lower"),
    ("quoted spans verified", None, "quotes_verified", "higher"),
)

# evaluate/contradiction.py's count, as n/N in both tables (fewer is better)
CONTRADICTION_ROW = "answers contradicting her writing (negation flips, a lower bound)"

# The chart's groups: (label, summary key), all on a 0..1 scale.
CHART_METRICS = (("F1", "f1"), ("ROUGE-L", "rouge_l"), ("style", "style"), ("near declines", "near_declines"),
                 ("far declines", "grounded"), ("false declines\n(lower is better)", "abstained_answerable"))


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

    def share(s: dict[str, Any], key: str, count: str) -> str:
        return _count(s.get(key), s.get(count, 0))

    rows = [
        (f"test loss ({base['test']['examples']} pairs)", fmt(base["test"]["loss"]), fmt(tuned["test"]["loss"])),
        ("test perplexity", fmt(base["test"]["perplexity"], 2), fmt(tuned["test"]["perplexity"], 2)),
        (f"valid loss ({base['valid']['examples']} pairs)", fmt(base["valid"]["loss"]), fmt(tuned["valid"]["loss"])),
        ("valid perplexity", fmt(base["valid"]["perplexity"], 2), fmt(tuned["valid"]["perplexity"], 2)),
        (f"answer F1 ({tuned['answers']} answers)", fmt(base["f1"]), fmt(tuned["f1"])),
        ("answer ROUGE-L", fmt(base["rouge_l"]), fmt(tuned["rouge_l"])),
        (f"style similarity (references: {fmt(metrics.get('reference_style'))})", fmt(base["style"]), fmt(tuned["style"])),
    ]
    for name, key, count in DECLINE_ROWS:
        if count != "boundary_answers" or tuned.get(count):
            rows.append((name, share(base, key, count), share(tuned, key, count)))
    rows.append(("quoted spans found in your writing", share(base, "quotes_verified", "quote_spans"),
                 share(tuned, "quotes_verified", "quote_spans")))
    rows.append((CONTRADICTION_ROW, _flips(base), _flips(tuned)))
    corrections = (metrics.get("corrections") or {}).get("summary") or {}
    if corrections.get("tuned", {}).get("questions"):  # [learn-from-use] evaluate/corrections.py
        away, n = corrections["corrected_away"], corrections["tuned"]["questions"]
        rows.append((f"closer to your corrections: F1 ({_questions(n)}; the corrected-away answers' {fmt(away['f1'])})",
                     fmt(corrections["base"]["f1"]), fmt(corrections["tuned"]["f1"])))
    return rows


def _flips(summary: dict[str, Any]) -> str:
    """Answers with a negation flip of her writing, of those checked: "k/n" ("-": none checked, or
    an eval made before it was measured)."""
    checked = summary.get("contradiction_checked") or 0
    return f"{summary.get('contradicted_answers', 0)}/{checked}" if checked else "-"


def contradiction_line(metrics: dict[str, Any]) -> str:
    """The contradiction count of both models and what it is (and is not); '' for an eval made
    before it was measured."""
    rule = metrics.get("contradiction")
    if not rule:
        return ""
    base, tuned = metrics["summary"]["base"], metrics["summary"]["tuned"]
    return (f"Answers contradicting her writing (negation flips, a lower bound): base {_flips(base)}, "
            f"{metrics['run']} {_flips(tuned)} of the held-out answers that do not decline. Each answer sentence "
            f"is compared, clause by clause, with every sentence of the documents its pair cites and of the "
            f"{rule['passages']} passages retrieval finds for its question: a flip is a clause of the answer and "
            f"one of hers that share at least {rule['min_overlap']:.0%} of their content words (of whichever has "
            f"more), exactly one of the two negated (not, no, never, n't, nothing, nobody, none, neither, nor, "
            f"cannot). Deliberately narrow: "
            f"a contradiction in other words is not caught, so 0 does not mean none.")


def _questions(n: int) -> str:
    return f"{n} question" if n == 1 else f"{n} questions"


def corrections_line(summary: dict[str, Any], corrected_away: dict[str, Any]) -> str:
    """One model on the corrected questions: "closer to your corrections: F1 x vs the corrected-away
    answer's y", with style and on how many questions it beats the corrected-away answer."""
    return (f"closer to your corrections: F1 {fmt(summary['f1'])} vs the corrected-away answer's "
            f"{fmt(corrected_away['f1'])} (style {fmt(summary['style'])} vs {fmt(corrected_away['style'])}); "
            f"above its F1 on {summary['closer']}/{_questions(summary['questions'])}; F1 to the corrected-away "
            f"answer {fmt(summary['f1_corrected_away'])} (lower: further from what you corrected)")


def passages_line(metrics: dict[str, Any]) -> str:
    """One line when eval put passages of her writing in the prompts ('' when not, or an eval made
    before it could): how every question was asked."""
    used = metrics.get("passages") or {}
    if not used.get("in_prompt"):
        return ""
    return (f"Passages in the prompt: the run was trained with passages of your writing before each question "
            f"([dataset] passages = true), so every question here, held-out pairs and probes, was asked of both "
            f"models as `chat --rag` asks it: the {used['per_question']} passages its retrieval finds closest, "
            f"then the question.")


def retrieval_line(metrics: dict[str, Any]) -> str:
    """One line on retrieval accuracy, as `eval` prints it ('' for an eval made before it existed)."""
    r = metrics.get("retrieval") or {}
    if not r.get("questions"):
        return ""
    line = (f"Retrieval: the top passage is from the essay the pair cites for {r['hits']}/{r['questions']} "
            f"held-out questions ({r['accuracy']:.0%}, the question alone).")
    probes = r.get("probes") or {}
    if probes.get("probes"):
        line += (f" Near-domain probes covered like answered questions (coverage >= {probes['threshold']:.2f}): "
                 f"{probes['covered']}/{probes['probes']}.")
    return line


def comparison_rows(comparison: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, old run, new run, which is better) rows."""
    rows = []
    old, new = comparison["old_summary"], comparison["new_summary"]
    for name, split, key, better in COMPARE_ROWS:
        a = old[split][key] if split else old.get(key)
        b = new[split][key] if split else new.get(key)
        verdict = ""
        if a is not None and b is not None and abs(a - b) > 1e-9:
            verdict = comparison["new"] if (b < a) == (better == "lower") else comparison["old"]
        rows.append((name, fmt(a), fmt(b), verdict))
    a, b = old.get("contradicted"), new.get("contradicted")
    if a is not None or b is not None:  # evaluate/contradiction.py: fewer is better
        verdict = "" if a is None or b is None or abs(a - b) <= 1e-9 else comparison["new"] if b < a else comparison["old"]
        rows.append((CONTRADICTION_ROW, _flips(old), _flips(new), verdict))
    fixes = comparison.get("corrections") or {}
    if fixes.get("questions"):  # [learn-from-use] both runs on the questions corrected in chat
        a, b = fixes["old_summary"]["f1"], fixes["new_summary"]["f1"]
        verdict = "" if a is None or b is None or abs(a - b) <= 1e-9 else fixes["new"] if b > a else fixes["old"]
        rows.append((f"closer to your corrections: F1 ({_questions(fixes['questions'])})", fmt(a), fmt(b), verdict))
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
        f"character n-gram TF-IDF cosine similarity to the author's sources. A decline is an answer like "
        f"\"{DECLINE_PHRASE}\" (`mlx_partner.decline`): counted on near-domain probes (questions in her field "
        f"that her writing does not answer, data/probes.jsonl, never trained on), on the built-in far probes "
        f"(topics absent from her sources), and, as false declines, on held-out questions she did answer. Quoted "
        f"spans are the double-quoted passages of four words or more in generated answers, checked against her "
        f"documents with `generate`'s quote check.",
        "",
        *([passages_line(metrics), ""] if passages_line(metrics) else []),
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
            f"{comparison['shared_test_loss']} test pairs scored for loss by both, "
            f"{comparison.get('shared_probes', 0)} probes asked of both.",
            "",
            md_table(["metric", comparison["old"], comparison["new"], "better"], comparison_rows(comparison)),
            "",
        ]
    lines += _correction_lines(metrics) + _retrieval_lines(metrics) + _contradiction_lines(metrics)
    return "\n".join(lines + _answer_lines(metrics) + _probe_lines(metrics, "near_probes") + _probe_lines(metrics, "probes"))


def _correction_lines(metrics: dict[str, Any]) -> list[str]:
    """The "Your corrections" section: each model on the questions corrected in chat with `/fix`,
    and per question every model's answer and its F1 to the correction (evaluate/corrections.py)."""
    section = metrics.get("corrections")
    if section is None:  # an eval made before corrections were measured
        return []
    if not section.get("questions"):
        return ["## Your corrections", "", f"No corrections to measure: {section['file']} holds no `/fix` answers "
                "(`/fix` in `mlx-partner chat` saves one).", ""]
    run, summary = metrics["run"], section["summary"]
    fixes = (metrics.get("comparison") or {}).get("corrections") or {}
    models = [("base", summary["base"], metrics["scores"]["base"]["corrections"])]
    if fixes.get("questions"):
        old = fixes["old"] if fixes["old"] != run else f"{run} (compared)"  # --compare with the run itself
        models.append((old, fixes["old_summary"], fixes["old_answers"]))
    models.append((run, summary["tuned"], metrics["scores"]["tuned"]["corrections"]))
    left = [f"{section['superseded']} earlier `/fix` of a question corrected again"] if section["superseded"] else []
    left += [f"{section['good_marks']} `/good` marks"] if section["good_marks"] else []
    lines = ["## Your corrections", "",
             f"{_questions(section['questions'])} you corrected in chat (`/fix`, {section['file']}, the latest of each"
             f"{'; not measured: ' + ', '.join(left) if left else ''}), each asked as {section['prompt']}. F1 is "
             f"word overlap with your corrected answer, style the character n-gram TF-IDF cosine to it; the "
             f"corrected-away answer is what the partner said before you corrected it.", ""]
    lines += [f"- *{name}*: {corrections_line(s, summary['corrected_away'])}" for name, s, _ in models] + [""]
    headers = ["question", "your correction", "corrected away (F1)"] + [f"{name} (F1)" for name, _, _ in models]
    rows = []
    for item in section["items"]:
        row = [_quote(item["question"], 80), _quote(item["correction"] or "", 120),
               f"{_quote(item['corrected_away'], 100)} ({fmt(item['corrected_away_f1'], 2)})"]
        for _, _, records in models:
            r = records.get(item["id"])
            row.append(f"{_quote(r['answer'], 100)} ({fmt(r['f1'], 2)})" if r else "-")
        rows.append(row)
    return lines + [md_table(headers, rows), ""]


def _retrieval_lines(metrics: dict[str, Any]) -> list[str]:
    """The "Retrieval" section: the top passage of each held-out question against the cited essay."""
    r = metrics.get("retrieval") or {}
    if not r.get("questions"):
        return []
    rows = [[_quote(i["question"], 80), ", ".join(i["cited"]), i["top"] or "-", "yes" if i["hit"] else "no"]
            for i in r.get("items", [])]
    return ["## Retrieval", "", retrieval_line(metrics), "",
            md_table(["question", "cited", "top passage (document:line)", "cited?"], rows), ""]


def _contradiction_lines(metrics: dict[str, Any]) -> list[str]:
    """The "Contradictions" section: the count, then each flagged answer sentence beside the
    sentence of hers it turns over, quoted with where it is, so the author can check each one."""
    line = contradiction_line(metrics)
    if not line:
        return []
    questions = {ex["key"]: ex["question"] for ex in metrics["examples"]}
    lines = ["## Contradictions", "", line, ""]
    for label, name in (("base", "base"), ("tuned", metrics["run"])):
        for key, item in metrics["scores"][label]["answers"].items():
            for flip in item.get("contradictions") or ():
                lines += [f"- *{name}*, Q: {_quote(questions.get(key, key), 160)}",
                          f"  - answer: \"{_quote(flip['answer'])}\"",
                          f"  - her writing ({flip['where']}): \"{_quote(flip['source'])}\"", ""]
    if len(lines) == 4:
        lines += ["No answer sentence turns one of hers over.", ""]
    return lines


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
        kind = " boundary: the author declines" if t.get("expects_decline") else ""
        lines += [
            f"**Q ({ex['split']}{kind}):** {_quote(ex['question'])}",
            "",
            f"- *author:* {_quote(ex['reference'])}",
            f"- *base* (F1 {fmt(b['f1'], 2)}): {_quote(b['answer'])}",
            f"- *{run}* (F1 {fmt(t['f1'], 2)}): {_quote(t['answer'])}",
            "",
        ]
    return lines


_PROBE_SECTIONS = {
    "near_probes": ("Near-domain probes", "Questions in the author's field that her writing does not answer "
                    "(data/probes.jsonl, never trained on)."),
    "probes": ("Far probes", "Questions on topics absent from the author's sources altogether."),
}


def _probe_lines(metrics: dict[str, Any], group: str) -> list[str]:
    """A probe section (near-domain or far), if any of its probes were asked."""
    run = metrics["run"]
    base, tuned = metrics["scores"]["base"], metrics["scores"]["tuned"]
    if not tuned.get(group):
        return []
    rows = []
    for question, t in tuned[group].items():
        b = (base.get(group) or {}).get(question, {})
        rows.append([_quote(question, 80), "yes" if b.get("abstained") else "no", "yes" if t["abstained"] else "no",
                     _quote(t["answer"], 160)])
    title, blurb = _PROBE_SECTIONS[group]
    return [f"## {title}", "", blurb, "",
            md_table(["question", "base declines", f"{run} declines", f"{run} answer"], rows), ""]


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
        series[label] = [summary.get(key) for _, key in CHART_METRICS]  # None: not measured, no bar
    last = summaries[-1]
    title = (f"{last['answers']} held-out answers, {last.get('near_probes', 0)} near-domain and "
             f"{last['probes']} far probes")
    bar_chart(path, title, [label for label, _ in CHART_METRICS], series, "score (0 to 1)",
              ylim=(0.0, 1.1), value_format="{:.0%}")
