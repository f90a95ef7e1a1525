"""[local-generate] `generate` against a local endpoint, SIGKILLed mid-run and resumed.

The fake Messages API server in its local mode (tests/fake_anthropic.py: GET /props, no cache
fields in usage, no Message Batches, tool calls malformed as a small local model writes them, so
the run switches to JSON in text) and the real CLI in a subprocess with no key, as a user runs it
against llama-server. The kills land exactly where the product's test hook holds the child
(mlx_partner/testhooks.py: "generate-request", a request about to be sent): first as the second
batch's first request goes out (the first batch finished), then in the middle of the second
batch. The resumed runs keep what the killed ones finished and send none of it again; the last
one completes with the pairs of an uninterrupted run, each passing the checks, nothing priced.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import FakeAnthropic
from harness import Hooks, cli_env, jsonl_strict, kill_at, make_workspace, run_cli, start_cli

from mlx_partner.grounding import check_pair
from mlx_partner.sources.documents import load_documents

ARGS = ["generate", "--pairs", "24", "--pairs-per-round", "3"]


@pytest.fixture(scope="module")
def server():
    srv = FakeAnthropic(seed=7, invented=0.15, duplicate=0.1).start()
    srv.configure(local=True, loose_tools=True)
    yield srv
    srv.stop()


def local_env(url: str) -> dict[str, str]:
    """No key at all (a loopback endpoint needs none), one retry as the local defaults have it."""
    return cli_env(url, key=None)


def messages_sent(server: FakeAnthropic) -> int:
    return sum(1 for r in server.requests if r["path"] == "/v1/messages")


def ledger(ws: Path) -> list[dict[str, Any]]:
    return jsonl_strict(ws / "data" / "ledger.jsonl")


def pairs(ws: Path) -> list[dict[str, Any]]:
    return [p for f in sorted((ws / "data" / "pairs").glob("*.jsonl")) for p in jsonl_strict(f)]


def pair_set(ws: Path) -> set[str]:
    return {json.dumps(p, sort_keys=True) for p in pairs(ws)}


def ok_keys(lines: list[dict[str, Any]]) -> list[str]:
    return [r["key"] for r in lines if r.get("status") == "ok"]


@pytest.fixture(scope="module")
def baseline(server, tmp_path_factory) -> dict[str, Any]:
    ws = make_workspace(tmp_path_factory.mktemp("local-baseline") / "ws")
    result = run_cli(ARGS, ws, local_env(server.url))
    assert result.returncode == 0, str(result)
    assert "Cost: local, $0." in result.stdout and "JSON-in-text" in result.stderr, str(result)
    lines = ledger(ws)
    answer_batches = list(dict.fromkeys(r["batch"] for r in lines if r.get("batch") and not r.get("boundary")))
    assert len(answer_batches) == 2, "two themes: two batches, sent one after the other (concurrency 1)"
    return {"ws": ws, "ledger": lines, "pairs": pair_set(ws), "batches": answer_batches}


def test_killed_local_generate_keeps_finished_batches_and_resumes_to_the_same_pairs(server, baseline, tmp_path):
    env = local_env(server.url)
    first, second = baseline["batches"]
    clean = baseline["ledger"]
    # With one request at a time every request is one ledger line, in order: the second batch's
    # first request is the (n + 1)th request when the first batch took n.
    first_batch_requests = next(i for i, r in enumerate(clean) if r.get("batch") == second)
    assert all(r["batch"] == first for r in clean[:first_batch_requests])
    ws = make_workspace(tmp_path / "ws")

    # 1. Killed as the second batch's first request is about to go: the first batch is finished.
    hooks = Hooks(tmp_path / "hooks-1")
    hooks.hold("generate-request", first_batch_requests + 1)
    kill_at(start_cli(ARGS, ws, {**env, **hooks.env}), hooks, "generate-request", first_batch_requests + 1)
    after_first = ledger(ws)
    assert [r["key"] for r in after_first] == [r["key"] for r in clean[:first_batch_requests]]
    kept = pair_set(ws)
    assert kept and kept <= baseline["pairs"], "the first batch's pairs are on disk, as an uninterrupted run wrote them"

    # 2. Resumed, and killed again in the middle of the second batch (after one of its rounds).
    hooks = Hooks(tmp_path / "hooks-2")
    hooks.hold("generate-request", 4)
    sent_before = messages_sent(server)
    kill_at(start_cli(ARGS, ws, {**env, **hooks.env}), hooks, "generate-request", 4)
    after_second = ledger(ws)
    resumed = after_second[len(after_first):]
    assert resumed and {r["batch"] for r in resumed} == {second}, "the finished batch is not sent again"
    assert ok_keys(resumed), "one of the second batch's rounds finished before the kill"
    assert pair_set(ws) >= kept

    # 3. Resumed to the end.
    result = run_cli(ARGS, ws, env)
    assert result.returncode == 0, str(result)
    assert "Traceback" not in result.output
    lines = ledger(ws)
    done = Counter(ok_keys(lines))
    assert set(done) == set(ok_keys(clean)) and max(done.values()) == 1, "every request done once, none re-sent"
    for r in lines[len(after_second):]:
        assert r.get("key") not in set(ok_keys(after_second)), f"{r.get('key')} was finished before the kill and sent again"
    assert pair_set(ws) == baseline["pairs"], "the same pairs as an uninterrupted run"
    texts = {d.id: d.text for d in load_documents(ws / "sources")[0]}
    for p in pairs(ws):
        assert check_pair(p, texts) is None, p
    assert "Cost: local, $0." in result.stdout and "$" not in result.stdout.replace("local, $0", "")
    assert all(r["cost_usd"] == 0 and r["generator"] == server.url for r in lines)
    assert not any(k.startswith("cache_") for r in lines for k in r), "cache tokens a local server never sends"
    # Requests the resumed runs made: what was left, plus at most one malformed tool reply each
    # before the run switches to JSON again.
    left = len(clean) - len(after_first)
    assert messages_sent(server) - sent_before <= left + 2


URL, MODEL = "http://127.0.0.1:8080", "m"


def line(mode: str, status: str, generator: str = URL, model: str = MODEL) -> dict[str, Any]:
    return {"mode": mode, "status": status, "generator": generator, "model": model}


@pytest.mark.parametrize("lines, remembered", [
    ([], False),
    ([line("tool", "invalid"), line("json", "ok")], True),  # malformed tool call, then JSON in text
    ([line("tool", "error"), line("json", "ok")], True),  # tools refused (400)
    ([line("tool", "invalid"), line("tool", "ok")], False),  # a cloud retry in tool mode worked
    ([line("tool", "invalid"), line("json", "ok"), line("tool", "ok")], False),  # tools worked since
    ([line("tool", "failed"), line("json", "ok")], False),  # a network failure says nothing about tools
    ([line("tool", "invalid"), line("json", "ok", generator="http://127.0.0.1:11434")], False),  # another server
    ([line("tool", "invalid"), line("json", "ok", model="other")], False),
    ([line("json", "ok")], False),  # --output json before: auto still tries tools first
])
def test_tools_failed_before(lines, remembered):
    from mlx_partner.generate.ledger import tools_failed_before

    assert tools_failed_before(lines, URL, MODEL) is remembered
    assert tools_failed_before(lines, "", MODEL) is False  # the default endpoint is never remembered
