"""`generate --generator mlx:<model>`: the in-process MLX generator (mlx_partner/generate/local_mlx.py).

The tiny random model writes junk: every request is rejected with its reason, the run ends with
one line saying nothing was accepted, exit code 1, and nothing in data/pairs/. A canned good reply
(the generation call monkeypatched, the parser and the checks not) is accepted, and a second run
sends nothing. No API key is set anywhere here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.errors import ConfigError, ModelError
from mlx_partner.generate import local_mlx
from mlx_partner.generate.local_mlx import (
    Generation,
    JsonEnd,
    check_fits,
    mlx_model_ref,
    prompt_messages,
)
from mlx_partner.generate.requests import TOOL_NAME, Round, build_request
from mlx_partner.sources.documents import load_documents
from mlx_partner.workspace import read_jsonl

REPO = Path(__file__).resolve().parent.parent
DOC = """# Slow bread

Sourdough teaches patience more than any recipe can. A starter is a small community of yeasts \
and bacteria that you keep alive by feeding it flour and water every day.

I bake with a long, cold fermentation because the flavour deepens overnight. Rushing the dough \
gives you bread that looks right and tastes of nothing.
"""
QUOTES = [
    "Sourdough teaches patience more than any recipe can.",
    "I bake with a long, cold fermentation because the flavour deepens overnight.",
]
ANSWERS = [
    ("genuine", "What does sourdough teach you?",
     "Sourdough teaches patience more than any recipe can; the starter needs feeding every day."),
    ("scenario", "A friend wants bread by this evening. What would you tell them?",
     "I would tell them to wait: I bake with a long, cold fermentation because the flavour deepens overnight."),
]


@pytest.fixture
def ws(tmp_path) -> Path:
    """One document, one batch; no boundary round and no probes, so every request is an answer round."""
    root = tmp_path / "ws"
    (root / "sources").mkdir(parents=True)
    (root / "sources" / "bread.md").write_text(DOC)
    shutil.copy(REPO / "profile.md", root / "profile.md")
    (root / "partner.toml").write_text(
        '[generate]\nprobes = 0\nmax_tokens = 256\nvalidation_retries = 1\ncontext_tokens = 8192\n'
        'mix = {genuine = 0.5, scenario = 0.5, pushback = 0.0, boundary = 0.0}\n'
    )
    return root


def generate(ws: Path, model: Path, *args: str):
    return CliRunner().invoke(cli, ["-w", str(ws), "generate", "--generator", f"mlx:{model}", "--pairs", "2", *args],
                              catch_exceptions=False)


def canned(model, tokenizer, prompt, max_tokens, on_token=lambda n, tps: None) -> Generation:
    pairs = [{"type": kind, "question": q, "answer": a, "sources": ["bread.md"],
              "quotes": [{"source": "bread.md", "text": quote}]} for (kind, q, a), quote in zip(ANSWERS, QUOTES, strict=True)]
    on_token(40, 120.0)
    return Generation(json.dumps({"pairs": pairs}), "end_turn", len(prompt), 80, 0.2, 0.5)


def test_tiny_model_writes_junk_every_request_rejected(ws, tiny_model):
    result = generate(ws, tiny_model)
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("No pair accepted: 2 requests to mlx:"), last
    assert "nothing was added to data/pairs/" in last
    assert not any((ws / "data" / "pairs").glob("*.jsonl")) or all(
        not read_jsonl(p)[0] for p in (ws / "data" / "pairs").glob("*.jsonl"))
    ledger, _ = read_jsonl(ws / "data" / "ledger.jsonl")
    requests = [r for r in ledger if "key" in r]
    assert len(requests) == 2  # the round and its one re-ask (validation_retries = 1): bounded
    for r in requests:
        assert r["model"] == f"mlx:{tiny_model.resolve()}" and r["generator"] == r["model"]
        assert r["status"] in ("invalid", "failed") and r["error"]  # each with its reason
        assert r["cost_usd"] == 0 and r["output_tokens"] > 0
    rejected, _ = read_jsonl(ws / "data" / "rejected.jsonl") if (ws / "data" / "rejected.jsonl").exists() else ([], [])
    assert all(r["reason"] for r in rejected)
    assert "sk-" not in (ws / "data" / "ledger.jsonl").read_text()


def test_canned_good_reply_is_accepted_then_resumed(ws, tiny_model, monkeypatch):
    monkeypatch.setattr(local_mlx, "generate_text", canned)
    result = generate(ws, tiny_model)
    assert result.exit_code == 0, result.output
    assert "Accepted 2 pairs" in result.output and "Cost: local, $0." in result.output
    pairs, _ = read_jsonl(ws / "data" / "pairs" / f"{next((ws / 'data' / 'pairs').glob('*.jsonl')).stem}.jsonl")
    assert [p["question"] for p in pairs] == [q for _, q, _ in ANSWERS]
    assert {p["model"] for p in pairs} == {f"mlx:{tiny_model.resolve()}"}

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished request was sent again")

    monkeypatch.setattr(local_mlx, "generate_text", must_not_run)
    again = generate(ws, tiny_model)
    assert again.exit_code == 0, again.output
    assert "Requests: 0 sent, 1 already done earlier" in again.output


def test_dry_run_estimates_time_not_price(ws, tiny_model):
    result = generate(ws, tiny_model, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "Estimated time:" in result.output and "assumed" in result.output
    assert "Estimated cost" not in result.output
    assert not (ws / "data" / "ledger.jsonl").exists()


def test_batch_api_and_bad_generator_refused(ws, tiny_model):
    result = CliRunner().invoke(cli, ["-w", str(ws), "generate", "--generator", f"mlx:{tiny_model}", "--batch-api"])
    assert result.exit_code == 1 and "--batch-api" in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="mlx:<model>"):
        mlx_model_ref("ollama")
    assert mlx_model_ref("anthropic") is None and mlx_model_ref("mlx: ./m ") == "./m"


def test_too_big_a_model_is_refused_with_the_size_that_fits():
    config = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
              "num_attention_heads": 32, "num_key_value_heads": 8, "torch_dtype": "bfloat16"}
    with pytest.raises(ModelError) as err:
        check_fits("llama-8b", config, 16384, on_cpu=True, memory_gb=8)
    message = str(err.value)
    assert "needs about" in message and "choose a model of at most about" in message and message.count(". ") == 0
    check_fits("llama-8b", config, 16384, on_cpu=False, memory_gb=64)  # bfloat16 on a 64 GB Mac: fits


def test_prompt_asks_for_the_tool_json_in_text(ws):
    docs, _ = load_documents(ws / "sources")
    from mlx_partner.sources.batches import plan_batches

    batch = plan_batches(docs, 12000, 0, 0)[0]
    rnd = Round(index=0, of=1, kinds=(("genuine", 2),), batch_id=batch.id, batch_sha=batch.sha256)
    params = build_request(rnd, batch, {d.id: d for d in docs}, "A baker.", [], model="m", max_tokens=256, mode="tool")
    system, user = prompt_messages(params)
    assert "careful transcriber" in system and "A baker." in system
    assert "Sourdough teaches patience" in user and f"instead of calling {TOOL_NAME}" in user
    assert '"pairs"' in user and '"quotes"' in user  # the schema itself


@pytest.mark.parametrize(("chunks", "ends_at"), [
    (['{"pairs": [', '{"q": "a } b"}', "]}", " trailing"], 2),
    (["Sure! ", '{"a": {"b": 1}', "}"], 2),
    (['{"a": "\\"}"', "}"], 1),
    (["no json here"], None),
])
def test_json_end(chunks, ends_at):
    end = JsonEnd()
    at = next((i for i, c in enumerate(chunks) if end.feed(c)), None)
    assert at == ends_at


def test_the_plan_names_the_in_process_model_once(ws, tiny_model):
    result = generate(ws, tiny_model, "--dry-run")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("Plan for "))
    name = f"mlx:{tiny_model.resolve()}"
    assert header == f"Plan for {name} (mlx-lm in this process, local, $0):", header


# --- a boundary round through mlx: -------------------------------------------------------------

# One pair of each verdict the API path gives a boundary round (tests/test_generate_boundary.py):
# a decline pointing to a verbatim sentence; a question her document answers; a position taken.
BOUNDARY = [
    ({"type": "boundary", "question": "Have you written about Venetian glassblowing?",
      "answer": "I haven't written about Venetian glassblowing. What I did write is that sourdough teaches "
                "patience more than any recipe can.",
      "sources": ["bread.md"], "quotes": [{"source": "bread.md", "text": QUOTES[0]}]}, None),
    ({"type": "boundary", "question": "Why do you bake with a long, cold fermentation overnight?",
      "answer": "I haven't written about that.", "sources": [], "quotes": []}, "answerable"),
    ({"type": "boundary", "question": "What do you make of baroque falconry?",
      "answer": "Baroque falconry is a fine pastime for a patient baker.", "sources": [], "quotes": []},
     "not-a-decline"),
]


def test_a_boundary_round_through_mlx_is_checked_as_the_api_path_checks_it(ws, tiny_model, monkeypatch):
    (ws / "partner.toml").write_text((ws / "partner.toml").read_text().replace(
        "pushback = 0.0, boundary = 0.0", "pushback = 0.0, boundary = 1.5"))  # 5 pairs: 2 answers, 3 boundary
    asked: list[str] = []

    def by_round(model, tokenizer, prompt, max_tokens, on_token=lambda n, tps: None) -> Generation:
        text = tokenizer.decode(list(prompt))
        asked.append(text)
        if "This round is for boundary pairs" not in text:
            return canned(model, tokenizer, prompt, max_tokens, on_token)
        return Generation(json.dumps({"pairs": [raw for raw, _ in BOUNDARY]}), "end_turn", len(prompt), 80, 0.2, 0.5)

    monkeypatch.setattr(local_mlx, "generate_text", by_round)
    result = CliRunner().invoke(cli, ["-w", str(ws), "generate", "--generator", f"mlx:{tiny_model}", "--pairs", "5"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(asked) == 2 and "Pairs to write: 3 (boundary: 3)" in asked[1]
    assert "Questions already asked" in asked[1] and ANSWERS[0][1] in asked[1]  # the round lists what was asked

    # The verdicts the API path's review gives the same pairs (generate/replies.py, as in
    # tests/test_generate_boundary.py), the absence check calibrated on this run's answers.
    from mlx_partner.generate.boundary import absence_check
    from mlx_partner.generate.replies import Context, review_pairs
    from mlx_partner.generate.requests import normalise_mix, plan_rounds
    from mlx_partner.grounding import QuestionIndex
    from mlx_partner.sources.batches import plan_batches

    documents = load_documents(ws / "sources")[0]
    [batch] = plan_batches(documents, 100_000)
    pairs, _ = read_jsonl(next((ws / "data" / "pairs").glob("*.jsonl")))
    seen = QuestionIndex()
    for p in pairs:
        if p["type"] != "boundary":
            seen.add(p["question"], batch.id)
    check = absence_check(documents, [q for _, q, _ in ANSWERS])
    boundary_round = plan_rounds(batch, 3, 8, normalise_mix({"boundary": 1.0}))[0]
    expected = review_pairs([raw for raw, _ in BOUNDARY], batch, boundary_round, Context("m", {}), seen, absence=check)
    assert [why.code if why else None for _, why in expected] == [code for _, code in BOUNDARY]

    ledger, _ = read_jsonl(ws / "data" / "ledger.jsonl")
    [line] = [r for r in ledger if r.get("boundary")]
    assert line["status"] == "ok" and line["cost_usd"] == 0 and line["generator"] == f"mlx:{tiny_model.resolve()}"
    accepted = [p for p in pairs if p["type"] == "boundary"]
    assert [p["question"] for p in accepted] == [BOUNDARY[0][0]["question"]]
    assert accepted[0]["coverage"] < accepted[0]["threshold"] == check.threshold
    rejected, _ = read_jsonl(ws / "data" / "rejected.jsonl")
    got = {r["question"]: r["reason"] for r in rejected if r.get("round") == line["round"]}
    assert got == {raw["question"]: code for raw, code in BOUNDARY if code}
    assert json.loads((ws / "data" / "boundary.json").read_text())["threshold"] == check.threshold
