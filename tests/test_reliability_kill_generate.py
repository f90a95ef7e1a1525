"""Kill `generate` with SIGKILL at seeded random points, re-run it, and compare with a clean run.

The real CLI runs in a subprocess against the local Messages API server (tests/fake_anthropic.py),
which answers deterministically from the request, with some latency and some bad pairs (invented
quotes, duplicates) so the rejection path is crossed too. Kill points are drawn from a seeded RNG:
the Nth request about to be sent (the child is held there by the product's test hook,
mlx_partner/testhooks.py, so the kill lands there for sure), just after the Nth ledger line, or
just after the pairs file grows (the window between writing pairs and recording the request as
done). After each kill the command is
run again to completion; the accepted pairs must equal an uninterrupted run's (same ids, same
content), with no pair doubled, no truncated line, and a ledger that records every pair's request
as done exactly once.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import FakeAnthropic
from harness import (
    Hooks,
    cli_env,
    jsonl_strict,
    kill_at,
    kill_when,
    line_count,
    make_workspace,
    run_cli,
    start_cli,
)

from mlx_partner.generate.requests import PROMPT_VERSION
from mlx_partner.workspace import read_jsonl

ARGS = ["generate", "--pairs", "24", "--pairs-per-round", "3", "--concurrency", "2"]
LATENCY = 0.1
CHAIN_SEEDS = (0, 1, 2, 3)
KILLS_PER_CHAIN = 3  # 12 kills in all, each inside a running command


@pytest.fixture(scope="module")
def server():
    srv = FakeAnthropic(seed=7, latency=LATENCY, invented=0.15, duplicate=0.1).start()
    yield srv
    srv.stop()


def snapshot(ws: Path, strict_ledger: bool = True) -> dict[str, Any]:
    """What a run left: pairs, rejections and ledger, each line checked to be whole JSON."""
    pairs = [r for path in sorted((ws / "data" / "pairs").glob("*.jsonl")) for r in jsonl_strict(path)]
    rejected_path = ws / "data" / "rejected.jsonl"
    rejected = jsonl_strict(rejected_path) if rejected_path.exists() else []
    ledger = jsonl_strict(ws / "data" / "ledger.jsonl") if strict_ledger else read_jsonl(ws / "data" / "ledger.jsonl")[0]
    json.loads((ws / "data" / "sources.json").read_text(encoding="utf-8"))
    return {"pairs": pairs, "rejected": rejected, "ledger": ledger}


def pair_set(snap: dict[str, Any]) -> set[str]:
    return {json.dumps(p, sort_keys=True) for p in snap["pairs"]}


def rejected_set(snap: dict[str, Any]) -> set[tuple]:
    return {(r["batch"], r.get("round"), r.get("position"), r["reason"], r["question"]) for r in snap["rejected"]}


def check_consistent(snap: dict[str, Any]) -> None:
    """No pair twice; every pair's request recorded as done, exactly once; rejections not doubled."""
    pairs = snap["pairs"]
    ids = Counter(p["id"] for p in pairs)
    assert not [i for i, n in ids.items() if n > 1], f"pairs doubled: {[i for i, n in ids.items() if n > 1]}"
    slots = Counter((p["batch"], p["round"], p["position"]) for p in pairs)
    assert max(slots.values(), default=1) == 1, "two pairs from one reply position"
    ok = Counter(r["key"] for r in snap["ledger"] if r.get("status") == "ok")
    assert max(ok.values(), default=1) == 1, f"a request counted twice as done: {[k for k, n in ok.items() if n > 1]}"
    done = {r["key"]: r for r in snap["ledger"] if r.get("status") == "ok"}
    for p in pairs:
        key = f"{p['batch']}@{p['batch_sha'][:16]}#r{p['round']}/{PROMPT_VERSION}"
        assert key in done, f"pair {p['id']} comes from request {key}, which the ledger does not record as done"
        assert p["question"] in done[key]["questions"], f"pair {p['id']} is not among its request's questions"
    rej = Counter((r["batch"], r.get("batch_sha"), r.get("round"), r.get("position"), r["reason"]) for r in snap["rejected"])
    assert max(rej.values(), default=1) == 1, f"a rejection written twice: {[k for k, n in rej.items() if n > 1]}"


@pytest.fixture(scope="module")
def baseline(server, tmp_path_factory) -> dict[str, Any]:
    ws = make_workspace(tmp_path_factory.mktemp("gen-baseline") / "ws")
    result = run_cli(ARGS, ws, cli_env(server.url))
    assert result.returncode == 0, str(result)
    snap = snapshot(ws)
    check_consistent(snap)
    assert len(snap["pairs"]) >= 15 and snap["rejected"], "the baseline should accept most pairs and reject some"
    return snap


def kill_point(rng: random.Random, remaining: int) -> tuple[str, Any, float]:
    """(what to wait for, its parameter, extra delay): a seeded point in what is left of the run."""
    if remaining < 1:  # every request done; what is left (records, probes) runs to the end
        return "end", None, 0.0
    mode = rng.choice(["request", "ledger", "ledger", "pairs", "pairs"]) if remaining > 1 else "request"
    if mode == "request":  # held as the Nth request is about to go (the others may be in flight)
        return "request", rng.randrange(1, remaining + 1), 0.0
    if mode == "ledger":  # just after the Nth request is recorded, or a little later
        return "ledger", rng.randrange(1, remaining), rng.uniform(0.0, LATENCY / 2)
    # The moment the pairs file grows: often before that request's ledger line is written.
    return "pairs", rng.randrange(1, 2 * remaining), 0.0


def ok_count(ws: Path) -> int:
    records, _ = read_jsonl(ws / "data" / "ledger.jsonl")
    return sum(1 for r in records if r.get("status") == "ok")


def kill_once(ws: Path, env: dict[str, str], rng: random.Random, requests: int, hooks: Hooks) -> tuple[str, str]:
    mode, n, delay = kill_point(rng, requests - ok_count(ws))
    ledger, pairs_dir = ws / "data" / "ledger.jsonl", ws / "data" / "pairs"
    if mode == "request":
        hooks.hold("generate-request", n)
        proc = start_cli(ARGS, ws, {**env, **hooks.env})
        kill_at(proc, hooks, "generate-request", n)
        return f"request:{n}", "killed"
    proc = start_cli(ARGS, ws, env)
    if mode == "end":
        ready = lambda: False  # noqa: E731
    elif mode == "ledger":
        start = ok_count(ws)
        ready = lambda: line_count(ledger) > 0 and ok_count(ws) >= start + n  # noqa: E731
    else:
        start = sum(line_count(p) for p in pairs_dir.glob("*.jsonl")) if pairs_dir.is_dir() else 0
        ready = lambda: pairs_dir.is_dir() and sum(line_count(p) for p in pairs_dir.glob("*.jsonl")) >= start + n  # noqa: E731
    what = kill_when(proc, ready, delay, timeout=300)
    if what == "finished":  # the point lay beyond the end: the run must have succeeded
        assert proc.result().returncode == 0, str(proc.result())
    return f"{mode}:{n}+{delay:.2f}s", what


def check_partial(ws: Path) -> None:
    """What a kill leaves: whole lines only (each record is one write), and no pair twice."""
    pairs_dir = ws / "data" / "pairs"
    pairs = [r for path in sorted(pairs_dir.glob("*.jsonl")) for r in jsonl_strict(path)] if pairs_dir.is_dir() else []
    doubled = [i for i, n in Counter(p["id"] for p in pairs).items() if n > 1]
    assert not doubled, f"pairs doubled after a kill: {doubled}"
    ledger = ws / "data" / "ledger.jsonl"
    if ledger.exists():
        jsonl_strict(ledger)


def check_same_as_baseline(ws: Path, baseline: dict[str, Any], points: list) -> None:
    snap = snapshot(ws)
    check_consistent(snap)
    assert pair_set(snap) == pair_set(baseline), f"after kills at {points} the pairs differ from an uninterrupted run"
    assert rejected_set(snap) == rejected_set(baseline), f"after kills at {points} the rejections differ"
    ok_keys = lambda s: {r["key"] for r in s["ledger"] if r.get("status") == "ok"}  # noqa: E731
    assert ok_keys(snap) == ok_keys(baseline)


@pytest.mark.parametrize("seed", CHAIN_SEEDS)
def test_killed_generate_resumes_to_the_same_pairs(seed, server, baseline, tmp_path):
    """A chain of runs, each SIGKILLed at a seeded point (each resuming the last), then one to the end.

    Each chain lands KILLS_PER_CHAIN kills inside running commands; a point that lies beyond the
    end of the work lets that run finish (it must then equal the baseline) and the chain goes on
    in a fresh workspace."""
    env = cli_env(server.url)
    rng = random.Random(seed)
    requests = sum(1 for r in baseline["ledger"] if r.get("status") == "ok")
    ws = make_workspace(tmp_path / "ws0")
    points: list = []
    landed = 0
    while landed < KILLS_PER_CHAIN:
        assert len(points) < 3 * KILLS_PER_CHAIN, f"kills should land inside the runs: {points}"
        points.append(kill_once(ws, env, rng, requests, Hooks(tmp_path / f"hooks-{len(points)}")))
        if points[-1][1] == "killed":
            landed += 1
            check_partial(ws)
        else:
            check_same_as_baseline(ws, baseline, points)
            ws = make_workspace(tmp_path / f"ws{len(points)}")

    result = run_cli(ARGS, ws, env)
    assert result.returncode == 0, f"{points}\n{result}"
    assert "Traceback" not in result.output
    check_same_as_baseline(ws, baseline, points)

    if seed == CHAIN_SEEDS[0]:  # one more run has nothing left to do and sends nothing
        again = run_cli(ARGS, ws, env)
        assert again.returncode == 0 and "0 sent" in again.stdout, str(again)
        assert pair_set(snapshot(ws)) == pair_set(baseline)


def test_kill_between_pairs_and_ledger_is_not_doubled(server, baseline, tmp_path):
    """The narrowest window, made certain: pairs written, the request not yet recorded as done."""
    ws = make_workspace(tmp_path / "ws")
    env = cli_env(server.url)
    assert run_cli(ARGS, ws, env).returncode == 0
    ledger = ws / "data" / "ledger.jsonl"
    lines = ledger.read_text(encoding="utf-8").splitlines(keepends=True)
    ok_at = [i for i, line in enumerate(lines) if json.loads(line).get("status") == "ok"]
    for i in (ok_at[-1], ok_at[len(ok_at) // 2]):  # forget two finished requests
        lines[i] = ""
    ledger.write_text("".join(lines), encoding="utf-8")

    result = run_cli(ARGS, ws, env)
    assert result.returncode == 0, str(result)
    assert "2 sent" in result.stdout, "exactly the two forgotten requests are sent again"
    snap = snapshot(ws)
    check_consistent(snap)
    assert pair_set(snap) == pair_set(baseline)


def test_torn_last_line_is_repaired(server, baseline, tmp_path):
    """A power cut (not a SIGKILL: each record is one write) can leave half a line at the end of a
    pairs file. Pairs are fsync'd before their ledger line is written, so the cut also loses that
    request's ledger line and everything after it; here the ledger's last line is torn too. The next
    run drops the torn lines and asks again for what they held."""
    ws = make_workspace(tmp_path / "ws")
    env = cli_env(server.url)
    assert run_cli(ARGS, ws, env).returncode == 0
    pairs_file = ws / "data" / "pairs" / "bread.jsonl"
    data = pairs_file.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    torn = json.loads(data[last_start:])
    pairs_file.write_bytes(data[: last_start + (len(data) - last_start) // 2])  # the last pair cut in half
    ledger = ws / "data" / "ledger.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if json.loads(line).get("status") == "ok"
               and json.loads(line)["batch"] == "bread" and json.loads(line)["round"] == torn["round"])
    ledger.write_bytes(b"".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2])

    result = run_cli(ARGS, ws, env)
    assert result.returncode == 0, str(result)
    snap = snapshot(ws, strict_ledger=False)  # pairs strict: every line whole; the ledger keeps its torn line
    check_consistent(snap)
    assert pair_set(snap) == pair_set(baseline)


# 2 batches of 8 pairs: 7 answers in rounds of 4 and 3, then 1 boundary pair: 3 waves of 2 requests
BATCH_ARGS = ["generate", "--batch-api", "--pairs", "16", "--pairs-per-round", "4"]


def batch_creations(server: FakeAnthropic) -> int:
    return sum(1 for r in server.requests if r["method"] == "POST" and r["path"] == "/v1/messages/batches")


def test_killed_batch_api_run_collects_its_message_batch(tmp_path):
    """--batch-api: a run killed while a message batch is processing leaves it in the ledger; the
    next run collects that batch instead of sending (and paying for) it again. The server ends a
    batch only after it has been polled `batch_polls` times, and the children are held as they are
    about to poll (the product's test hook), so each kill lands while its batch is processing."""
    srv = FakeAnthropic(seed=7, batch_polls=3, invented=0.15).start()
    try:
        env = cli_env(srv.url, MLX_PARTNER_GENERATE_POLL_INTERVAL="0.3")
        clean = make_workspace(tmp_path / "clean")
        assert run_cli(BATCH_ARGS, clean, env).returncode == 0
        waves = batch_creations(srv)
        assert waves == 3
        srv.reset_log()

        ws = make_workspace(tmp_path / "ws")
        ledger = ws / "data" / "ledger.jsonl"
        events = lambda kind: sum(1 for r in read_jsonl(ledger)[0] if r.get("event") == kind)  # noqa: E731
        hooks = Hooks(tmp_path / "hooks-1")
        hooks.hold("generate-batch-waiting", 1)  # the first batch sent and recorded, not yet polled
        proc = start_cli(BATCH_ARGS, ws, {**env, **hooks.env})
        kill_at(proc, hooks, "generate-batch-waiting")
        assert events("message_batch") == 1 and events("message_batch_done") == 0

        # Collects the first batch, then is held polling the second. The hold on that poll is set
        # while the run is parked just after sending the second batch (before its first poll), so
        # the poll count is settled when it is read: a hold set on a running process can be read
        # by a poll that has already counted itself, and then nothing ever arrives to kill at.
        hooks = Hooks(tmp_path / "hooks-2")
        hooks.hold("generate-batch-sent", 1)  # this run's first send is the second batch
        proc = start_cli(BATCH_ARGS, ws, {**env, **hooks.env})
        hooks.wait("generate-batch-sent", proc, timeout=120)
        assert events("message_batch") == 2 and events("message_batch_done") == 1
        polled = hooks.count("generate-batch-waiting")  # the first batch's polls, in this run
        hooks.hold("generate-batch-waiting", polled + 1)  # the second batch's first poll (it cannot end unpolled)
        hooks.release("generate-batch-sent")
        kill_at(proc, hooks, "generate-batch-waiting", polled + 1)
        assert events("message_batch_done") == 1, "killed while the second batch was processing"
        assert "Collecting message batch" in proc.result().stderr, str(proc.result())
        result = run_cli(BATCH_ARGS, ws, env)
        assert result.returncode == 0 and "Collecting message batch" in result.stderr, str(result)
        assert batch_creations(srv) == waves, "no message batch is sent twice"
        pairs = lambda w: {json.dumps(p, sort_keys=True) for f in sorted((w / "data" / "pairs").glob("*.jsonl")) for p in jsonl_strict(f)}  # noqa: E731
        assert pairs(ws) == pairs(clean)
        snap = snapshot(ws)
        check_consistent(snap)
    finally:
        srv.stop()


def test_batch_api_run_killed_while_collecting_resends_nothing(tmp_path):
    """The ledger as a kill leaves it in the middle of collecting a batch's results (made exact by
    cutting a finished run's ledger after the first result): one result recorded, one not."""
    srv = FakeAnthropic(seed=7, batch_polls=1).start()
    try:
        env = cli_env(srv.url, MLX_PARTNER_GENERATE_POLL_INTERVAL="0.3")
        ws = make_workspace(tmp_path / "ws")
        assert run_cli(BATCH_ARGS, ws, env).returncode == 0
        assert batch_creations(srv) == 3
        ledger = ws / "data" / "ledger.jsonl"
        lines = ledger.read_text(encoding="utf-8").splitlines(keepends=True)
        first_ok = next(i for i, line in enumerate(lines) if json.loads(line).get("status") == "ok")
        ledger.write_text("".join(lines[: first_ok + 1]), encoding="utf-8")

        result = run_cli(BATCH_ARGS, ws, env)
        assert result.returncode == 0, str(result)
        check_consistent(snapshot(ws))
        assert batch_creations(srv) == 5, "the first batch's other result is collected; only waves 2 and 3 are sent again"
    finally:
        srv.stop()


def test_ctrl_c_stops_promptly_and_the_next_run_finishes(server, baseline, tmp_path):
    """SIGINT (Ctrl-C) with requests in flight: out at once, exit 130, lock released.

    "At once" without a stopwatch: the server holds every reply for far longer than the test
    waits, so the run can only end as it does by not waiting for the requests it has in flight;
    the signal goes once both workers have a request on its way (the product's test hook)."""
    import signal

    ws = make_workspace(tmp_path / "ws")
    env = cli_env(server.url)
    hooks = Hooks(tmp_path / "hooks")
    answered = lambda: sum(1 for r in server.requests if r["path"] == "/v1/messages")  # noqa: E731  (logged as answered)
    server.configure(latency=600.0)
    try:
        before = answered()
        proc = start_cli(ARGS, ws, {**env, **hooks.env})
        hooks.wait("generate-request", proc, arrivals=2, timeout=120)  # --concurrency 2: both in flight
        lock = ws / ".mlx-partner.lock"
        assert lock.exists()
        os.kill(proc.pid, signal.SIGINT)
        result = proc.wait(timeout=120)
        assert answered() == before, "it ended without waiting for any reply"
    finally:
        server.configure(latency=LATENCY)
    assert result.returncode == 130 and "Stopped." in result.stderr and "Traceback" not in result.output, str(result)
    assert not lock.exists()
    check_partial(ws)
    final = run_cli(ARGS, ws, env)
    assert final.returncode == 0, str(final)
    check_same_as_baseline(ws, baseline, ["SIGINT"])
