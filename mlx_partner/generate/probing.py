"""The probe request of one run: when it is due, what it asks, and what its reply leaves on disk.

    probe = ProbeRequest(session)
    if probe.due():                                   # wanted, and no batch failed this run
        note = probe.handle(call(client, probe.params()), attempt=0)   # None, or a note to ask again with

`send.send_probes` sends it (through the Messages API, also under --batch-api: it is one request)
and asks again, up to validation_retries times, while the reply is unusable or none of its
questions passes. Its ledger line is a `probes` event: data/probes.jsonl itself says whether it
is done, and is written before that line, so a kill in between never sends it twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from ..errors import GenerationError
from ..grounding import BOUNDARY, QuestionIndex
from ..textfmt import utc_now
from ..workspace import append_jsonl
from .api import describe_api_error, error_message, redact, rejects_tools
from .boundary import answerable_questions
from .ledger import append_ledger, load_active_pairs
from .probes import PROBE_TOOL, build_probe_request, candidates_for, review_probes, write_probes
from .replies import parse_reply
from .requests import PROMPT_VERSION
from .session import Outcome, Session


class ProbeRequest:
    """The probe request, recorded through a run's `Session` (its result, progress and ledger)."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def due(self) -> bool:
        """Whether to send the probe request now: wanted, and every batch through (else it waits)."""
        if not self.s.prep.probes_todo:
            return False
        if self.s.result.failed:
            self.s.result.probes_waiting = True
            self.s.progress.done += 1
            return False
        return True

    def params(self, retry_note: str = "") -> dict[str, Any]:
        """The probe request, listing every question in data/pairs/ (after this run's)."""
        pairs = [p for batch in load_active_pairs(self.s.ws).values() for p in batch]
        boundary = [p["question"] for p in pairs if p.get("type") == BOUNDARY]
        return build_probe_request(
            self.s.prep.docs, self.s.prep.profile, answerable_questions(pairs), boundary,
            candidates_for(self.s.prep.probes_todo), model=self.s.settings.model, max_tokens=self.s.settings.max_tokens,
            mode=self.s.mode, retry_note=retry_note,
        )

    def _log(self, result: str, attempt: int, usage: Mapping[str, Any] | None = None, **extra: Any) -> None:
        """The probe request's ledger line: an event (data/probes.jsonl itself says it is done)."""
        usage = {k: int((usage or {}).get(k) or 0) for k in  # cache fields only where the endpoint sends them
                 ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
                 if not self.s.local or k in ("input_tokens", "output_tokens") or (usage or {}).get(k) is not None}
        cost = self.s.price.cost(usage)  # sent through the Messages API, whatever --batch-api says
        if "error" in extra:
            extra["error"] = redact(str(extra["error"]))
        append_ledger(self.s.ws, [{"event": "probes", "result": result, "attempt": attempt, "model": self.s.settings.model,
                                   "prompt_version": PROMPT_VERSION, "mode": self.s.mode, "batch_api": False, **usage,
                                   "cost_usd": round(cost, 6), "generator": self.s.base_url or None, **extra,
                                   "time": utc_now()}])
        self.s.result.usage.update(usage)
        self.s.result.cost += cost
        self.s.result.requests += 1
        self.s.progress.tokens += sum(usage.values())

    def handle(self, outcome: Outcome, attempt: int) -> str | None:
        """Record the probe request's outcome: None when it is through (written, or failed), or
        the note to ask again with."""
        kind, value, request_id = outcome
        retries_left = attempt < self.s.settings.validation_retries
        if kind == "error":
            if rejects_tools(value) and self.s.mode == "tool" and self.s.settings.output == "auto":
                self._log("error", attempt, request_id=request_id, error=error_message(value))
                self.s.switch_to_json("the endpoint does not accept tools")
                return "the endpoint does not accept tools"
            fatal, message = describe_api_error(value, self.s.base_url, self.s.credential)
            if fatal:
                raise GenerationError(redact(message))
            return self._failed(attempt, message, request_id=request_id)
        usage = value.get("usage") or {}
        try:
            candidates, _how = parse_reply(value, self.s.mode, tool=PROBE_TOOL, field="questions")
        except ValueError as exc:
            if retries_left:
                self._log("invalid", attempt, usage, request_id=request_id, error=str(exc))
                return str(exc)
            return self._failed(attempt, f"no usable reply after {attempt + 1} tries ({exc})", usage, request_id)
        check = self.s.calibrate()
        index = QuestionIndex()
        for pairs in load_active_pairs(self.s.ws).values():
            for p in pairs:
                index.add(p["question"])
        accepted, rejected = review_probes(candidates, check, index, self.s.prep.probes_todo,
                                           model=self.s.settings.model, created=utc_now())
        self.s.result.probes_tried += len(candidates)
        self.s.result.probes_rejected.update(r["reason"] for r in rejected)
        if accepted:
            write_probes(self.s.ws, accepted)  # first: once it exists, the probes are done
        append_jsonl(self.s.ws.rejected_path, [{**r, "attempt": attempt} for r in rejected])
        if accepted:
            self._log("ok", attempt, usage, request_id=request_id, written=len(accepted), tried=len(candidates),
                      threshold=check.threshold)
            self.s.result.probes_written = len(accepted)
            self.s.progress.done += 1
            return None
        reason = "no probe question passed the checks (" + ", ".join(
            f"{n} {code}" for code, n in sorted(Counter(r["reason"] for r in rejected).items())) + ")"
        if retries_left:
            self._log("invalid", attempt, usage, request_id=request_id, error=reason, tried=len(candidates))
            return f"{reason}; write questions the documents do not answer"
        return self._failed(attempt, f"{reason}, after {attempt + 1} tries", usage, request_id)

    def _failed(self, attempt: int, reason: str, usage: Mapping[str, Any] | None = None,
                request_id: str | None = None) -> None:
        self._log("failed", attempt, usage, request_id=request_id, error=reason)
        self.s.result.probes_failed = redact(reason)
        self.s.progress.done += 1
        return None
