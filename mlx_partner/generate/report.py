"""What a generate run shows: the dry-run plan, the live progress line, and the summary.

    print(format_plan(prep, settings))     # --dry-run
    print(format_summary(result))          # after a run

Progress goes to stderr; plans and summaries are returned as text for the CLI to print. `Echo`
is how a run says one line (a note, a skipped file) to whoever called it.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import GenerateSettings
from ..grounding import BOUNDARY, KINDS
from .local import time_estimate
from .plan import Prepared
from .requests import Price, batch_words

Echo = Callable[[str], None]


def short_count(n: float) -> str:
    """1234 -> '1.2k'; under 1000 as a whole number."""
    return f"{n / 1000:.1f}k" if n >= 1000 else str(int(n))


def plan_target(prep: Prepared, settings: GenerateSettings) -> str:
    """What the plan's header names: the model, and the local endpoint it runs at; the in-process
    MLX generator once (its model is its endpoint: `mlx:<path>`)."""
    endpoint = prep.endpoint
    if endpoint is None or not endpoint.local:
        return settings.model
    if endpoint.url == settings.model:
        return f"{settings.model} ({endpoint.server or 'in process'}, local, $0)"
    return f"{settings.model} at {endpoint.describe()}"


def format_plan(prep: Prepared, settings: GenerateSettings, batch_api: bool = False) -> str:
    """The dry-run report: batches, requests, tokens and cost. Nothing is sent."""
    est = prep.estimate
    lines = [*prep.notes, f"Plan for {plan_target(prep, settings)}{' via the Message Batches API (half price)' if batch_api else ''}:"]
    lines.append(f"  {'batch':<28} {'docs':>4} {'words':>6} {'pairs':>5} {'kept':>4} {'rounds':>6} {'boundary':>8} {'to send':>7}")
    for p in prep.plans:
        boundary = [r for r in p.rounds if r.boundary]
        lines.append(
            f"  {p.batch.id:<28} {len(p.batch.doc_ids):>4} {batch_words(p.batch):>6} {p.target:>5} "
            f"{p.kept:>4} {len(p.rounds):>6} {sum(r.n_pairs for r in boundary):>8} {len(p.todo):>7}"
        )
    total_rounds = sum(len(p.rounds) for p in prep.plans) + (1 if prep.probes_todo else 0)
    lines.append(f"  {len(prep.plans)} batches, {sum(p.target for p in prep.plans)} pairs, "
                 f"{est.requests} of {total_rounds} requests to send ({total_rounds - est.requests} already done).")
    lines += boundary_plan_lines(prep, settings)
    if prep.stale:
        lines.append(f"  {len(prep.stale)} pairs would be retired (their sources changed, were removed, or --force).")
    lines.append(
        f"Estimated tokens: {short_count(est.total_input)} input ({short_count(est.cache_read_input_tokens)} read from cache, "
        f"{short_count(est.cache_creation_input_tokens)} written to cache, {short_count(est.input_tokens)} uncached), "
        f"{short_count(est.output_tokens)} output."
    )
    if prep.endpoint and prep.endpoint.local:  # no prompt cache, no price: the time it takes
        lines[-1] = f"Estimated tokens: {short_count(est.total_input)} input, {short_count(est.output_tokens)} output."
        seconds, how = time_estimate(est.total_input, est.output_tokens, prep.measured_rate)
        lines.append(f"Estimated time: {duration(seconds)} ({how}). Cost: local, $0.")
        return "\n".join(lines)
    note = "" if est.price.known else f" ({settings.model} is not a Claude model name: priced as Sonnet)"
    lines.append(f"Estimated cost: ${est.cost:.2f}{note}.")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """95 -> '~2 min'; 5400 -> '~1.5 h'."""
    return f"~{seconds / 3600:.1f} h" if seconds >= 5400 else f"~{max(1, round(seconds / 60))} min"


def boundary_plan_lines(prep: Prepared, settings: GenerateSettings) -> list[str]:
    """The dry run's lines on boundary rounds and the probe request."""
    rounds = [r for p in prep.plans for r in p.rounds if r.boundary]
    todo = [r for p in prep.plans for r in p.todo if r.boundary]
    lines = []
    if rounds:
        pairs = sum(r.n_pairs for r in rounds)
        share = pairs / max(1, sum(r.n_pairs for p in prep.plans for r in p.rounds))
        lines.append(f"  Boundary rounds: {len(rounds)} ({len(todo)} to send), {pairs} boundary pairs ({share:.0%} of the "
                     "pairs planned), each after its batch's other rounds; checked absent from every document, "
                     f"against a threshold calibrated then on the answered questions ({prep.answered} on disk now).")
    elif settings.mix.get(BOUNDARY, 0) <= 0:
        lines.append("  Boundary rounds: none (the mix gives boundary pairs no share).")
    if prep.probes_todo:
        lines.append(f"  Probe request: 1, after the batches: {prep.probes_todo} near-domain probe questions for `eval` "
                     "-> data/probes.jsonl, checked absent like boundary pairs, never trained on "
                     "(sent through the Messages API, full price).")
    elif prep.probes_kept:
        lines.append(f"  Probe request: none; data/probes.jsonl holds {prep.probes_kept} probes, kept (--force writes new ones).")
    return lines


@dataclass
class GenerateResult:
    """What a run did, for the summary."""

    model: str
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)  # by reason code
    per_batch: dict[str, Counter] = field(default_factory=dict)
    reasons_per_batch: dict[str, Counter] = field(default_factory=dict)  # batch -> rejections by reason
    per_kind: Counter = field(default_factory=Counter)
    usage: Counter = field(default_factory=Counter)
    cost: float = 0.0
    requests: int = 0  # sent, including re-asks
    already_done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    boundary_failed: dict[str, str] = field(default_factory=dict)  # batch -> why its boundary round failed
    threshold: str = ""  # the absence check's threshold, described, when one was used
    boundary_checked: int = 0  # boundary candidates that reached the absence check
    boundary_absent: int = 0  # ... and passed it
    probes_written: int = 0
    probes_tried: int = 0
    probes_rejected: Counter = field(default_factory=Counter)
    probes_failed: str = ""
    probes_waiting: bool = False  # not sent: some batch failed this run
    retired: int = 0
    active_total: int = 0
    notes: list[str] = field(default_factory=list)
    price: Price | None = None


    @property
    def complete(self) -> bool:
        """Everything asked for is done: no batch, boundary round or probe request failed."""
        return not (self.failed or self.boundary_failed or self.probes_failed)


def boundary_summary_lines(res: GenerateResult) -> list[str]:
    """The summary's lines on boundary pairs, the absence check and the probes."""
    lines = []
    boundary = res.per_kind[BOUNDARY]
    if res.threshold:
        share = f" ({boundary / res.accepted:.0%} of the pairs accepted)" if res.accepted else ""
        lines.append(f"Boundary pairs: {boundary} accepted this run{share}; {res.threshold}.")
    if res.boundary_checked and not res.boundary_absent:
        lines.append(f"No boundary question passed the absence check: all {res.boundary_checked} candidates tried score like "
                     f"questions her writing answers; this corpus may be too broad for boundary pairs (lower their "
                     f"share with --mix, boundary=0 turns them off).")
    if res.probes_written:
        why = ", ".join(f"{k} {v}" for k, v in sorted(res.probes_rejected.items()))
        lines.append(f"Probes: wrote {res.probes_written} near-domain probe questions to data/probes.jsonl "
                     f"({res.probes_tried} tried{'; rejected: ' + why if why else ''}); never trained on.")
    if res.probes_failed:
        lines.append(f"Probe request FAILED: {res.probes_failed}; it is asked again on the next run.")
    if res.probes_waiting:
        lines.append("Probes wait until every batch is through (their check is calibrated on all her answered questions).")
    if res.boundary_failed:
        lines.append(f"Boundary rounds failed, asked again on the next run: {', '.join(sorted(res.boundary_failed))}.")
    return lines


def format_summary(res: GenerateResult) -> str:
    """What a run did: pairs by reason and kind, each batch's requests, tokens and cost."""
    lines = [f"Accepted {res.accepted} pairs this run ({res.active_total} active in all); "
             f"rejected {sum(res.rejected.values())}."]
    if res.rejected:
        lines.append("Rejected by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(res.rejected.items())))
    if res.per_kind:
        lines.append("Accepted by kind: " + ", ".join(f"{k} {res.per_kind[k]}" for k in KINDS if res.per_kind[k]))
    if res.per_batch:
        lines.append(f"  {'batch':<28} {'requests':>8} {'accepted':>8} {'rejected':>8} {'rate':>5}  status (top reasons)")
        for batch_id, c in res.per_batch.items():
            status = f"FAILED: {res.failed[batch_id]}" if batch_id in res.failed else "ok"
            if batch_id in res.boundary_failed:
                status = f"boundary round FAILED: {res.boundary_failed[batch_id]}"
            whys = res.reasons_per_batch.get(batch_id)
            if whys and batch_id not in res.failed:
                status += " (" + ", ".join(f"{code} {n}" for code, n in whys.most_common(3)) + ")"
            seen = c["accepted"] + c["rejected"]
            rate = f"{c['rejected'] / seen:.0%}" if seen else "-"
            lines.append(f"  {batch_id:<28} {c['requests']:>8} {c['accepted']:>8} {c['rejected']:>8} {rate:>5}  {status}")
    u = res.usage
    lines.append(
        f"Requests: {res.requests} sent, {res.already_done} already done earlier. Tokens: "
        f"{short_count(u['input_tokens'] + u['cache_creation_input_tokens'] + u['cache_read_input_tokens'])} input "
        f"({short_count(u['cache_read_input_tokens'])} from cache), {short_count(u['output_tokens'])} output. "
        + ("Cost: local, $0." if res.price is not None and res.price.family == "local" else
           f"Estimated cost: ${res.cost:.2f}"
           + ("" if res.price is None or res.price.known else f" (priced as Sonnet: {res.model} is not a known model family)")
           + ".")
    )
    if res.retired:
        lines.append(f"Retired {res.retired} pairs whose sources changed (see data/retired.jsonl).")
    lines += res.notes
    lines += boundary_summary_lines(res)
    if res.failed:
        lines.append(f"Failed batches, retried on the next run: {', '.join(sorted(res.failed))}.")
    return "\n".join(lines)


class Progress:
    """A live line on stderr: requests, pairs, tokens, elapsed, ETA. A TTY gets it redrawn in
    place; a pipe or log gets a line at most every few seconds."""

    def __init__(self, total: int, stream: Any = None, every: float = 5.0) -> None:
        self.total, self.done, self.accepted, self.rejected, self.tokens = total, 0, 0, 0, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self.last = time.monotonic()
        self.every = every
        self.status = ""

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0
        fmt = lambda s: f"{int(s) // 60}:{int(s) % 60:02d}"  # noqa: E731
        extra = f" · {self.status}" if self.status else ""
        return (
            f"requests {self.done}/{self.total} · pairs {self.accepted} accepted, {self.rejected} rejected · "
            f"{short_count(self.tokens)} tokens · {fmt(elapsed)} elapsed · ETA {fmt(eta) if self.done else '?'}{extra}"
        )

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
        elif force or now - self.last >= self.every:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self.last = now

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.line() + "\n")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


def nothing_accepted(res: GenerateResult) -> str:
    """One line for a run that sent rounds and accepted no pair at all ("" otherwise)."""
    sent = sum(c["requests"] for c in res.per_batch.values())
    rejected = sum(res.rejected.values())
    if res.accepted or not sent or not (rejected or res.failed or res.boundary_failed):
        return ""  # (a re-sent request whose pairs a killed run had written accepts none, rightly)
    why = ", ".join(f"{code} {n}" for code, n in res.rejected.most_common(3))
    failures = Counter(reason[:160] for reason in [*res.failed.values(), *res.boundary_failed.values()])
    failed = "; ".join(f"{n} batch{'es' if n > 1 else ''}: {reason}" for reason, n in failures.most_common(2))
    return (f"No pair accepted: {sent} requests to {res.model}, {rejected} pairs rejected{f' ({why})' if why else ''}"
            f"{f', failed ({failed})' if failed else ''}; nothing was added to data/pairs/ (the reasons are in "
            "data/rejected.jsonl and data/ledger.jsonl).")
