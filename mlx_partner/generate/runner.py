"""`run_generate`, the side-effecting edge of the generate stage: take the workspace lock, retire
stale pairs, send what is left, dedupe across batches, record the source hashes.

    result = run_generate(ws, settings.generate, settings.sources, echo=print)

What lands on disk (all under data/):
  pairs/<batch>.jsonl  accepted pairs, appended as replies arrive
  rejected.jsonl       every pair that failed a check, with its reason
  ledger.jsonl         one record per request: tokens, cost, status, source hashes (never a key)
  retired.jsonl        pairs taken out because a document they cite changed or was removed
  sources.json         {doc_id: sha256} of the documents as last generated
  boundary.json        the absence check's threshold and its calibration (boundary pairs, probes)
  probes.jsonl         near-domain probe questions for `eval`, written once (never trained on)

A finished request (batch id + batch hash + round + prompt version, status ok in the ledger) is
never sent again, so a killed run loses at most its in-flight requests. `anthropic` is imported
inside `run_generate`, so `--help` stays instant.
"""

from __future__ import annotations

import os
from typing import Any

from ..config import GenerateSettings, SourcesSettings
from ..sources.records import write_source_hashes
from ..textfmt import stderr, utc_now
from ..workspace import Workspace, append_jsonl, atomic_write_jsonl, workspace_lock
from .api import check_credentials
from .ledger import append_ledger, load_active_pairs, pair_files
from .local import PLACEHOLDER_KEY
from .local_mlx import MlxGenerator, is_local_mlx
from .plan import Prepared, configure_endpoint, prepare
from .report import Echo, GenerateResult
from .send import send_probes, send_rounds
from .session import Session


def retire(ws: Workspace, prep: Prepared) -> int:
    """Move stale pairs out of data/pairs/ into data/retired.jsonl (logged first, then removed)."""
    if not prep.stale:
        return 0
    stamp = utc_now()
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
    """Generate what is missing; write pairs, rejections, ledger and sources.json as it goes.

    Holds the workspace lock for the whole run (re-entrant: `retrain` calls this under its own).
    """
    echo = echo or stderr
    with workspace_lock(ws, "generate"):
        import anthropic

        endpoint, settings, sources, notes = configure_endpoint(ws, settings, sources, os.environ, batch_api=batch_api)
        credential = check_credentials(os.environ, loopback=endpoint.loopback)  # before any work
        if not credential:
            echo(f"No API key needed: {endpoint.url} is on this machine.")
        drop_torn_lines(ws)
        prep = prepare(ws, settings, sources, force=force, batch_api=batch_api, endpoint=endpoint, notes=notes)
        for line in [*prep.skipped_lines(ws.sources_dir), *notes]:  # never left out silently
            echo(line)
        session = Session(ws, prep, settings, batch_api=batch_api, stream=stream, echo=echo)
        if force:
            append_ledger(ws, [{"event": "reset", "batch": p.batch.id, "time": utc_now()} for p in prep.plans])
        session.result.retired = retire(ws, prep)
        if is_local_mlx(endpoint.url):  # the in-process MLX generator stands in for the client
            client: Any = MlxGenerator(ws, settings)
            client.attach(session.progress, prep.estimate.output_tokens)
        else:
            key = {} if credential else {"api_key": PLACEHOLDER_KEY}  # a loopback server needs none
            client = anthropic.Anthropic(max_retries=settings.max_retries, timeout=settings.timeout, **key)
        session.base_url = str(client.base_url).rstrip("/")
        if session.progress.total:
            session.progress.show(force=True)
            try:
                send_rounds(session, client, batch_api)
                session.dedupe_across_batches()  # before the probes, which must not repeat a pair
                send_probes(session, client)
            finally:
                session.progress.close()
        else:
            session.dedupe_across_batches()
        _record_source_hashes(ws, prep, session.result)
        session.result.active_total = sum(len(v) for v in load_active_pairs(ws).values())
        return session.result


def _record_source_hashes(ws: Workspace, prep: Prepared, result: GenerateResult) -> None:
    """Write data/sources.json: the documents as last generated.

    Documents count as generated once every batch holding them is through; the others keep
    their earlier record, so `sources` still shows them as new or changed.
    """
    # A batch whose boundary round alone failed counts as generated: its answers are all in.
    failed_docs = {d for p in prep.plans if p.batch.id in result.failed for d in p.batch.doc_ids}
    record = {d: h for d, h in prep.previous_hashes.items() if d in failed_docs}
    record.update({d: h for d, h in prep.hashes.items() if d not in failed_docs})
    write_source_hashes(ws, record)
