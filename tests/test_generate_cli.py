"""`mlx-partner generate` end to end, against the local fake Anthropic server (tests/fake_anthropic.py).

The real CLI, the real `anthropic` SDK and real HTTP: ANTHROPIC_BASE_URL points at the server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_anthropic import TEST_API_KEY, FakeAnthropic
from harness import Hooks, kill_at, start_cli

from mlx_partner.cli import cli
from mlx_partner.config import GenerateSettings, SourcesSettings
from mlx_partner.generate.plan import prepare
from mlx_partner.workspace import Workspace, read_jsonl

REPO = Path(__file__).resolve().parent.parent
KEY = TEST_API_KEY  # the `api` fixture (conftest.py) sets it
# The example workspace by default: 64 pairs in 4 batches, 8 of them boundary pairs (12%), in 12
# rounds (two answer rounds and one boundary round a batch), and one probe request.
ROUNDS = 12
REQUESTS = ROUNDS + 1


def generate(ws: Path, *args: str):
    return CliRunner().invoke(cli, ["-w", str(ws), "generate", *args], catch_exceptions=False)


def pairs(ws: Path) -> list[dict]:
    out = []
    for path in sorted((ws / "data" / "pairs").glob("*.jsonl")):
        records, bad = read_jsonl(path)
        assert not bad, bad
        out += records
    return out


def ledger(ws: Path) -> list[dict]:
    return [r for r in read_jsonl(ws / "data" / "ledger.jsonl")[0] if "key" in r]


def billed(ws: Path) -> list[dict]:
    """Every ledger line of a request: the rounds' and the probe request's."""
    return [r for r in read_jsonl(ws / "data" / "ledger.jsonl")[0] if "key" in r or r.get("event") == "probes"]


def content(p) -> tuple:
    """What identifies a pair in the server's log: question, its first quote (if any), cited documents."""
    return p["question"], (p["quotes"][0]["text"] if p["quotes"] else ""), tuple(p["sources"])


def messages_sent(server) -> list[dict]:
    return [r for r in server.requests if r["path"] == "/v1/messages"]


def api_calls(server) -> list[dict]:
    """Requests to the Messages API (not the GET /props a loopback server is asked what it is)."""
    return [r for r in server.requests if r["path"].startswith("/v1/")]


def snapshot(ws: Path) -> list[tuple]:
    return sorted((p["id"], p["batch"], p["question"], p["answer"], json.dumps(p["quotes"])) for p in pairs(ws))


# --- the happy path ----------------------------------------------------------------------------


def test_generate_writes_grounded_pairs_ledger_and_summary(ws, api):
    result = generate(ws)
    assert result.exit_code == 0, result.output
    got = pairs(ws)
    assert len(got) == 64
    kinds = Counter(p["type"] for p in got)
    assert kinds["boundary"] == 8 and kinds["genuine"] == 28 and kinds["scenario"] + kinds["pushback"] == 28
    docs = {str(p.relative_to(ws / "sources")) for p in (ws / "sources").rglob("*.md")}
    for p in got:
        assert p["model"] == "claude-sonnet-5-5" and p["prompt_version"]
        assert set(p["sources"]) <= docs and set(p["source_hashes"]) == set(p["sources"])
        if p["type"] != "boundary":
            assert p["quotes"] and p["answer"].startswith("I ")
    assert len({p["id"] for p in got}) == 64
    records = ledger(ws)
    assert len(records) == ROUNDS and all(r["status"] == "ok" for r in records)
    assert KEY not in (ws / "data" / "ledger.jsonl").read_text()
    for r in records:
        assert r["input_tokens"] > 0 and r["output_tokens"] > 0 and r["cost_usd"] > 0 and r["source_hashes"]
    # later rounds of a batch read the shared prefix from the cache
    assert all(r["cache_read_input_tokens"] > 0 for r in records if r["round"] > 0)
    assert all(r["cache_creation_input_tokens"] > 0 for r in records if r["round"] == 0)
    # later rounds list the questions already asked
    second = [m for m in messages_sent(api) if "Round 2 of" in m["body"]["messages"][0]["content"][1]["text"]]
    assert second and all("Questions already asked" in m["body"]["messages"][0]["content"][1]["text"] for m in second)
    assert all(m["body"]["tool_choice"]["type"] == "tool" for m in messages_sent(api))
    sources_json = json.loads((ws / "data" / "sources.json").read_text())
    assert set(sources_json) == docs
    assert "Accepted 64 pairs" in result.stdout and "Estimated cost: $" in result.stdout
    assert f"requests {REQUESTS}/{REQUESTS}" in result.stderr
    # a second run has nothing left to do and sends nothing (the probes are written once)
    api.reset_log()
    again = generate(ws)
    assert again.exit_code == 0 and messages_sent(api) == [] and f"{ROUNDS} already done" in again.stdout
    assert len(pairs(ws)) == 64


# --- done when (a): injected faults never get through, genuine pairs always do ---------------


def test_injected_pairs_are_rejected_and_every_genuine_pair_is_accepted(ws, api):
    api.configure(seed=7, invented=0.3, wrong_source=0.1, duplicate=0.2, quote_noise=0.3)
    result = generate(ws, "--pairs", "120", "--concurrency", "4")
    assert result.exit_code == 0, result.output
    produced = api.produced
    faults = Counter(p.fault for p in produced)
    assert faults["invented"] >= 10 and faults["wrong-source"] >= 3 and faults["duplicate"] >= 5 and faults[None] >= 20
    # A pair is identified by its question, quote and sources: a sentence whose injected pair
    # was rejected may come back later as a genuine pair with the same question.
    genuine = {p.content for p in produced if p.fault is None}
    injected = {p.content for p in produced if p.fault is not None}
    accepted = [content(p) for p in pairs(ws)]
    assert len(accepted) == len(set(accepted))
    assert set(accepted) == genuine
    assert not set(accepted) & injected
    rejected, _ = read_jsonl(ws / "data" / "rejected.jsonl")
    reasons = Counter(r["reason"] for r in rejected)
    assert reasons["invented-quote"] >= faults["invented"]
    assert reasons["duplicate"] == faults["duplicate"]
    assert len(rejected) == sum(1 for p in produced if p.fault is not None)
    assert "Rejected by reason:" in result.stdout and "invented-quote" in result.stdout


# --- done when (b): SIGKILL partway, re-run, same pairs as an uninterrupted run ----------------


def test_killed_run_resumes_to_the_same_pairs(ws, api, tmp_path, monkeypatch):
    """The kill lands at a known point (the product's test hook holds a worker before its 5th
    request), and the re-run talks to a second server of the same seed, so what it sends is
    counted exactly, whatever the killed run's last request does on the first server."""
    api.configure(seed=3, latency=0.4, invented=0.2, duplicate=0.2)
    reference = tmp_path / "reference"
    shutil.copytree(ws, reference)
    assert generate(reference, "--concurrency", "2").exit_code == 0
    expected = snapshot(reference)
    api.reset_log()

    hooks = Hooks(tmp_path / "hooks")
    hooks.hold("generate-request", 5)
    proc = start_cli(["generate", "--concurrency", "2"], ws, {**os.environ, **hooks.env}, logs=tmp_path / "logs")
    kill_at(proc, hooks, "generate-request", 5)
    done_before = {r["key"] for r in ledger(ws) if r["status"] == "ok"}
    # Each request after the first two is sent once an earlier reply is recorded, so at the 5th
    # at least 3 are; the held request never went out, so the rounds cannot all be done.
    assert 3 <= len(done_before) < ROUNDS

    rerun = FakeAnthropic(seed=3, latency=0.4, invented=0.2, duplicate=0.2).start()
    try:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", rerun.url)
        result = generate(ws, "--concurrency", "2")
        assert result.exit_code == 0, result.output
        resent = len(messages_sent(rerun))
    finally:
        rerun.stop()
    assert snapshot(ws) == expected
    got = pairs(ws)
    assert len({p["id"] for p in got}) == len(got)  # none doubled
    ok = Counter(r["key"] for r in ledger(ws) if r["status"] == "ok")
    assert set(ok) == {r["key"] for r in ledger(reference)} and max(ok.values()) == 1
    # finished requests were not sent again: the re-run sent only what was left (and the probe
    # request, which comes after every round)
    assert resent == REQUESTS - len(done_before)
    # the killed run sent the recorded ones and at most the other worker's request in flight
    assert len(messages_sent(api)) <= len(done_before) + 1


# --- done when (c): the dry-run estimate matches what the ledger records ----------------------


def test_dry_run_sends_nothing_and_estimates_within_10_percent(ws, api):
    """The estimate counts 4 characters a token; the server bills by its own BPE-like rule
    (fake_anthropic.count_tokens, which is not that: test_fake_anthropic.py), so this compares two
    independent counts of the same requests. Measured here: input +1.6%, cache reads and writes
    +3.1%, output +4.5%, cost +2.9%; the stated tolerance is 10%."""
    result = generate(ws, "--dry-run")
    assert result.exit_code == 0, result.output
    assert api_calls(api) == [] and not (ws / "data").exists()
    assert f"{REQUESTS} of {REQUESTS} requests to send" in result.stdout and "Estimated cost: $" in result.stdout
    # the plan shows the boundary rounds and the probe request
    assert "Boundary rounds: 4 (4 to send), 8 boundary pairs (12% of the pairs planned)" in result.stdout
    assert "Probe request: 1, after the batches: 16 near-domain probe questions" in result.stdout
    table = [line.split() for line in result.stdout.splitlines() if line.strip().startswith(("bread", "repair"))]
    assert table and all(row[6] == "2" for row in table)  # the boundary column: 2 a batch
    est = prepare(Workspace.at(ws), GenerateSettings(), SourcesSettings()).estimate
    assert generate(ws).exit_code == 0
    records = billed(ws)
    assert est.requests == len(records)
    # cache fields are recorded only where the endpoint sent them (not for the uncached probe request)
    total_input = sum(r["input_tokens"] + r.get("cache_creation_input_tokens", 0) + r.get("cache_read_input_tokens", 0)
                      for r in records)
    assert est.total_input == pytest.approx(total_input, rel=0.1)
    assert est.cache_read_input_tokens == pytest.approx(sum(r.get("cache_read_input_tokens", 0) for r in records), rel=0.1)
    assert est.cache_creation_input_tokens == pytest.approx(sum(r.get("cache_creation_input_tokens", 0) for r in records), rel=0.1)
    # output depends on how long the model writes; the fake server's pairs are of typical length
    assert est.output_tokens == pytest.approx(sum(r["output_tokens"] for r in records), rel=0.1)
    assert est.cost == pytest.approx(sum(r["cost_usd"] for r in records), rel=0.1)
    # after the run, the dry run has nothing left to send
    after = generate(ws, "--dry-run").stdout
    assert f"0 of {ROUNDS} requests to send ({ROUNDS} already done)" in after
    assert "data/probes.jsonl holds 16 probes, kept" in after


def test_dry_run_needs_no_credential(ws, monkeypatch):
    result = generate(ws, "--dry-run", "--model", "glm-4.6", "--batch-api")
    assert result.exit_code == 0, result.output
    assert "priced as Sonnet" in result.stdout and "half price" in result.stdout


# --- faults the SDK and the loop must absorb ---------------------------------------------------


def test_rate_limits_and_server_errors_are_retried(ws, api):
    api.configure(seed=1, rate_429=0.4, rate_500=0.3, rate_529=0.3)
    result = generate(ws, "--concurrency", "3")
    assert result.exit_code == 0, result.output
    statuses = Counter(r["status"] for r in messages_sent(api))
    assert statuses[429] and statuses[500] and statuses[529] and statuses[200] == REQUESTS
    assert len(pairs(ws)) == 64


def test_invalid_replies_are_asked_again_and_failed_batches_retried_next_run(ws, api):
    api.configure(seed=2, malformed=1.0)
    result = generate(ws)
    assert result.exit_code == 1
    assert "Failed batches, retried on the next run: bread, notebooks, repair, streets" in result.stdout
    statuses = Counter(r["status"] for r in ledger(ws))
    assert statuses == {"invalid": 8, "failed": 4}  # each first round: asked 3 times (2 re-asks)
    assert pairs(ws) == []
    # nothing was generated from the documents, so `sources` still calls them new
    assert json.loads((ws / "data" / "sources.json").read_text()) == {}
    api.configure(malformed=0.25, truncated=0.25)
    result = generate(ws)
    statuses = Counter(r["status"] for r in ledger(ws))
    assert statuses["invalid"] > 8 and statuses["ok"] >= 4
    re_asked = [m for m in messages_sent(api) if "could not be used" in m["body"]["messages"][0]["content"][1]["text"]]
    assert re_asked
    api.configure(malformed=0.0, truncated=0.0)
    result = generate(ws)
    assert result.exit_code == 0, result.output
    assert len({r["key"] for r in ledger(ws) if r["status"] == "ok"}) == ROUNDS
    assert len(pairs(ws)) == 64


def test_forced_tool_use_on_an_endpoint_without_tools_says_what_to_do(ws, api):
    api.configure(no_tools=True)
    result = generate(ws, "--output", "tool")
    assert result.exit_code == 1 and "try --output json" in result.stdout


def test_a_torn_last_line_from_a_kill_is_dropped(ws, api):
    assert generate(ws).exit_code == 0
    path = ws / "data" / "pairs" / "bread.jsonl"
    before = path.read_text()
    path.write_text(before + '{"id": "abc", "question": "half a li')
    assert generate(ws).exit_code == 0
    assert path.read_text() == before


@pytest.mark.parametrize(
    "faults, args, note",
    [
        ({}, ["--output", "json"], None),
        ({"no_tools": True}, [], "does not accept tools"),
        ({"text_only": True}, [], "instead of calling the tool"),
    ],
)
def test_json_in_text_by_flag_or_fallback(ws, api, faults, args, note):
    api.configure(**faults)
    result = generate(ws, *args)
    assert result.exit_code == 0, result.output
    assert len(pairs(ws)) == 64
    assert ledger(ws)[-1]["mode"] == "json"
    if note:
        assert note in result.stdout
    else:
        assert all("tools" not in m["body"] for m in messages_sent(api))


def test_batch_api_gives_the_same_pairs_at_half_price(ws, api, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(ws, other)
    api.configure(seed=5, invented=0.2, batch_polls=2)
    result = generate(ws, "--batch-api")
    assert result.exit_code == 0, result.output
    paths = [r["path"] for r in api.requests]
    # one message batch per wave: answer rounds 1 and 2, then the boundary rounds; the one probe
    # request goes through the Messages API (and says so in the plan)
    assert paths.count("/v1/messages") == 1 and paths.count("/v1/messages/batches") == 3
    records = ledger(ws)
    assert all(r["batch_api"] for r in records) and len(records) == ROUNDS
    api.clear_cache()
    assert generate(other).exit_code == 0
    assert snapshot(ws) == snapshot(other)
    cost = lambda w: sum(r["cost_usd"] for r in ledger(w))  # noqa: E731
    assert cost(ws) == pytest.approx(0.5 * cost(other), rel=0.01)


def test_killed_batch_api_run_collects_its_message_batch_instead_of_resending(ws, api, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(ws, reference)
    api.configure(seed=4, invented=0.2, batch_polls=100_000)  # the first message batch never ends
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_partner", "-w", str(ws), "generate", "--batch-api"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        events = read_jsonl(ws / "data" / "ledger.jsonl")[0]
        if any(e.get("event") == "message_batch" for e in events):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [r["path"] for r in api.requests if r["method"] == "POST"] == ["/v1/messages/batches"]
    api.configure(batch_polls=0)
    result = generate(ws, "--batch-api")
    assert result.exit_code == 0, result.output
    assert "Collecting message batch" in result.stderr
    creates = [r for r in api.requests if r["method"] == "POST" and r["path"] == "/v1/messages/batches"]
    assert len(creates) == 3  # one per wave of rounds, the first sent by the killed run
    assert generate(reference).exit_code == 0
    assert snapshot(ws) == snapshot(reference)


def creates(server) -> list[dict]:
    return [r for r in server.requests if r["method"] == "POST" and r["path"] == "/v1/messages/batches"]


ALL_FAILED = "Failed batches, retried on the next run: bread, notebooks, repair, streets"


@pytest.mark.parametrize("kind", ["errored", "expired", "canceled"])
def test_batch_items_errored_expired_or_canceled_fail_their_batch_and_the_next_run_sends_them(ws, api, tmp_path, kind):
    clean = tmp_path / "clean"
    shutil.copytree(ws, clean)
    api.configure(seed=5, batch_polls=0, **{f"batch_{kind}": 1.0})
    result = generate(ws, "--batch-api")
    assert result.exit_code == 1, result.output
    assert ALL_FAILED in result.stdout and f"the batch request {kind}" in result.stdout
    records = ledger(ws)
    assert len(records) == 4 and {r["status"] for r in records} == {"failed"}  # the first wave, one round a batch
    assert all(r["error"].startswith(f"the batch request {kind}") for r in records)
    if kind == "errored":
        assert all(r["error"] == "the batch request errored: Internal server error" for r in records)
    assert pairs(ws) == [] and len(creates(api)) == 1  # nothing after a wave that failed every batch
    assert all(r["input_tokens"] == 0 and r["cost_usd"] == 0 for r in records)  # an item not processed is not billed

    api.configure(**{f"batch_{kind}": 0.0})
    result = generate(ws, "--batch-api")
    assert result.exit_code == 0, result.output
    assert "Collecting message batch" not in result.stderr  # the failed batch ended: nothing to collect
    assert generate(clean, "--batch-api").exit_code == 0
    assert snapshot(ws) == snapshot(clean)


def test_a_batch_with_some_items_errored_fails_only_their_batches(ws, api):
    api.configure(seed=2, batch_polls=0, batch_errored=0.2, batch_expired=0.1)
    result = generate(ws, "--batch-api")
    failed = sorted({r["batch"] for r in ledger(ws) if r["status"] == "failed" and not r["boundary"]})
    boundary = sorted({r["batch"] for r in ledger(ws) if r["status"] == "failed" and r["boundary"]})
    assert failed and boundary and len(failed) < 4, "the seed should fail some rounds of each kind, not all"
    assert result.exit_code == 1 and f"Failed batches, retried on the next run: {', '.join(failed)}." in result.stdout
    assert f"Boundary rounds failed, asked again on the next run: {', '.join(boundary)}." in result.stdout
    assert {p["batch"] for p in pairs(ws)} >= {"bread", "notebooks", "repair", "streets"} - set(failed)
    api.configure(batch_errored=0.0, batch_expired=0.0)
    result = generate(ws, "--batch-api")
    assert result.exit_code == 0, result.output
    assert len({r["key"] for r in ledger(ws) if r["status"] == "ok"}) == ROUNDS and len(pairs(ws)) == 64


def test_a_killed_runs_batch_that_is_gone_is_sent_again(ws, api, tmp_path):
    """The expired-batch branch: the batch a killed run left in the ledger is unknown to the API now
    (404: past its retention, or deleted), so its rounds are sent again, and the run says so."""
    reference = tmp_path / "reference"
    shutil.copytree(ws, reference)
    api.configure(seed=4, invented=0.2, batch_polls=100_000)
    hooks = Hooks(tmp_path / "hooks")
    hooks.hold("generate-batch-waiting", 1)  # the first batch sent and recorded, not yet polled
    proc = start_cli(["generate", "--batch-api"], ws, {**os.environ, **hooks.env}, logs=tmp_path / "logs")
    kill_at(proc, hooks, "generate-batch-waiting")
    assert len(creates(api)) == 1
    gone = creates(api)[0]
    api.forget_batches()
    api.configure(batch_polls=0)
    result = generate(ws, "--batch-api")
    assert result.exit_code == 0, result.output
    assert "Collecting message batch" not in result.stderr
    assert "is gone (404" in result.stderr and "sending its 4 requests again" in result.stderr
    retrieved = [r for r in api.requests if r["method"] == "GET" and r["status"] == 404]
    assert len(retrieved) == 1 and gone["status"] == 200
    assert len(creates(api)) == 4  # the killed run's, then one per wave
    assert generate(reference, "--batch-api").exit_code == 0
    assert snapshot(ws) == snapshot(reference)


def test_faults_on_the_batch_endpoints_are_retried(ws, api, tmp_path):
    clean = tmp_path / "clean"
    shutil.copytree(ws, clean)
    api.configure(seed=5, batch_polls=2)
    api.fail(529, route="batch-create", nth=1)
    api.fail(500, route="batch-retrieve", nth=2)
    api.fail("drop", route="batch-retrieve", nth=4)
    api.fail("drop", route="batch-results", nth=1)
    api.fail(429, route="batch-results", nth=3)
    result = generate(ws, "--batch-api")
    assert result.exit_code == 0, result.output
    assert all(rule.fired == 1 for rule in api.rules)
    assert [r["status"] for r in creates(api)] == [529, 200, 200, 200]  # retried, and no batch sent twice
    api.clear_rules()
    assert generate(clean, "--batch-api").exit_code == 0
    assert snapshot(ws) == snapshot(clean)


def test_a_batch_that_cannot_be_polled_is_collected_by_the_next_run(ws, api, tmp_path):
    """Every retrieve fails (500) past the SDK's retries: the run fails its batches, the message
    batch stays open in the ledger, and the next run collects it rather than paying again."""
    api.configure(seed=5, batch_polls=1)
    api.fail(500, route="batch-retrieve")
    result = generate(ws, "--batch-api")
    assert result.exit_code == 1 and ALL_FAILED in result.stdout and "the API answered 500" in result.stdout
    assert len(creates(api)) == 1
    api.clear_rules()
    result = generate(ws, "--batch-api")
    assert result.exit_code == 0, result.output
    assert "Collecting message batch" in result.stderr
    assert len(creates(api)) == 3  # the first wave collected, not sent again
    assert len(pairs(ws)) == 64


def test_a_fault_on_every_attempt_of_one_batchs_requests_fails_only_that_batch(ws, api):
    api.fail(529, contains="theme: bread")  # every attempt of every bread request: overloaded
    result = generate(ws, "--concurrency", "2")
    assert result.exit_code == 1
    assert "Failed batches, retried on the next run: bread." in result.stdout and "529" in result.stdout
    bread = [r for r in messages_sent(api) if "theme: bread" in json.dumps(r["body"])]
    assert len(bread) == 4 and {r["status"] for r in bread} == {529}  # the first round, 1 + 3 SDK retries
    assert {p["batch"] for p in pairs(ws)} == {"notebooks", "repair", "streets"}
    api.clear_rules()
    result = generate(ws)
    assert result.exit_code == 0, result.output
    assert len(pairs(ws)) == 64


def test_faults_on_later_attempts_are_retried_too(ws, api):
    api.configure(rate_429=1.0)  # every first attempt
    api.fail(500, attempt=2)
    api.fail("drop", attempt=3)
    result = generate(ws, "--concurrency", "3")
    assert result.exit_code == 0, result.output
    statuses = Counter(r["status"] for r in messages_sent(api))
    assert statuses == {429: REQUESTS, 500: REQUESTS, "drop": REQUESTS, 200: REQUESTS}
    assert len(pairs(ws)) == 64


# --- source changes, --force -------------------------------------------------------------------


def test_changed_document_retires_its_pairs_and_regenerates_only_its_batch(ws, api):
    assert generate(ws).exit_code == 0
    before = pairs(ws)
    changed = Counter(d for p in before for d in p["sources"] if d.startswith("repair/")).most_common(1)[0][0]
    path = ws / "sources" / changed
    path.write_text(path.read_text() + "\nA fourth tool, patience, is the one nobody sells in a shop.\n")
    status = CliRunner().invoke(cli, ["-w", str(ws), "sources"])
    assert "changed" in status.output
    api.reset_log()
    result = generate(ws)
    assert result.exit_code == 0, result.output
    batches = {m["body"]["messages"][0]["content"][0]["text"].split("theme: ")[1].split(")")[0] for m in messages_sent(api)}
    assert batches == {"repair"}
    retired, _ = read_jsonl(ws / "data" / "retired.jsonl")
    assert retired and all(changed in r["sources"] and r["reason"] == f"source changed: {changed}" for r in retired)
    assert len(retired) == sum(1 for p in before if changed in p["sources"])
    after = pairs(ws)
    new_hash = json.loads((ws / "data" / "sources.json").read_text())[changed]
    assert all(p["source_hashes"].get(changed, new_hash) == new_hash for p in after)
    untouched = [p for p in before if p["batch"] != "repair"]
    assert all(p in after for p in untouched)
    assert 60 <= len(after) <= 66
    assert "Retired" in result.stdout

    (ws / "sources" / changed).unlink()
    result = generate(ws)
    assert result.exit_code == 0, result.output
    retired, _ = read_jsonl(ws / "data" / "retired.jsonl")
    assert any(r["reason"] == f"source removed: {changed}" for r in retired)
    assert not any(changed in p["sources"] for p in pairs(ws))


def test_force_regenerates_everything(ws, api):
    assert generate(ws).exit_code == 0
    first = snapshot(ws)
    api.reset_log()
    result = generate(ws, "--force")
    assert result.exit_code == 0, result.output
    assert len(messages_sent(api)) == REQUESTS  # the probes too: --force writes them again
    assert snapshot(ws) == first  # same server, same pairs
    retired, _ = read_jsonl(ws / "data" / "retired.jsonl")
    assert len(retired) == 64 and {r["reason"] for r in retired} == {"regenerated (--force)"}
    api.reset_log()
    assert generate(ws).exit_code == 0 and messages_sent(api) == []


def test_timeouts_fail_the_batch_and_the_next_run_retries_it(ws, api, monkeypatch):
    monkeypatch.setenv("MLX_PARTNER_GENERATE_TIMEOUT", "0.3")
    monkeypatch.setenv("MLX_PARTNER_GENERATE_MAX_RETRIES", "0")
    api.configure(latency=0.6)
    result = generate(ws, "--pairs", "16", "--concurrency", "4")
    assert result.exit_code == 1
    assert "timed out" in result.stdout and "Failed batches, retried on the next run" in result.stdout
    assert {r["status"] for r in ledger(ws)} == {"failed"}
    api.configure(latency=0.0)
    monkeypatch.setenv("MLX_PARTNER_GENERATE_TIMEOUT", "20")
    result = generate(ws, "--pairs", "16")
    assert result.exit_code == 0, result.output
    assert len(pairs(ws)) == 16


# --- bad input ---------------------------------------------------------------------------------


def test_no_credential_is_a_plain_error_before_any_work(ws, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_PROFILE", raising=False)
    result = generate(ws)
    assert result.exit_code == 1
    assert "ANTHROPIC_API_KEY" in result.output and "ANTHROPIC_AUTH_TOKEN" in result.output
    assert "Traceback" not in result.output and not (ws / "data").exists()


def test_rejected_key_names_the_variable_and_never_the_key(ws, api):
    api.configure(api_key="the-right-key")
    result = generate(ws)
    assert result.exit_code == 1
    assert "ANTHROPIC_API_KEY was rejected (401)" in result.output
    assert KEY not in result.output and "Traceback" not in result.output


def test_bearer_token_works(ws, api, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "bearer-token-123")
    api.configure(api_key="bearer-token-123")
    result = generate(ws, "--pairs", "8")
    assert result.exit_code == 0, result.output
    assert len(pairs(ws)) == 8


def test_unreachable_endpoint_names_the_url(ws, api, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    monkeypatch.setenv("MLX_PARTNER_GENERATE_MAX_RETRIES", "0")
    result = generate(ws)
    assert result.exit_code == 1
    assert f"Could not reach the API at {url}" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("profile", ["", "   \n"])
def test_empty_profile_is_an_error(ws, api, profile):
    (ws / "profile.md").write_text(profile)
    result = generate(ws)
    assert result.exit_code == 1 and "profile" in result.output.lower()
    assert api_calls(api) == []


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("OUTPUT", "xml", "generate.output is 'xml'"),
        ("CONCURRENCY", "0", "concurrency must be at least 1"),
        ("MAX_TOKENS", "10", "max_tokens must be at least 256"),
        ("MAX_TOKENS", "64000", "max_tokens must be at most 21000"),
    ],
)
def test_bad_settings_are_plain_errors(ws, api, monkeypatch, name, value, message):
    monkeypatch.setenv(f"MLX_PARTNER_GENERATE_{name}", value)
    result = generate(ws)
    assert result.exit_code == 1 and message in result.output
    assert api_calls(api) == []


def test_bad_mix_flag(ws, api):
    result = generate(ws, "--mix", "genuine=lots")
    assert result.exit_code == 2 and "kind=share" in result.output
    result = generate(ws, "--mix", "musings=1")
    assert result.exit_code == 1 and "Unknown pair kind" in result.output
