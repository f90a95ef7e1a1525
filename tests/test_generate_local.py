"""`generate` against a local endpoint (llama-server, Ollama) on 127.0.0.1, no key: the fake
Messages API server in "local" mode (tests/fake_anthropic.py: /props, no prompt cache, no Message
Batches, a context window, tools refused or malformed), and the pure pieces of generate/local.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_generate_cli import KEY, REPO, api_calls, generate, ledger, pairs

from mlx_partner.config import GenerateSettings, SourcesSettings
from mlx_partner.errors import GenerationError
from mlx_partner.generate.local import (
    LOCAL_TIMEOUT,
    Endpoint,
    fit_to_context,
    is_loopback,
    local_defaults,
    ollama_context,
    time_estimate,
)
from mlx_partner.grounding import check_pair
from mlx_partner.sources.documents import load_documents

__all__ = ["REPO"]


@pytest.fixture
def local(fake_anthropic, monkeypatch):
    """A llama-server-like endpoint on loopback and no credential at all, as a user would have it."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.url)
    monkeypatch.setenv("MLX_PARTNER_GENERATE_MAX_RETRIES", "1")
    monkeypatch.setenv("MLX_PARTNER_GENERATE_POLL_INTERVAL", "0.01")
    return fake_anthropic.configure(local=True)


@pytest.fixture
def ws(tmp_path) -> Path:
    """Two themes, two documents each, from the example workspace."""
    root = tmp_path / "ws"
    for rel in ("bread/the-ugly-loaf.md", "bread/one-change-per-loaf.md", "repair/three-tools.md",
                "repair/glue-is-a-confession.md"):
        (root / "sources" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "sources" / rel).write_text((REPO / "sources" / rel).read_text())
    (root / "profile.md").write_text((REPO / "profile.md").read_text())
    return root


def every_file(ws: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (ws / "data").rglob("*") if p.is_file())


@pytest.mark.parametrize("fault, why", [("no_tools", "does not accept tools"), ("loose_tools", "tool call was malformed")])
def test_local_run_with_no_key_goes_through_the_json_fallback_and_prices_nothing(ws, local, fault, why):
    local.configure(**{fault: True})
    result = generate(ws, "--pairs", "16")
    assert result.exit_code == 0, result.output
    assert "No API key needed" in result.stderr and why in result.stderr
    assert "concurrency 1 (local default)" in result.stderr and "Context window 8192 tokens (from the server (/props))" in result.stderr
    assert "Cost: local, $0." in result.stdout and "$" not in result.stdout.replace("local, $0", "")
    lines = ledger(ws)
    assert lines and all(r["cost_usd"] == 0 and r["generator"] == local.url for r in lines)
    assert not any(k.startswith("cache_") for r in lines for k in r), "cache tokens a local server never sends"
    assert {r["mode"] for r in lines if r["status"] == "ok"} == {"json"}  # remembered for the run
    tool_requests = [r for r in api_calls(local) if r["body"].get("tools")]
    assert len(tool_requests) == 1, "one refused or malformed tool reply, then JSON in text for the run"
    texts = {d.id: d.text for d in load_documents(ws / "sources")[0]}
    accepted = pairs(ws)
    assert len(accepted) >= 8
    for p in accepted:  # every accepted pair passes the checks, rechecked from scratch
        assert check_pair(p, texts) is None, p
    assert all(r.get("seconds") is not None for r in lines if r["status"] == "ok")
    assert "no-key-needed" not in every_file(ws)  # the placeholder is never written


def test_batch_api_is_refused_in_one_line_at_a_local_endpoint(ws, local):
    result = generate(ws, "--batch-api")
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "--batch-api needs the Message Batches API" in result.output
    assert api_calls(local) == []


def test_dry_run_estimates_time_not_price_assumed_then_measured(ws, local):
    result = generate(ws, "--pairs", "16", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "Estimated time:" in result.stdout and "assumed" in result.stdout and "Cost: local, $0." in result.stdout
    assert "Estimated cost" not in result.stdout and "cache" not in result.stdout
    assert api_calls(local) == []
    assert generate(ws, "--pairs", "16", "--output", "json").exit_code == 0
    again = generate(ws, "--pairs", "16", "--dry-run", "--force")
    assert "measured on earlier requests" in again.stdout, again.stdout


def test_batches_are_sized_to_the_servers_context_window(ws, local):
    local.configure(n_ctx=6144)
    result = generate(ws, "--pairs", "16", "--output", "json")
    assert result.exit_code == 0, result.output
    assert "Context window 6144 tokens" in result.stderr
    sent = [r for r in api_calls(local) if r["path"] == "/v1/messages"]
    assert sent and all(r["status"] == 200 for r in sent), [r["status"] for r in sent]
    assert all(r["body"]["max_tokens"] == 1536 for r in sent)
    batches = {r["batch"] for r in ledger(ws)}
    assert len(batches) > 2, "two themes of ~2,300 words do not fit one 6k request each"
    # The same window given by flag, and a window too small for the instructions alone
    assert "Context window 7000 tokens (from [generate] context_tokens" in generate(ws, "--context-tokens", "7000", "--dry-run").stdout
    small = generate(ws, "--context-tokens", "2048", "--dry-run")
    assert small.exit_code == 1 and "context window (2048 tokens" in small.output and "-c 8192" in small.output


def test_a_batch_whose_rounds_keep_failing_stops_after_two_rounds(ws, local):
    local.configure(invented=1.0)  # every answer quotes a sentence no document holds
    result = generate(ws, "--pairs", "16", "--pairs-per-round", "2", "--output", "json", "--mix", "genuine=1")
    assert result.exit_code == 1
    assert "stopped after 2 rounds in a row with no pair accepted (4 invented-quote)" in result.stdout, result.stdout
    per_batch = {r["batch"] for r in ledger(ws)}
    assert len(ledger(ws)) == 2 * len(per_batch), "two rounds a batch, then it stops"
    assert pairs(ws) == [] and "100%" in result.stdout  # the rejection rate, per batch
    rerun = generate(ws, "--pairs", "16", "--pairs-per-round", "2", "--output", "json", "--mix", "genuine=1")
    assert rerun.exit_code == 1 and len(ledger(ws)) == 4 * len(per_batch)  # bounded again, not endless


def test_a_loopback_proxy_that_does_not_say_what_it_is_keeps_cloud_behaviour_but_needs_no_key(ws, local):
    local.configure(local=False)
    result = generate(ws, "--pairs", "8", "--probes", "0")
    assert result.exit_code == 0, result.output
    assert "No API key needed" in result.stderr and "Estimated cost: $" in result.stdout
    assert all("cache_read_input_tokens" in r for r in ledger(ws))


def test_a_key_set_for_a_loopback_endpoint_is_used_and_never_written(ws, local, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    local.configure(api_key=KEY)
    result = generate(ws, "--pairs", "8", "--probes", "0", "--output", "json")
    assert result.exit_code == 0, result.output
    assert "No API key needed" not in result.stderr and KEY not in every_file(ws)


# --- the pure pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize("url, loop", [
    ("http://127.0.0.1:11434", True), ("http://localhost:8080", True), ("http://[::1]:8080", True),
    ("http://127.0.0.2", True), ("https://api.anthropic.com", False), ("http://10.0.0.5:8080", False),
    ("http://localhost.example.com", False),
])
def test_loopback(url, loop):
    assert is_loopback(url) is loop


@pytest.mark.parametrize("show, n", [
    ({"parameters": "num_ctx 16384\nstop \"<|im_end|>\""}, 16384),
    ({"parameters": "", "model_info": {"llama.context_length": 131072}}, 4096),
    ({"model_info": {"qwen2.context_length": 2048}}, 2048),
    (None, 0),
])
def test_ollama_context(show, n):
    assert ollama_context(show) == n


def test_local_defaults_yield_to_settings_you_set():
    endpoint = Endpoint("http://127.0.0.1:8080", loopback=True, local=True, server="llama-server")
    chosen, lines = local_defaults(GenerateSettings(concurrency=2), endpoint)
    assert (chosen.concurrency, chosen.timeout) == (2, LOCAL_TIMEOUT)
    assert "concurrency 2," in lines[0] and "timeout 900 (local default)" in lines[0]
    assert local_defaults(GenerateSettings(), Endpoint("https://api.anthropic.com"))[0] == GenerateSettings()


def test_fit_to_context_fits_documents_prompt_and_reply():
    endpoint = Endpoint("http://127.0.0.1:8080", True, True, "llama-server", 8192, "the server (/props)")
    settings, sources, _ = fit_to_context(endpoint, GenerateSettings(), SourcesSettings(), "A short profile.")
    assert settings.max_tokens == 2048 and 2000 < sources.token_budget < 8192 - 2048
    with pytest.raises(GenerationError, match="too small"):
        fit_to_context(Endpoint("u", True, True, "", 1500, "x"), GenerateSettings(), SourcesSettings(), "")


def test_time_estimate_says_how():
    seconds, how = time_estimate(2000, 200)
    assert seconds == pytest.approx(20.0) and "assumed" in how
    assert time_estimate(0, 200, measured=10.0) == (20.0, time_estimate(0, 200, measured=10.0)[1])
    assert json.dumps(time_estimate(1, 1))  # plain values
