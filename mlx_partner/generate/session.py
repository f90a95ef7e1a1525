"""One generate run's state, and what it does with each outcome: the ledger line, the pairs and
rejections it writes, and the batch's next request.

    session = Session(ws, prep, settings, batch_api=False, stream=None, echo=print)
    for plans in (session.phase(boundary=False), session.phase(boundary=True)):   # send.py sends each
        follow = session.handle(job, ("reply", message, request_id))   # the next Job, or None

`send.py` makes the network calls and hands every outcome to `handle`, in one thread, so the
files are only ever written from here, in the order the replies arrive. A run sends in two
phases: every batch's answer rounds, then the boundary rounds, checked against a threshold
calibrated once, between the two, on every answered question (so it does not depend on the order
replies arrive in). A boundary round none of whose pairs pass is asked again, then fails alone:
its batch's other pairs stay, and the next run sends that round only. The probe request
comes last (`probing.py`).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import GenerateSettings
from ..errors import GenerationError
from ..grounding import QuestionIndex, Rejection
from ..textfmt import utc_now
from ..workspace import Workspace, append_jsonl, atomic_write_jsonl, read_jsonl
from .api import check_credentials, describe_api_error, error_message, redact, rejects_tools
from .boundary import AbsenceCheck, absence_check, answerable_questions, write_calibration
from .ledger import (
    BatchPlan,
    append_ledger,
    asked_before,
    from_planned_rounds,
    load_active_pairs,
    tools_failed_before,
    unfinished_message_batches,
)
from .plan import Prepared
from .probes import read_probes
from .replies import Context, cross_batch_duplicates, parse_reply, review_pairs
from .report import Echo, GenerateResult, Progress
from .requests import PROMPT_VERSION, Round, build_request, price_for

MAX_EMPTY_ROUNDS = 2  # answer rounds in a row with no pair accepted before a batch stops

# What a request came back as: ("reply", message dict, request id), ("error", SDK error, request
# id), ("batch-error", reason, None) from a message batch, or ("crash", exception, None).
Outcome = tuple[str, Any, str | None]


@dataclass
class Job:
    """The next request of one batch: which round, which attempt, why it is asked again."""

    plan: BatchPlan
    step: int = 0
    attempt: int = 0
    retry_note: str = ""
    mode: str = "tool"  # how its last request asked for output
    seconds: float | None = None  # how long its last reply took

    @property
    def round(self) -> Round:
        return self.plan.todo[self.step]


class Session:
    """One run's state: what is left to send, the questions seen per batch, the result so far.
    `handle` records one outcome and says what to send next; `send.py` sends."""

    def __init__(self, ws: Workspace, prep: Prepared, settings: GenerateSettings, *, batch_api: bool,
                 stream: Any, echo: Echo) -> None:
        self.ws, self.prep, self.settings, self.batch_api, self.echo = ws, prep, settings, batch_api, echo
        self.mode = "json" if settings.output == "json" else "tool"
        self.ctx = Context(settings.model, prep.hashes)
        endpoint = prep.endpoint
        self.local = bool(endpoint and endpoint.local)
        self.price = (endpoint.price if endpoint else None) or price_for(settings.model)
        self.done = dict(prep.done)
        self.result = GenerateResult(model=settings.model, price=self.price)
        self.credential = check_credentials(os.environ, loopback=bool(endpoint and endpoint.loopback))
        self.base_url = endpoint.url if endpoint else ""
        self.empty_rounds: Counter = Counter()  # batch -> answer rounds in a row with no pair accepted
        self.seen: dict[str, QuestionIndex] = {}
        # (round, position) of each pair on disk from the rounds planned now: a kill can land
        # between writing a reply's pairs and its ledger line, and the redone request skips them.
        self.accepted_at: dict[str, set[tuple[int, int]]] = {}
        for plan in prep.plans:
            if plan.todo:
                self.result.per_batch[plan.batch.id] = Counter()
            index = QuestionIndex()
            for pair in prep.active.get(plan.batch.id, ()):
                index.add(pair["question"], plan.batch.id)
            self.seen[plan.batch.id] = index
            self.accepted_at[plan.batch.id] = {
                (p.get("round", -1), p.get("position", -1)) for p in prep.active.get(plan.batch.id, ())
                if from_planned_rounds(p, plan.batch)
            }
        ledger, _ = read_jsonl(ws.ledger_path)
        self.open_batches = unfinished_message_batches(ledger)
        if self.mode == "tool" and settings.output == "auto" and tools_failed_before(ledger, self.base_url, settings.model):
            self.switch_to_json("this endpoint's tool calls failed in an earlier run (data/ledger.jsonl)")
        rejected, _ = read_jsonl(ws.rejected_path)
        self.rejected_at = {self._rejection_key(r) for r in rejected}
        self.absence: AbsenceCheck | None = None
        self.held_out = QuestionIndex()  # the probes: a boundary pair must not repeat one
        for probe in read_probes(ws):
            self.held_out.add(probe["question"], "probes")
        todo = sum(len(p.todo) for p in prep.plans) + (1 if prep.probes_todo else 0)
        self.progress = Progress(todo, stream)
        self.result.already_done = sum(len(p.rounds) - len(p.todo) for p in prep.plans)

    @staticmethod
    def _rejection_key(r: Mapping[str, Any]) -> tuple[Any, ...]:
        return (r.get("batch"), r.get("batch_sha"), r.get("prompt_version"), r.get("round"), r.get("position"),
                r.get("attempt", 0))

    # -- the two phases --

    def phase(self, boundary: bool) -> list[BatchPlan]:
        """The plans of one phase: each batch's answer rounds still to do, or its boundary rounds
        (for batches whose answer rounds did not fail this run). The boundary phase starts with
        the calibration of the absence check."""
        plans = []
        for plan in self.prep.plans:
            todo = tuple(r for r in plan.todo if r.boundary == boundary)
            if todo and not (boundary and plan.batch.id in self.result.failed):
                plans.append(dataclasses.replace(plan, todo=todo))
        if boundary and plans:
            self.calibrate()
        return plans

    def calibrate(self) -> AbsenceCheck:
        """The absence check, calibrated (once a run) on every answered question in data/pairs/,
        this run's included; recorded in data/boundary.json and the summary."""
        if self.absence is None:
            pairs = [p for batch in load_active_pairs(self.ws).values() for p in batch]
            self.absence = absence_check(list(self.prep.docs.values()), answerable_questions(pairs))
            write_calibration(self.ws, self.absence)
            self.result.threshold = self.absence.describe()
        return self.absence

    # -- one request --

    def params(self, job: Job) -> dict[str, Any]:
        """The request for a job's round, in the run's current output mode."""
        plan = job.plan
        job.mode = self.mode
        asked = asked_before(plan, job.round, self.prep.active.get(plan.batch.id, ()), self.done)
        return build_request(
            job.round, plan.batch, self.prep.docs, self.prep.profile, asked,
            model=self.settings.model, max_tokens=self.settings.max_tokens, mode=self.mode,
            retry_note=job.retry_note,
        )

    def log_request(self, job: Job, status: str, *, usage: Mapping[str, Any] | None = None,
                    request_id: str | None = None, error: str = "", **extra: Any) -> dict[str, Any]:
        """Write the ledger line of one request and count its tokens and cost."""
        # A local endpoint: cache fields only where it sends them (Ollama has no prompt cache).
        usage = {k: int((usage or {}).get(k) or 0) for k in
                 ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
                 if not self.local or k in ("input_tokens", "output_tokens") or (usage or {}).get(k) is not None}
        cost = self.price.cost(usage, self.batch_api)
        rnd, batch = job.round, job.plan.batch
        record = {
            "key": rnd.key, "batch": batch.id, "batch_sha": batch.sha256, "round": rnd.index, "boundary": rnd.boundary,
            "attempt": job.attempt, "model": self.settings.model, "prompt_version": PROMPT_VERSION,
            "mode": job.mode, "batch_api": self.batch_api, **usage, "cost_usd": round(cost, 6),
            "status": status, "request_id": request_id, "generator": self.base_url or None,
            "source_hashes": {d: self.prep.hashes[d] for d in batch.doc_ids if d in self.prep.hashes},
            "time": utc_now(),
        }
        if job.seconds is not None and usage:
            record["seconds"] = round(job.seconds, 2)
        if error:
            record["error"] = redact(error)
        record.update(extra)
        append_ledger(self.ws, [record])
        self.result.usage.update(usage)
        self.result.cost += cost
        self.result.requests += 1
        self.result.per_batch.setdefault(batch.id, Counter())["requests"] += 1
        self.progress.tokens += sum(usage.values())
        return record

    def fail(self, job: Job, reason: str) -> None:
        """Give up on the job's batch for this run (the next run sends its rounds again). A failed
        boundary round fails alone; a failed answer round takes the batch's boundary rounds with it."""
        batch_id = job.plan.batch.id
        left = len(job.plan.todo) - job.step
        if job.round.boundary:
            self.result.boundary_failed[batch_id] = redact(reason)
        else:
            self.result.failed[batch_id] = redact(reason)
            left += sum(1 for p in self.prep.plans if p.batch.id == batch_id for r in p.todo if r.boundary)
        self.progress.done += left

    def switch_to_json(self, why: str) -> None:
        """From now on, ask for JSON in text (the endpoint does not do tools); said once."""
        if self.mode != "json":
            self.mode = "json"
            note = f"Switched to JSON-in-text output: {why}."
            self.result.notes.append(note)
            self.echo(note)

    def handle(self, job: Job, outcome: Outcome) -> Job | None:
        """Record one outcome; return the batch's next job, or None when the batch is through."""
        kind, value, request_id = outcome
        if kind == "error":
            return self._api_error(job, value, request_id)
        if kind == "batch-error":
            self.log_request(job, "failed", request_id=request_id, error=str(value))
            self.fail(job, str(value))
            return None
        message: dict[str, Any] = value
        job.seconds = message.pop("elapsed_s", None)
        usage = message.get("usage") or {}
        auto = self.settings.output == "auto"
        try:
            raws, how = parse_reply(message, job.mode)
        except ValueError as exc:
            if job.mode == "tool" and auto and "no tool call" in str(exc):
                self.switch_to_json("the endpoint answered without the tool")
            elif job.mode == "tool" and auto and self.local:  # loose tool use: JSON in text suits it better
                self.switch_to_json(f"the local endpoint's tool call was malformed ({str(exc)[:80]})")
            job.attempt += 1
            if job.attempt <= self.settings.validation_retries:
                self.log_request(job, "invalid", usage=usage, request_id=request_id, error=str(exc))
                job.retry_note = str(exc)
                return job
            job.attempt -= 1
            self.log_request(job, "failed", usage=usage, request_id=request_id, error=f"{exc} (after {job.attempt + 1} tries)")
            if job.round.boundary and "empty pairs list" in str(exc):
                self.fail(job, f"the generator wrote no boundary pairs (an empty list), after {job.attempt + 1} tries")
            else:
                self.fail(job, f"no usable reply after {job.attempt + 1} tries ({exc})")
            return None
        if how == "text-fallback" and auto:
            self.switch_to_json("the endpoint answered in text instead of calling the tool")
        verdict = self._record_pairs(job, raws, usage, request_id)
        if verdict == "retry":
            return job
        if verdict == "failed":
            return None
        self.progress.done += 1
        if job.step + 1 < len(job.plan.todo):
            return Job(job.plan, job.step + 1)
        return None

    def _api_error(self, job: Job, exc: Any, request_id: str | None) -> Job | None:
        """An SDK error the SDK gave up on: switch to JSON, end the run, or fail the batch."""
        if rejects_tools(exc) and job.mode == "tool" and self.settings.output == "auto":
            self.log_request(job, "error", request_id=request_id, error=error_message(exc))
            self.switch_to_json("the endpoint does not accept tools")
            return job
        fatal, message = describe_api_error(exc, self.base_url, self.credential)
        if fatal:
            raise GenerationError(redact(message))
        if rejects_tools(exc) and job.mode == "tool":
            message += " (the endpoint may not support tools: try --output json)"
        self.log_request(job, "failed", request_id=request_id, error=message)
        self.fail(job, message)
        return None

    def _record_pairs(self, job: Job, raws: Sequence[Any], usage: Mapping[str, Any], request_id: str | None) -> str:
        """Write a reply's pairs, rejections and ledger line: "ok", or for a boundary round none
        of whose pairs passed, "retry" (asked again) or "failed" (after the validation retries)."""
        batch, rnd = job.plan.batch, job.round
        already = self.accepted_at[batch.id]
        skip = {pos for pos in range(len(raws)) if (rnd.index, pos) in already}
        reviewed = review_pairs(raws, batch, rnd, self.ctx, self.seen[batch.id], skip,
                                absence=self.absence if rnd.boundary else None, held_out=self.held_out)
        accepted = [r for r, why in reviewed if why is None]
        new_pairs = [r for r in accepted if r["position"] not in skip]
        rejected = [
            {**r, "reason": why.code, "detail": why.detail, "attempt": job.attempt}
            for r, why in reviewed
            if why is not None and self._rejection_key({**r, "attempt": job.attempt}) not in self.rejected_at
        ]
        # Pairs first, then the ledger: a kill in between redoes the request, and the positions
        # already written are recognised and skipped rather than written twice.
        append_jsonl(self.ws.pairs_dir / f"{batch.id}.jsonl", new_pairs)
        append_jsonl(self.ws.rejected_path, rejected)
        for r in new_pairs:
            already.add((rnd.index, r["position"]))
        for r in rejected:
            self.rejected_at.add(self._rejection_key(r))
        self._count(batch.id, new_pairs, rejected)
        if rnd.boundary:
            self.result.boundary_checked += sum(1 for r, _ in reviewed if "coverage" in r)
            self.result.boundary_absent += sum(1 for r, why in reviewed if "coverage" in r and (why is None or why.code != "answerable"))
            if not accepted:
                return self._boundary_refused(job, [why for _, why in reviewed if why is not None], usage, request_id)
        record = self.log_request(
            job, "ok", usage=usage, request_id=request_id,
            questions=[r["question"] for r in accepted], accepted=len(accepted), rejected=len(reviewed) - len(accepted),
        )
        self.done[rnd.key] = record
        return self._keeps_failing(job, bool(accepted))

    def _keeps_failing(self, job: Job, accepted: bool) -> str:
        """"ok", or "failed" when MAX_EMPTY_ROUNDS answer rounds of a batch in a row accepted no
        pair (a generator too weak for these documents): the batch stops, saying why."""
        batch_id = job.plan.batch.id
        self.empty_rounds[batch_id] = 0 if accepted else self.empty_rounds[batch_id] + 1
        more = job.step + 1 < len(job.plan.todo)
        if job.round.boundary or not more or self.empty_rounds[batch_id] < MAX_EMPTY_ROUNDS:
            return "ok"
        whys = self.result.reasons_per_batch.get(batch_id, Counter())
        reasons = ", ".join(f"{n} {code}" for code, n in whys.most_common(3))
        self.progress.done += 1  # this round is recorded; the rest are counted by fail()
        job.step += 1
        self.fail(job, f"stopped after {MAX_EMPTY_ROUNDS} rounds in a row with no pair accepted "
                       f"({reasons or 'no pairs'}); the generator may be too weak for these documents")
        return "failed"

    def _count(self, batch_id: str, new_pairs: Sequence[Mapping[str, Any]], rejected: Sequence[Mapping[str, Any]]) -> None:
        stats = self.result.per_batch.setdefault(batch_id, Counter())
        stats["accepted"] += len(new_pairs)
        stats["rejected"] += len(rejected)
        self.result.reasons_per_batch.setdefault(batch_id, Counter()).update(r["reason"] for r in rejected)
        self.result.accepted += len(new_pairs)
        self.result.per_kind.update(r["type"] for r in new_pairs)
        self.result.rejected.update(r["reason"] for r in rejected)
        self.progress.accepted += len(new_pairs)
        self.progress.rejected += len(rejected)

    def _boundary_refused(self, job: Job, whys: Sequence[Rejection], usage: Mapping[str, Any], request_id: str | None) -> str:
        """A boundary round whose reply held no pair that passed: ask again, or fail the round."""
        counts = Counter(why.code for why in whys)
        reason = "no boundary pair passed the checks (" + ", ".join(f"{n} {code}" for code, n in sorted(counts.items())) + ")"
        job.attempt += 1
        if job.attempt <= self.settings.validation_retries:
            self.log_request(job, "invalid", usage=usage, request_id=request_id, error=reason, rejected=len(whys))
            job.retry_note = (f"{reason}; write questions these documents do not answer, each answered by "
                              "declining in the first sentence")
            return "retry"
        job.attempt -= 1
        self.log_request(job, "failed", usage=usage, request_id=request_id, error=f"{reason} (after {job.attempt + 1} tries)",
                         rejected=len(whys))
        self.fail(job, f"{reason}, after {job.attempt + 1} tries")
        return "failed"

    # -- after the requests --

    def dedupe_across_batches(self) -> None:
        """Drop pairs that nearly repeat a question of an earlier batch (batch order decides)."""
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
