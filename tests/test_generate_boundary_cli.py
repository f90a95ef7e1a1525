"""`mlx-partner generate`'s boundary pairs and probes, end to end against the local Messages API
server (tests/fake_anthropic.py, tests/fake_boundary.py): the share, the checks every boundary
pair that reaches data/pairs/ passes, bad boundary pairs and what a re-run asks again, the probes.

    python -m pytest tests/test_generate_boundary_cli.py -q
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from test_generate_cli import api_calls, billed, generate, ledger, messages_sent, pairs

from mlx_partner.decline import opens_with_decline
from mlx_partner.generate.boundary import absence_check, answerable_questions
from mlx_partner.generate.probes import PROBES_VERSION
from mlx_partner.grounding import QuestionIndex, check_pair
from mlx_partner.sources.documents import load_documents
from mlx_partner.workspace import read_jsonl

PROBE_KEYS = {"version", "id", "question", "coverage", "threshold", "model", "prompt_version", "created"}


def rejected(ws: Path) -> list[dict]:
    path = ws / "data" / "rejected.jsonl"
    return read_jsonl(path)[0] if path.exists() else []


def probes(ws: Path) -> list[dict]:
    path = ws / "data" / "probes.jsonl"
    return read_jsonl(path)[0] if path.exists() else []


def round_text(message: dict) -> str:
    return message["body"]["messages"][0]["content"][1]["text"]


def is_boundary_round(message: dict) -> bool:
    return "for this batch: boundary pairs." in round_text(message)


def is_probe_request(message: dict) -> bool:
    return "Probe questions to write:" in round_text(message)


# --- done when: boundary pairs at the configured share, every one passing the checks ------------


def test_boundary_pairs_at_the_configured_share_and_every_one_passes_the_checks(ws, api):
    result = generate(ws)
    assert result.exit_code == 0, result.output
    got = pairs(ws)
    boundary = [p for p in got if p["type"] == "boundary"]
    assert len(boundary) == 8 and abs(len(boundary) / len(got) - 0.12) <= 0.01  # 8 of 64: 12.5%
    calibration = json.loads((ws / "data" / "boundary.json").read_text())
    assert calibration["version"] == 1 and calibration["method"] == "p10" and calibration["questions"] == 56
    threshold = calibration["threshold"]
    assert f"absence threshold {threshold:.2f} (calibrated: the p10 coverage of 56 answered questions" in result.stdout
    assert "Boundary pairs: 8 accepted this run (12% of the pairs accepted)" in result.stdout

    # every boundary pair in data/pairs/, checked again from scratch against the whole corpus
    docs, _ = load_documents(ws / "sources")
    texts = {d.id: d.text for d in docs}
    check = absence_check(docs, answerable_questions(got))
    assert check.threshold == threshold
    last_round = {b: max(p["round"] for p in got if p["batch"] == b) for b in {p["batch"] for p in got}}
    for p in boundary:
        assert check_pair(p, texts) is None, p  # its pointer quotes are verbatim, or it has none
        assert opens_with_decline(p["answer"]), p["answer"]
        coverage, _ = check.score(p["question"])
        assert p["coverage"] == coverage < p["threshold"] == threshold
        assert p["round"] == last_round[p["batch"]]  # after the batch's other rounds
    assert any(p["quotes"] for p in boundary) and any(not p["quotes"] for p in boundary)

    # each boundary round listed the questions its batch was asked before it
    for message in messages_sent(api):
        if is_boundary_round(message):
            text = round_text(message)
            batch = message["body"]["messages"][0]["content"][0]["text"].split("theme: ")[1].split(")")[0]
            asked = [p["question"] for p in got if p["batch"] == batch and p["type"] != "boundary"]
            assert asked and all(f"- {q}" in text for q in asked)
    assert Counter(r.get("boundary") for r in ledger(ws)) == {False: 8, True: 4}


def test_bad_boundary_pairs_are_each_rejected_with_their_reason(ws, api):
    api.configure(seed=5, boundary_answered=0.2, boundary_position=0.2, boundary_invented=0.2)
    result = generate(ws, "--pairs", "160")
    assert "Traceback" not in result.output
    # a pair is its question and answer: a round asked again may bring a bad pair's question back, good
    bad = [p for p in api.produced if p.fault and p.fault.startswith("boundary-")]
    faults = Counter(p.fault for p in bad)
    assert faults["boundary-answered"] and faults["boundary-position"] and faults["boundary-invented"], faults
    expected = {"boundary-answered": "answerable", "boundary-position": "not-a-decline", "boundary-invented": "invented-quote"}
    reasons = {(r["question"], r["answer"]): r for r in rejected(ws) if r.get("type") == "boundary"}
    for p in bad:
        assert reasons[(p.question, p.answer)]["reason"] == expected[p.fault], p
    assert "her writing answers it: coverage" in next(r["detail"] for r in reasons.values() if r["reason"] == "answerable")
    kept = {(p["question"], p["answer"]) for p in pairs(ws) if p["type"] == "boundary"}
    assert kept and not kept & {(p.question, p.answer) for p in bad}, "a bad boundary pair reached data/pairs/"
    assert kept <= {(p.question, p.answer) for p in api.produced if p.fault is None}


# --- bad input: a generator that will not, or cannot, write boundary pairs ---------------------


def test_a_generator_that_answers_instead_of_declining_fails_the_boundary_round_alone(ws, api):
    api.configure(boundary_position=1.0)
    result = generate(ws)
    assert result.exit_code == 1 and "Traceback" not in result.output
    got = pairs(ws)
    assert len(got) == 56 and not any(p["type"] == "boundary" for p in got)  # the batches' other pairs are kept
    assert Counter(r["reason"] for r in rejected(ws)) == {"not-a-decline": 24}  # 2 a round, asked 3 times
    for batch in ("bread", "notebooks", "repair", "streets"):
        line = next(x for x in result.stdout.splitlines() if x.strip().startswith(batch))
        assert "boundary round FAILED: no boundary pair passed the checks (2 not-a-decline), after 3 tries" in line
    assert "Boundary rounds failed, asked again on the next run: bread, notebooks, repair, streets." in result.stdout
    assert "Failed batches" not in result.stdout
    assert Counter(r["status"] for r in ledger(ws) if r["boundary"]) == {"invalid": 8, "failed": 4}
    re_asked = [m for m in messages_sent(api) if is_boundary_round(m) and "could not be used (no boundary pair" in round_text(m)]
    assert len(re_asked) == 8
    # her answered documents count as generated; the probes did not wait for the boundary rounds
    assert len(json.loads((ws / "data" / "sources.json").read_text())) == 12 and len(probes(ws)) == 16

    api.configure(boundary_position=0.0)
    api.reset_log()
    again = generate(ws)
    assert again.exit_code == 0, again.output
    sent = messages_sent(api)
    assert len(sent) == 4 and all(is_boundary_round(m) for m in sent)  # that round only, in each batch
    assert Counter(p["type"] for p in pairs(ws))["boundary"] == 8 and len(pairs(ws)) == 64


def test_a_generator_that_writes_no_boundary_pairs_fails_the_round_and_a_rerun_asks_again(ws, api):
    api.configure(boundary_none=True)
    result = generate(ws)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "boundary round FAILED: the generator wrote no boundary pairs (an empty list), after 3 tries" in result.stdout
    assert len(pairs(ws)) == 56
    api.configure(boundary_none=False)
    api.reset_log()
    assert generate(ws).exit_code == 0
    assert [is_boundary_round(m) for m in messages_sent(api)] == [True] * 4


def test_a_corpus_so_broad_no_boundary_question_passes_says_so_in_one_line(ws, api):
    api.configure(boundary_answered=1.0)
    result = generate(ws)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [x for x in result.stdout.splitlines() if x.startswith("No boundary question passed the absence check")]
    assert lines == [lines[0]] and "all 24 candidates tried" in lines[0] and "--mix" in lines[0]
    assert Counter(r["reason"] for r in rejected(ws)) == {"answerable": 24}


# --- near-domain probes for eval --------------------------------------------------------------


def test_probes_are_written_once_checked_absent_and_never_trained_on(ws, api):
    assert generate(ws).exit_code == 0
    written = probes(ws)
    assert len(written) == 16 and all(set(p) == PROBE_KEYS and p["version"] == PROBES_VERSION for p in written)
    assert all(p["coverage"] < p["threshold"] for p in written)
    assert len({p["id"] for p in written}) == 16
    index = QuestionIndex()
    for p in pairs(ws):
        index.add(p["question"])
    assert not any(index.find(p["question"]) for p in written), "a probe repeats a training question"
    [event] = [r for r in billed(ws) if r.get("event") == "probes"]
    assert event["result"] == "ok" and event["written"] == 16 and event["tried"] == 24 and event["cost_usd"] > 0

    api.reset_log()
    assert generate(ws).exit_code == 0 and messages_sent(api) == []  # kept across runs
    (ws / "data" / "probes.jsonl").unlink()
    result = generate(ws)
    assert result.exit_code == 0 and "Probes: wrote 16 near-domain probe questions" in result.stdout
    assert [is_probe_request(m) for m in messages_sent(api)] == [True]  # missing: written again, alone
    assert [p["question"] for p in probes(ws)] == [p["question"] for p in written]
    (ws / "data" / "probes.jsonl").unlink()
    api.reset_log()
    assert generate(ws, "--probes", "0").exit_code == 0 and messages_sent(api) == [] and not probes(ws)


def test_a_failed_probe_request_is_asked_again_alone(ws, api):
    api.configure(probe_none=True)
    result = generate(ws)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Probe request FAILED: no usable reply after 3 tries (the reply has an empty questions list)" in result.stdout
    assert len(pairs(ws)) == 64 and not probes(ws)
    api.configure(probe_none=False, probe_answered=0.5)
    api.reset_log()
    result = generate(ws)
    assert result.exit_code == 0, result.output
    assert [is_probe_request(m) for m in messages_sent(api)] == [True]
    answered = {q for q, fault in api.probes if fault == "probe-answered"}
    assert answered and not answered & {p["question"] for p in probes(ws)}
    assert {r["reason"] for r in rejected(ws) if r.get("type") == "probe"} == {"answerable"}
    assert len(probes(ws)) == 16 and "rejected: answerable" in result.stdout


def test_probes_wait_while_a_batch_fails(ws, api):
    api.configure(malformed=1.0)
    result = generate(ws)
    assert result.exit_code == 1
    assert "Probes wait until every batch is through" in result.stdout
    assert not any(is_probe_request(m) for m in messages_sent(api)) and not probes(ws)


def test_a_boundary_question_that_repeats_a_probe_is_held_out(ws, api, tmp_path):
    first = tmp_path / "first"
    shutil.copytree(ws, first)
    assert generate(first).exit_code == 0
    question = next(p["question"] for p in pairs(first) if p["type"] == "boundary")
    (ws / "data").mkdir()
    line = {"version": 1, "id": "0" * 16, "question": question, "coverage": 0.1, "threshold": 0.3, "model": "m",
            "prompt_version": "gen-2", "created": "2026-12-01T00:00:00Z"}
    (ws / "data" / "probes.jsonl").write_text(json.dumps(line) + "\n")
    assert generate(ws).exit_code == 0
    assert question not in {p["question"] for p in pairs(ws)}
    assert [r["reason"] for r in rejected(ws) if r["question"] == question] == ["held-out"]
    assert probes(ws) == [line]  # kept: written once


# --- plans, upgrades ---------------------------------------------------------------------------


def test_dry_run_without_a_boundary_share(ws, api):
    result = generate(ws, "--dry-run", "--mix", "genuine=0.5,scenario=0.25,pushback=0.25")
    assert result.exit_code == 0 and "Boundary rounds: none (the mix gives boundary pairs no share)." in result.stdout
    assert "Probe request: 1" in result.stdout and api_calls(api) == []


def test_a_workspace_generated_before_boundary_pairs_is_asked_for_boundary_rounds_only(ws, api):
    assert generate(ws, "--mix", "genuine=0.5,scenario=0.25,pushback=0.25", "--probes", "0").exit_code == 0
    assert len(pairs(ws)) == 64
    # as the previous prompt version left it: its pairs and its ledger's keys say gen-1
    for path in (ws / "data" / "pairs").glob("*.jsonl"):
        path.write_text(path.read_text().replace('"prompt_version": "gen-2"', '"prompt_version": "gen-1"'))
    ledger_path = ws / "data" / "ledger.jsonl"
    ledger_path.write_text(ledger_path.read_text().replace("/gen-2", "/gen-1"))
    plan = generate(ws, "--dry-run").stdout
    assert "5 of 5 requests to send" in plan and "Boundary rounds: 4 (4 to send)" in plan
    api.reset_log()
    result = generate(ws)
    assert result.exit_code == 0, result.output
    sent = messages_sent(api)
    assert sum(map(is_boundary_round, sent)) == 4 and sum(map(is_probe_request, sent)) == 1 and len(sent) == 5
    assert Counter(p["type"] for p in pairs(ws))["boundary"] == 8 and len(pairs(ws)) == 72
