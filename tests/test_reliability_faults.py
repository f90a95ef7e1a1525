"""`generate` against a failing API: 20% each of 429, 500, 529, timeouts, malformed and truncated replies.

The local Messages API server is given every fault at once; a subclass adds timeouts (the first
attempt of a request sleeps past the client's timeout). The run must either complete or end with
exit 1 naming the batches that failed; a re-run (the outage over) finishes exactly those, and the
pairs then equal a run that never saw a fault. Every line on disk stays whole JSON.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from typing import Any

import pytest
from fake_anthropic import FakeAnthropic
from harness import cli_env, jsonl_strict, make_workspace, run_cli

ARGS = ["generate", "--pairs", "24", "--pairs-per-round", "3", "--concurrency", "2"]
# Short client timeout, a few SDK retries: the timeouts cost about a second each.
SETTINGS = {"MLX_PARTNER_GENERATE_TIMEOUT": "1.0", "MLX_PARTNER_GENERATE_MAX_RETRIES": "3"}
HTTP_FAULTS = {"rate_429": 0.2, "rate_500": 0.2, "rate_529": 0.2}
REPLY_FAULTS = {"malformed": 0.2, "truncated": 0.2}


class TimeoutServer(FakeAnthropic):
    """FakeAnthropic plus timeouts: a first attempt that drew no HTTP fault sleeps past the client's
    timeout with probability `timeout_rate` (so the six faults are 20% each, not stacked)."""

    def __init__(self, timeout_rate: float = 0.0, sleep: float = 1.6, **faults: Any) -> None:
        super().__init__(**faults)
        self.timeout_rate, self.sleep = timeout_rate, sleep
        self.timeouts = 0
        self._seen: set[str] = set()
        self._tlock = threading.Lock()

    def _messages(self, body: dict[str, Any], f: Any):
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self._tlock:
            first = key not in self._seen
            self._seen.add(key)
        http_roll = random.Random(f"{f.seed}:{key}:http").random()  # the roll the parent uses
        http = f.rate_429 + f.rate_500 + f.rate_529
        if first and http <= http_roll < http + self.timeout_rate:
            with self._tlock:
                self.timeouts += 1
            time.sleep(self.sleep)  # the client has given up by now and retries
        return super()._messages(body, f)


def pairs_of(ws) -> set[str]:
    """The pairs on disk. A boundary pair records the absence threshold in force when it was admitted,
    which is calibrated on the answers in by then (fewer, when a batch failed): that one field aside."""
    pairs = [p for path in sorted((ws / "data" / "pairs").glob("*.jsonl")) for p in jsonl_strict(path)]
    return {json.dumps({k: v for k, v in p.items() if k != "threshold"}, sort_keys=True) for p in pairs}


@pytest.fixture(scope="module")
def clean_pairs(tmp_path_factory) -> set[str]:
    srv = FakeAnthropic(seed=3).start()
    try:
        ws = make_workspace(tmp_path_factory.mktemp("faults-clean") / "ws")
        result = run_cli(ARGS, ws, cli_env(srv.url))
        assert result.returncode == 0, str(result)
        return pairs_of(ws)
    finally:
        srv.stop()


def test_every_fault_at_once_completes_or_names_failed_batches(clean_pairs, tmp_path):
    seed = 2  # a seed under which all six faults occur in this small run (checked below)
    srv = TimeoutServer(timeout_rate=0.2, seed=seed, **HTTP_FAULTS, **REPLY_FAULTS).start()
    try:
        ws = make_workspace(tmp_path / "ws")
        env = cli_env(srv.url, **SETTINGS)
        first = run_cli(ARGS, ws, env, timeout=180)
        assert "Traceback" not in first.output, str(first)
        statuses = [r["status"] for r in srv.requests if r["path"] == "/v1/messages"]
        for status in (429, 500, 529):
            assert status in statuses, f"the server never answered {status}: the test would prove nothing"
        assert srv.timeouts >= 1
        ledger = jsonl_strict(ws / "data" / "ledger.jsonl")
        invalid = " ".join(r.get("error", "") for r in ledger if r.get("status") in ("invalid", "failed"))
        assert "cut off at max_tokens" in invalid and "pairs" in invalid, "both reply faults should have happened"

        failed = sorted({r["batch"] for r in ledger if r.get("status") == "failed"})
        answers_failed = sorted({r["batch"] for r in ledger if r.get("status") == "failed" and not r.get("boundary")})
        probes_failed = any(r.get("event") == "probes" and r.get("result") == "failed" for r in ledger)
        if failed or probes_failed:
            assert first.returncode == 1, str(first)
            if answers_failed:
                assert "Failed batches, retried on the next run: " + ", ".join(answers_failed) in first.stdout, str(first)
            for batch in failed:
                assert any(line.strip().startswith(batch) and "FAILED:" in line for line in first.stdout.splitlines())
            if probes_failed:
                assert "Probe request FAILED" in first.stdout, str(first)
        else:
            assert first.returncode == 0, str(first)
        ok_before = {r["key"] for r in ledger if r.get("status") == "ok"}

        srv.configure(rate_429=0, rate_500=0, rate_529=0, malformed=0, truncated=0)  # the outage is over
        srv.timeout_rate = 0
        n_before = len(ledger)
        second = run_cli(ARGS, ws, env, timeout=180)
        assert second.returncode == 0, str(second)
        assert "Failed batches" not in second.stdout
        ledger = jsonl_strict(ws / "data" / "ledger.jsonl")
        resent = {r["batch"] for r in ledger[n_before:] if r.get("key")}
        assert resent == set(failed), "the re-run asks again for the failed batches, and only those"
        probes_sent = any(r.get("event") == "probes" for r in ledger[n_before:])
        assert probes_sent == (probes_failed or bool(answers_failed)), "the probe request is sent again iff it did not finish"
        ok = [r["key"] for r in ledger if r.get("status") == "ok"]
        assert len(ok) == len(set(ok)) and set(ok) >= ok_before
        assert pairs_of(ws) == clean_pairs, "after the faults and a re-run, the pairs equal a clean run's"
    finally:
        srv.stop()


@pytest.mark.parametrize("fault, message", [("truncated", "cut off at max_tokens"), ("malformed", 'no "pairs" list')])
def test_failed_batch_is_named_and_finished_by_a_rerun(fault, message, clean_pairs, tmp_path):
    """Certain failure: every reply is bad, so both batches fail after their validation retries."""
    srv = FakeAnthropic(seed=3, **{fault: 1.0}).start()
    try:
        ws = make_workspace(tmp_path / "ws")
        env = cli_env(srv.url, **SETTINGS)
        first = run_cli(ARGS, ws, env)
        assert first.returncode == 1, str(first)
        assert "Traceback" not in first.output
        assert "Failed batches, retried on the next run: bread, repair." in first.stdout, str(first)
        assert message in first.stdout
        assert not list((ws / "data" / "pairs").glob("*.jsonl")) or not pairs_of(ws)

        srv.configure(**{fault: 0.0})
        second = run_cli(ARGS, ws, env)
        assert second.returncode == 0, str(second)
        assert pairs_of(ws) == clean_pairs
    finally:
        srv.stop()
