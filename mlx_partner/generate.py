"""`generate`: thematic batches of the author's documents -> grounded Q&A pairs, via Claude.

    result = run_generate(ws, settings.generate, settings.sources, echo=print)

Each batch is asked for pairs in rounds; later rounds list the questions already asked. This
module is the edge: the Anthropic client, the worker pool or the Message Batches loop, the
files. The pure parts live beside it, and every public name stays importable from here:

  gen_requests.py  prices, round planning, the request for one round (instructions, documents, tool)
  gen_replies.py   a reply -> pair records, checked (`parse_reply`, `review_pairs`)
  gen_ledger.py    the ledger and pairs on disk -> what is left to do (`plan_generation`)
  gen_plan.py      `prepare`: settings check, what a run reads first, the dry-run estimate
  gen_api.py       credentials, redaction, SDK errors -> one plain sentence
  gen_report.py    the dry-run plan, the progress line, the summary

What lands on disk (all under data/):
  pairs/<batch>.jsonl  accepted pairs, appended as replies arrive
  rejected.jsonl       every pair that failed a check, with its reason
  ledger.jsonl         one record per request: tokens, cost, status, source hashes (never a key)
  retired.jsonl        pairs taken out because a document they cite changed or was removed
  sources.json         {doc_id: sha256} of the documents as last generated

A finished request (batch id + batch hash + round + prompt version, status ok in the ledger) is
never sent again, so a killed run loses at most its in-flight requests.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import GenerateSettings, SourcesSettings
from .errors import GenerationError
from .gen_api import (
    SECRET_VARS,
    check_credentials,
    describe_api_error,
    error_message,
    redact,
    rejects_tools,
)
from .gen_ledger import (
    BatchPlan,
    asked_before,
    finished_requests,
    load_active_pairs,
    pair_files,
    plan_generation,
    stale_pairs,
    timestamp,
    unfinished_message_batches,
)
from .gen_plan import Estimate, Prepared, check_settings, estimate, prepare
from .gen_replies import (
    Context,
    cross_batch_duplicates,
    make_record,
    pair_id,
    parse_reply,
    review_pairs,
)
from .gen_report import GenerateResult, Progress, format_plan, format_summary
from .gen_requests import (
    INSTRUCTIONS,
    JSON_FORMAT,
    MIN_CACHEABLE_TOKENS,
    OUTPUT_TOKENS_PER_PAIR,
    PAIRS_PER_1000_WORDS,
    PRICES,
    PROMPT_VERSION,
    TOKENS_PER_ASKED_QUESTION,
    TOOL_NAME,
    Price,
    Round,
    allocate,
    batch_texts,
    batch_words,
    build_request,
    default_total,
    documents_block,
    kind_counts,
    normalise_mix,
    plan_rounds,
    price_for,
    request_tokens,
    round_text,
    tool_schema,
)
from .grounding import QuestionIndex
from .workspace import Workspace, append_jsonl, atomic_write_json, atomic_write_jsonl, read_jsonl

# Names other modules, the tests and the bench import from here (the split keeps them working).
__all__ = [
    "INSTRUCTIONS", "JSON_FORMAT", "MIN_CACHEABLE_TOKENS", "OUTPUT_TOKENS_PER_PAIR",
    "PAIRS_PER_1000_WORDS", "PRICES", "PROMPT_VERSION", "SECRET_VARS", "TOKENS_PER_ASKED_QUESTION",
    "TOOL_NAME", "BatchPlan", "Context", "Echo", "Estimate", "GenerateResult", "Job", "Prepared",
    "Price", "Progress", "Round", "allocate", "asked_before", "batch_texts", "batch_words",
    "build_request", "check_credentials", "check_settings", "cross_batch_duplicates",
    "default_total", "describe_api_error", "documents_block", "estimate", "finished_requests",
    "format_plan", "format_summary", "kind_counts", "make_record", "normalise_mix", "pair_id",
    "parse_reply", "plan_generation", "plan_rounds", "prepare", "price_for", "redact",
    "rejects_tools", "request_tokens", "retire", "review_pairs", "round_text", "run_generate",
    "stale_pairs", "tool_schema", "unfinished_message_batches",
]

Echo = Callable[[str], None]


# --- the run (edge) ----------------------------------------------------------------------------


@dataclass
class Job:
    """The next request of one batch: which round, which attempt, why it is asked again."""

    plan: BatchPlan
    step: int = 0
    attempt: int = 0
    retry_note: str = ""
    mode: str = "tool"  # how its last request asked for output

    @property
    def round(self) -> Round:
        return self.plan.todo[self.step]


def _call(client: Any, params: dict[str, Any]) -> tuple[str, Any, str | None]:
    """One network call, in a worker thread. API errors come back as values; bugs propagate."""
    import anthropic

    try:
        message = client.messages.create(**params)
    except anthropic.APIError as exc:
        return "error", exc, getattr(exc, "request_id", None)
    return "reply", message.model_dump(mode="json"), getattr(message, "_request_id", None)


class _Runner:
    """One run's state: what is left to send, the questions seen per batch, the result so far.
    `handle` records one outcome and says what to send next; the `run_*` methods send."""

    def __init__(self, ws: Workspace, prep: Prepared, settings: GenerateSettings, *, batch_api: bool,
                 stream: Any, echo: Echo) -> None:
        self.ws, self.prep, self.settings, self.batch_api, self.echo = ws, prep, settings, batch_api, echo
        self.mode = "json" if settings.output == "json" else "tool"
        self.ctx = Context(settings.model, prep.hashes)
        self.price = price_for(settings.model)
        self.done = dict(prep.done)
        self.result = GenerateResult(model=settings.model, price=self.price)
        self.credential = check_credentials(os.environ)
        self.base_url = ""
        self.seen: dict[str, QuestionIndex] = {}
        self.accepted_at: dict[str, set[tuple[str, int, int]]] = {}
        for plan in prep.plans:
            if plan.todo:
                self.result.per_batch[plan.batch.id] = Counter()
            index = QuestionIndex()
            for pair in prep.active.get(plan.batch.id, ()):
                index.add(pair["question"], plan.batch.id)
            self.seen[plan.batch.id] = index
            self.accepted_at[plan.batch.id] = {
                (p.get("batch_sha", ""), p.get("round", -1), p.get("position", -1)) for p in prep.active.get(plan.batch.id, ())
            }
        ledger, _ = read_jsonl(ws.ledger_path)
        self.open_batches = unfinished_message_batches(ledger)
        rejected, _ = read_jsonl(ws.rejected_path)
        self.rejected_at = {(r.get("batch"), r.get("batch_sha"), r.get("round"), r.get("position")) for r in rejected}
        todo = sum(len(p.todo) for p in prep.plans)
        self.progress = Progress(todo, stream)
        self.result.already_done = sum(len(p.rounds) - len(p.todo) for p in prep.plans)

    # -- one request's outcome --

    def params(self, job: Job) -> dict[str, Any]:
        plan = job.plan
        job.mode = self.mode
        asked = asked_before(plan, job.round, self.prep.active.get(plan.batch.id, ()), self.done)
        return build_request(
            job.round, plan.batch, self.prep.docs, self.prep.profile, asked,
            model=self.settings.model, max_tokens=self.settings.max_tokens, mode=self.mode,
            retry_note=job.retry_note,
        )

    def _ledger(self, job: Job, status: str, *, usage: Mapping[str, Any] | None = None,
                request_id: str | None = None, error: str = "", **extra: Any) -> dict[str, Any]:
        usage = {k: int((usage or {}).get(k) or 0) for k in
                 ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}
        cost = self.price.cost(usage, self.batch_api)
        rnd, batch = job.round, job.plan.batch
        record = {
            "key": rnd.key, "batch": batch.id, "batch_sha": batch.sha256, "round": rnd.index,
            "attempt": job.attempt, "model": self.settings.model, "prompt_version": PROMPT_VERSION,
            "mode": job.mode, "batch_api": self.batch_api, **usage, "cost_usd": round(cost, 6),
            "status": status, "request_id": request_id,
            "source_hashes": {d: self.prep.hashes[d] for d in batch.doc_ids if d in self.prep.hashes},
            "time": timestamp(),
        }
        if error:
            record["error"] = redact(error)
        record.update(extra)
        append_jsonl(self.ws.ledger_path, [record])
        self.result.usage.update(usage)
        self.result.cost += cost
        self.result.requests += 1
        self.result.per_batch.setdefault(batch.id, Counter())["requests"] += 1
        self.progress.tokens += sum(usage.values())
        return record

    def _fail(self, job: Job, reason: str) -> None:
        self.result.failed[job.plan.batch.id] = redact(reason)
        self.progress.done += len(job.plan.todo) - job.step

    def _switch_to_json(self, why: str) -> None:
        if self.mode != "json":
            self.mode = "json"
            note = f"Switched to JSON-in-text output: {why}."
            self.result.notes.append(note)
            self.echo(note)

    def handle(self, job: Job, outcome: tuple[str, Any, str | None]) -> Job | None:
        """Record one outcome; return the batch's next job, or None when the batch is through."""
        kind, value, request_id = outcome
        auto = self.settings.output == "auto"
        if kind == "error":
            if rejects_tools(value) and job.mode == "tool" and auto:
                self._ledger(job, "error", request_id=request_id, error=error_message(value))
                self._switch_to_json("the endpoint does not accept tools")
                return job
            fatal, message = describe_api_error(value, self.base_url, self.credential)
            if fatal:
                raise GenerationError(redact(message))
            if rejects_tools(value) and job.mode == "tool":
                message += " (the endpoint may not support tools: try --output json)"
            self._ledger(job, "failed", request_id=request_id, error=message)
            self._fail(job, message)
            return None
        if kind == "batch-error":
            self._ledger(job, "failed", request_id=request_id, error=str(value))
            self._fail(job, str(value))
            return None
        message: dict[str, Any] = value
        usage = message.get("usage") or {}
        try:
            raws, how = parse_reply(message, job.mode)
        except ValueError as exc:
            if job.mode == "tool" and auto and "no tool call" in str(exc):
                self._switch_to_json("the endpoint answered without the tool")
            job.attempt += 1
            if job.attempt <= self.settings.validation_retries:
                self._ledger(job, "invalid", usage=usage, request_id=request_id, error=str(exc))
                job.retry_note = str(exc)
                return job
            job.attempt -= 1
            self._ledger(job, "failed", usage=usage, request_id=request_id, error=f"{exc} (after {job.attempt + 1} tries)")
            self._fail(job, f"no usable reply after {job.attempt + 1} tries ({exc})")
            return None
        if how == "text-fallback" and auto:
            self._switch_to_json("the endpoint answered in text instead of calling the tool")
        self._record_pairs(job, raws, usage, request_id)
        self.progress.done += 1
        if job.step + 1 < len(job.plan.todo):
            return Job(job.plan, job.step + 1)
        return None

    def _record_pairs(self, job: Job, raws: Sequence[Any], usage: Mapping[str, Any], request_id: str | None) -> None:
        batch, rnd = job.plan.batch, job.round
        already = self.accepted_at[batch.id]
        skip = {pos for pos in range(len(raws)) if (batch.sha256, rnd.index, pos) in already}
        reviewed = review_pairs(raws, batch, rnd, self.ctx, self.seen[batch.id], skip)
        accepted = [r for r, why in reviewed if why is None]
        new_pairs = [r for r in accepted if r["position"] not in skip]
        rejected = [
            {**r, "reason": why.code, "detail": why.detail}
            for r, why in reviewed
            if why is not None and (batch.id, batch.sha256, rnd.index, r["position"]) not in self.rejected_at
        ]
        # Pairs first, then the ledger: a kill in between redoes the request, and the positions
        # already written are recognised and skipped rather than written twice.
        append_jsonl(self.ws.pairs_dir / f"{batch.id}.jsonl", new_pairs)
        append_jsonl(self.ws.rejected_path, rejected)
        for r in new_pairs:
            already.add((batch.sha256, rnd.index, r["position"]))
        for r in rejected:
            self.rejected_at.add((batch.id, batch.sha256, rnd.index, r["position"]))
        record = self._ledger(
            job, "ok", usage=usage, request_id=request_id,
            questions=[r["question"] for r in accepted], accepted=len(accepted), rejected=len(reviewed) - len(accepted),
        )
        self.done[rnd.key] = record
        stats = self.result.per_batch.setdefault(batch.id, Counter())
        stats["accepted"] += len(new_pairs)
        stats["rejected"] += len(rejected)
        self.result.accepted += len(new_pairs)
        self.result.per_kind.update(r["type"] for r in new_pairs)
        self.result.rejected.update(r["reason"] for r in rejected)
        self.progress.accepted += len(new_pairs)
        self.progress.rejected += len(rejected)

    # -- the two ways of sending --

    def run_concurrent(self, client: Any) -> None:
        """Up to `concurrency` requests in flight, each batch's rounds one after another.

        Workers only make the network call; replies are checked and written here, in this
        thread, in the order they arrive. The workers are daemon threads, so Ctrl-C or a fatal
        error ends the run at once: requests still in flight are lost, nothing is half-written.
        """
        import queue
        import threading
        from collections import deque

        pending = deque(Job(p) for p in self.prep.plans if p.todo)
        width = max(1, self.settings.concurrency)
        tasks: queue.Queue[tuple[Job, dict[str, Any]] | None] = queue.Queue()
        results: queue.Queue[tuple[Job, tuple[str, Any, str | None]]] = queue.Queue()

        def work() -> None:
            while (task := tasks.get()) is not None:
                job, params = task
                try:
                    results.put((job, _call(client, params)))
                except BaseException as exc:  # a bug, not an API error: re-raised in the main thread
                    results.put((job, ("crash", exc, None)))

        workers = [threading.Thread(target=work, name=f"generate-{i}", daemon=True) for i in range(width)]
        for worker in workers:
            worker.start()
        flying = 0

        def submit(job: Job) -> None:
            nonlocal flying
            tasks.put((job, self.params(job)))
            flying += 1

        try:
            while pending and flying < width:
                submit(pending.popleft())
            while flying:
                try:
                    job, outcome = results.get(timeout=0.5)
                except queue.Empty:
                    self.progress.show()
                    continue
                flying -= 1
                if outcome[0] == "crash":
                    raise outcome[1]
                follow = self.handle(job, outcome)
                if follow is not None:
                    submit(follow)
                elif pending:
                    submit(pending.popleft())
                self.progress.show()
        finally:
            for _ in workers:
                tasks.put(None)

    def _resumable(self, jobs: list[Job]) -> tuple[str, dict[str, Job]] | None:
        """A message batch a killed run submitted for some of these rounds, to collect, not resend.

        A kill can land while the batch's results are being recorded: the rounds already recorded
        are no longer to do, so only the custom_ids of the rounds still to do are collected (the
        others' results are skipped, never counted twice) rather than paying for them all again.
        """
        by_key = {job.round.key: job for job in jobs}
        for event in reversed(self.open_batches):
            keys = event.get("keys") or {}
            pending = {cid: key for cid, key in keys.items() if key in by_key}
            if pending:
                self.open_batches.remove(event)
                return event["id"], {cid: by_key[key] for cid, key in pending.items()}
        return None

    def run_batch_api(self, client: Any) -> None:
        """Send each wave of rounds (round r of every batch) as one message batch, poll, collect."""
        import anthropic

        jobs = [Job(p) for p in self.prep.plans if p.todo]
        while jobs:
            resumed = self._resumable(jobs)
            if resumed is not None:
                batch_id, by_id = resumed
                for job in by_id.values():
                    job.mode = self.mode
            else:
                batch_id, by_id = "", {}
            requests = []
            if not by_id:
                for i, job in enumerate(jobs):
                    custom_id = f"r{i:05d}-" + hashlib.sha256(f"{job.round.key}/{job.attempt}".encode()).hexdigest()[:20]
                    by_id[custom_id] = job
                    requests.append({"custom_id": custom_id, "params": self.params(job)})
            sent = {id(job) for job in by_id.values()}
            waiting = [job for job in jobs if id(job) not in sent]  # not in a resumed batch
            try:
                if resumed is not None:
                    try:
                        batch = client.messages.batches.retrieve(batch_id)
                    except anthropic.NotFoundError:  # expired or from another account: send anew
                        jobs = list(by_id.values()) + waiting
                        continue
                    self.echo(f"Collecting message batch {batch_id}, sent by an earlier run.")
                else:
                    batch = client.messages.batches.create(requests=requests)
                    append_jsonl(self.ws.ledger_path, [{
                        "event": "message_batch", "id": batch.id, "time": timestamp(),
                        "keys": {cid: job.round.key for cid, job in by_id.items()},
                    }])
                while batch.processing_status != "ended":
                    counts = batch.request_counts
                    done = counts.succeeded + counts.errored + counts.canceled + counts.expired
                    # the whole batch's size: a resumed one may hold rounds recorded before the kill
                    self.progress.status = f"message batch {batch.id}: {done}/{done + counts.processing} processed"
                    self.progress.show()
                    time.sleep(self.settings.poll_interval)
                    batch = client.messages.batches.retrieve(batch.id)
                results = sorted(client.messages.batches.results(batch.id), key=lambda item: item.custom_id)
            except anthropic.APIError as exc:
                fatal, message = describe_api_error(exc, self.base_url, self.credential)
                if fatal:
                    raise GenerationError(redact(message)) from None
                for job in jobs:
                    self._ledger(job, "failed", error=message)
                    self._fail(job, message)
                return
            self.progress.status = ""
            follow_ups = []
            for item in results:
                job = by_id.pop(item.custom_id, None)
                if job is None:
                    continue
                result = item.result
                if result.type == "succeeded":
                    outcome: tuple[str, Any, str | None] = ("reply", result.message.model_dump(mode="json"), result.message.id)
                else:
                    detail = getattr(getattr(getattr(result, "error", None), "error", None), "message", None)
                    outcome = ("batch-error", f"the batch request {result.type}" + (f": {detail}" if detail else ""), None)
                follow = self.handle(job, outcome)
                if follow is not None:
                    follow_ups.append(follow)
                self.progress.show()
            for job in by_id.values():
                self._ledger(job, "failed", error="no result for this request in the message batch")
                self._fail(job, "no result in the message batch")
            append_jsonl(self.ws.ledger_path, [{"event": "message_batch_done", "id": batch.id, "time": timestamp()}])
            jobs = waiting + follow_ups

    # -- after the requests --

    def dedupe_across_batches(self) -> None:
        order = {p.batch.id: i for i, p in enumerate(self.prep.plans)}
        active = load_active_pairs(self.ws)
        ordered = [p for b in sorted(active, key=lambda b: (order.get(b, len(order)), b)) for p in active[b]]
        losers = cross_batch_duplicates(ordered)
        if not losers:
            return
        gone = {id(ordered[i]) for i, _ in losers}
        append_jsonl(self.ws.rejected_path, [{**ordered[i], "reason": "duplicate", "detail": d} for i, d in losers])
        for batch_id, pairs in active.items():
            if any(id(p) in gone for p in pairs):
                atomic_write_jsonl(self.ws.pairs_dir / f"{batch_id}.jsonl", [p for p in pairs if id(p) not in gone])
        for i, _ in losers:
            batch_id = ordered[i]["batch"]
            self.result.rejected["duplicate"] += 1
            self.result.per_batch.setdefault(batch_id, Counter())["rejected"] += 1
        self.result.notes.append(f"Dropped {len(losers)} pairs that nearly repeat a question of another batch.")


def retire(ws: Workspace, prep: Prepared) -> int:
    """Move stale pairs out of data/pairs/ into data/retired.jsonl (logged first, then removed)."""
    if not prep.stale:
        return 0
    stamp = timestamp()
    append_jsonl(ws.retired_path, [{**p, "reason": why, "retired_at": stamp} for p, why in prep.stale])
    gone = {(p.get("batch"), p.get("id"), p.get("round"), p.get("position")) for p, _ in prep.stale}
    for path, records, bad in pair_files(ws):
        keep = [r for r in records if (r.get("batch"), r.get("id"), r.get("round"), r.get("position")) not in gone]
        if len(keep) != len(records) or bad:
            atomic_write_jsonl(path, keep)
    return len(prep.stale)


def drop_torn_lines(ws: Workspace) -> None:
    """A kill can leave half a line at the end of a pairs file; rewrite the file without it."""
    for path, records, bad in pair_files(ws):
        if bad:
            atomic_write_jsonl(path, records)


def run_generate(
    ws: Workspace,
    settings: GenerateSettings,
    sources: SourcesSettings,
    *,
    force: bool = False,
    batch_api: bool = False,
    stream: Any = None,
    echo: Echo | None = None,
) -> GenerateResult:
    """Generate what is missing; write pairs, rejections, ledger and sources.json as it goes."""
    import anthropic

    echo = echo or (lambda s: print(s, file=sys.stderr))
    check_credentials(os.environ)  # before any work
    drop_torn_lines(ws)
    prep = prepare(ws, settings, sources, force=force, batch_api=batch_api)
    for line in prep.skipped_lines(ws.sources_dir):  # never left out silently
        echo(line)
    runner = _Runner(ws, prep, settings, batch_api=batch_api, stream=stream, echo=echo)
    if force:
        append_jsonl(ws.ledger_path, [{"event": "reset", "batch": p.batch.id, "time": timestamp()}
                                      for p in prep.plans])
    runner.result.retired = retire(ws, prep)
    client = anthropic.Anthropic(max_retries=settings.max_retries, timeout=settings.timeout)
    runner.base_url = str(client.base_url).rstrip("/")
    if runner.progress.total:
        runner.progress.show(force=True)
        try:
            if batch_api:
                runner.run_batch_api(client)
            else:
                runner.run_concurrent(client)
        finally:
            runner.progress.close()
    runner.dedupe_across_batches()
    # Documents count as generated once every batch holding them is through; the others keep
    # their earlier record, so `sources` still shows them as new or changed.
    failed_docs = {d for p in prep.plans if p.batch.id in runner.result.failed for d in p.batch.doc_ids}
    record = {d: h for d, h in prep.previous_hashes.items() if d in failed_docs}
    record.update({d: h for d, h in prep.hashes.items() if d not in failed_docs})
    atomic_write_json(ws.data_dir / "sources.json", dict(sorted(record.items())))
    runner.result.active_total = sum(len(v) for v in load_active_pairs(ws).values())
    return runner.result
