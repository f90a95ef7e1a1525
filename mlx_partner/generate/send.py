"""The two ways a generate run sends its requests: a pool of worker threads calling the Messages
API, or the Message Batches API (half price), one message batch per wave of rounds.

    send_rounds(session, client, batch_api)   # answer rounds, then boundary rounds, either way:
    send_concurrent(session, client, plans)        # up to settings.concurrency requests in flight
    send_message_batches(session, client, plans)   # create, poll, collect; a killed run's batch is collected
    send_probes(session, client)              # the one probe request (when due), through the Messages API

All hand every outcome to `Session` in this (the calling) thread. `anthropic` is
imported inside the functions that need it, so `--help` stays instant.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import deque
from typing import Any

from ..errors import GenerationError
from ..testhooks import reached
from ..textfmt import utc_now
from .api import describe_api_error, redact
from .ledger import BatchPlan, append_ledger
from .probing import ProbeRequest
from .session import Job, Outcome, Session


def send_rounds(session: Session, client: Any, batch_api: bool) -> None:
    """Every round still to do: the answer rounds of all batches, then their boundary rounds."""
    send = send_message_batches if batch_api else send_concurrent
    for boundary in (False, True):
        plans = session.phase(boundary)
        if plans:
            send(session, client, plans)


def send_probes(session: Session, client: Any) -> None:
    """The probe request when it is due, asked again (up to validation_retries times) while its
    reply is unusable. One request: it goes through the Messages API even under --batch-api."""
    probe = ProbeRequest(session)
    if not probe.due():
        return
    note = ""
    for attempt in range(session.settings.validation_retries + 1):
        session.progress.status = "probe request"
        session.progress.show()
        outcome = call(client, probe.params(note))
        follow = probe.handle(outcome, attempt)
        session.progress.status = ""
        if follow is None:
            return
        note = follow


def call(client: Any, params: dict[str, Any]) -> Outcome:
    """One network call, in a worker thread. API errors come back as values; bugs propagate."""
    import anthropic

    start = time.monotonic()
    try:
        reached("generate-request")  # test-only handshake (testhooks.py): a request in flight
        message = client.messages.create(**params)
    except anthropic.APIError as exc:
        return "error", exc, getattr(exc, "request_id", None)
    reply = {**message.model_dump(mode="json"), "elapsed_s": time.monotonic() - start}  # the ledger's seconds
    return "reply", reply, getattr(message, "_request_id", None)


def send_concurrent(session: Session, client: Any, plans: list[BatchPlan]) -> None:
    """Up to `concurrency` requests in flight, each batch's rounds one after another.

    Workers only make the network call; replies are checked and written here, in this
    thread, in the order they arrive. The workers are daemon threads, so Ctrl-C or a fatal
    error ends the run at once: requests still in flight are lost, nothing is half-written.
    """
    pending = deque(Job(p) for p in plans if p.todo)
    width = max(1, session.settings.concurrency)
    tasks: queue.Queue[tuple[Job, dict[str, Any]] | None] = queue.Queue()
    results: queue.Queue[tuple[Job, Outcome]] = queue.Queue()

    def work() -> None:
        while (task := tasks.get()) is not None:
            job, params = task
            try:
                results.put((job, call(client, params)))
            except BaseException as exc:  # a bug, not an API error: re-raised in the main thread
                results.put((job, ("crash", exc, None)))

    workers = [threading.Thread(target=work, name=f"generate-{i}", daemon=True) for i in range(width)]
    for worker in workers:
        worker.start()
    flying = 0

    def submit(job: Job) -> None:
        nonlocal flying
        tasks.put((job, session.params(job)))
        flying += 1

    try:
        while pending and flying < width:
            submit(pending.popleft())
        while flying:
            try:
                job, outcome = results.get(timeout=0.5)
            except queue.Empty:
                session.progress.show()
                continue
            flying -= 1
            if outcome[0] == "crash":
                raise outcome[1]
            follow = session.handle(job, outcome)
            if follow is not None:
                submit(follow)
            elif pending:
                submit(pending.popleft())
            session.progress.show()
    finally:
        for _ in workers:
            tasks.put(None)


def resumable(session: Session, jobs: list[Job]) -> tuple[str, dict[str, Job]] | None:
    """A message batch a killed run submitted for some of these rounds, to collect, not resend.

    A kill can land while the batch's results are being recorded: the rounds already recorded
    are no longer to do, so only the custom_ids of the rounds still to do are collected (the
    others' results are skipped, never counted twice) rather than paying for them all again.
    """
    by_key = {job.round.key: job for job in jobs}
    for event in reversed(session.open_batches):
        keys = event.get("keys") or {}
        pending = {cid: key for cid, key in keys.items() if key in by_key}
        if pending:
            session.open_batches.remove(event)
            return event["id"], {cid: by_key[key] for cid, key in pending.items()}
    return None


def send_message_batches(session: Session, client: Any, plans: list[BatchPlan]) -> None:
    """Send each wave of rounds (round r of every batch) as one message batch, poll, collect."""
    import anthropic

    jobs = [Job(p) for p in plans if p.todo]
    while jobs:
        resumed = resumable(session, jobs)
        if resumed is not None:
            batch_id, by_id = resumed
            for job in by_id.values():
                job.mode = session.mode
            requests: list[dict[str, Any]] = []
        else:
            batch_id, by_id, requests = "", *_new_wave(session, jobs)
        sent = {id(job) for job in by_id.values()}
        waiting = [job for job in jobs if id(job) not in sent]  # not in a resumed batch
        try:
            if resumed is not None:
                try:
                    batch = client.messages.batches.retrieve(batch_id)
                except anthropic.NotFoundError:  # past its retention, deleted, or another account's: send anew
                    session.echo(f"Message batch {batch_id}, sent by an earlier run, is gone (404: past its "
                                 f"retention, or deleted); sending its {len(by_id)} requests again.")
                    jobs = list(by_id.values()) + waiting
                    continue
                session.echo(f"Collecting message batch {batch_id}, sent by an earlier run.")
            else:
                batch = client.messages.batches.create(requests=requests)
                append_ledger(session.ws, [{
                    "event": "message_batch", "id": batch.id, "time": utc_now(),
                    "keys": {cid: job.round.key for cid, job in by_id.items()},
                }])
                reached("generate-batch-sent")  # test-only handshake (testhooks.py): sent, recorded, not polled
            batch = _wait_until_ended(session, client, batch)
            results = sorted(client.messages.batches.results(batch.id), key=lambda item: item.custom_id)
        except anthropic.APIError as exc:
            fatal, message = describe_api_error(exc, session.base_url, session.credential)
            if fatal:
                raise GenerationError(redact(message)) from None
            for job in jobs:
                session.log_request(job, "failed", error=message)
                session.fail(job, message)
            return
        session.progress.status = ""
        follow_ups = _collect(session, results, by_id)
        append_ledger(session.ws, [{"event": "message_batch_done", "id": batch.id, "time": utc_now()}])
        jobs = waiting + follow_ups


def _new_wave(session: Session, jobs: list[Job]) -> tuple[dict[str, Job], list[dict[str, Any]]]:
    """({custom_id: job}, the batch's requests) for a message batch of these jobs."""
    by_id: dict[str, Job] = {}
    requests = []
    for i, job in enumerate(jobs):
        custom_id = f"r{i:05d}-" + hashlib.sha256(f"{job.round.key}/{job.attempt}".encode()).hexdigest()[:20]
        by_id[custom_id] = job
        requests.append({"custom_id": custom_id, "params": session.params(job)})
    return by_id, requests


def _wait_until_ended(session: Session, client: Any, batch: Any) -> Any:
    """Poll a message batch until it has ended, showing how much of it is processed."""
    while batch.processing_status != "ended":
        counts = batch.request_counts
        done = counts.succeeded + counts.errored + counts.canceled + counts.expired
        # the whole batch's size: a resumed one may hold rounds recorded before the kill
        session.progress.status = f"message batch {batch.id}: {done}/{done + counts.processing} processed"
        session.progress.show()
        reached("generate-batch-waiting")  # test-only handshake (testhooks.py): a batch in progress
        time.sleep(session.settings.poll_interval)
        batch = client.messages.batches.retrieve(batch.id)
    return batch


def _collect(session: Session, results: list[Any], by_id: dict[str, Job]) -> list[Job]:
    """Hand each result of a message batch to the session; the jobs for the next wave.

    Results for custom_ids not in `by_id` (rounds recorded before a kill) are skipped; a job with
    no result fails its batch for this run.
    """
    follow_ups = []
    for item in results:
        job = by_id.pop(item.custom_id, None)
        if job is None:
            continue
        result = item.result
        if result.type == "succeeded":
            outcome: Outcome = ("reply", result.message.model_dump(mode="json"), result.message.id)
        else:
            detail = getattr(getattr(getattr(result, "error", None), "error", None), "message", None)
            outcome = ("batch-error", f"the batch request {result.type}" + (f": {detail}" if detail else ""), None)
        follow = session.handle(job, outcome)
        if follow is not None:
            follow_ups.append(follow)
        session.progress.show()
    for job in by_id.values():
        session.log_request(job, "failed", error="no result for this request in the message batch")
        session.fail(job, "no result in the message batch")
    return follow_ups
