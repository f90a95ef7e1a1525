"""`[generate] max_tokens` against the chosen model's output limit (generate/requests.py OUTPUT_LIMITS).

A Claude model whose limit is below the configured max_tokens (claude-3-haiku: 4096, the default
8192) gets its limit, and the plan says so in one line; a name the table does not know (a local
server's, a future model's) keeps the configured value. Driven through the real CLI against the
strict fake API (tests/fake_anthropic.py), which refuses a max_tokens over the real limit (400).
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.config import GenerateSettings, SourcesSettings
from mlx_partner.generate.plan import configure_endpoint, fit_to_model
from mlx_partner.generate.requests import output_limit
from mlx_partner.workspace import Workspace

HAIKU_3 = "claude-3-haiku-20240307"
LINE = "max_tokens 8192 is above claude-3-haiku's 4096 output limit: using 4096"


def generate(ws, *args: str):
    return CliRunner().invoke(cli, ["-w", str(ws), "generate", *args], catch_exceptions=False)


def sent_max_tokens(server) -> set[int]:
    return {r["body"]["max_tokens"] for r in server.requests if r["path"] == "/v1/messages"}


@pytest.mark.parametrize(
    "model, known",
    [
        (HAIKU_3, ("claude-3-haiku", 4096)),
        ("claude-3-opus-20240229", ("claude-3-opus", 4096)),
        ("claude-3-sonnet-20240229", ("claude-3-sonnet", 4096)),
        ("claude-3-5-haiku-20241022", ("claude-3-5", 8192)),
        ("claude-3-5-sonnet-latest", ("claude-3-5", 8192)),
        ("claude-opus-4-1-20250805", ("claude-opus-4-1", 32000)),
        ("claude-opus-4-20250514", ("claude-opus-4-2025", 32000)),
        ("CLAUDE-3-HAIKU-20240307", ("claude-3-haiku", 4096)),  # ids are lower case; a typed name may not be
        ("claude-sonnet-5-5", None),  # limits above generate's 21000 ceiling: never the bound
        ("claude-3-7-sonnet-latest", None),
        ("glm-4.6", None),
        ("local", None),
    ],
)
def test_output_limit_by_model_family(model, known):
    assert output_limit(model) == known


@pytest.mark.parametrize(
    "model, max_tokens, used, note",
    [
        (HAIKU_3, 8192, 4096, LINE),
        ("claude-3-5-sonnet-20241022", 12000, 8192,
         "max_tokens 12000 is above claude-3-5's 8192 output limit: using 8192"),
        (HAIKU_3, 4096, 4096, None),  # at the limit: nothing to say
        (HAIKU_3, 2048, 2048, None),  # below it: kept
        ("glm-4.6", 12000, 12000, None),  # unknown: kept
    ],
)
def test_fit_to_model(model, max_tokens, used, note):
    settings, notes = fit_to_model(GenerateSettings(model=model, max_tokens=max_tokens))
    assert settings.max_tokens == used
    assert notes == ([note] if note else [])


def test_haiku_3_run_succeeds_against_the_strict_api_and_the_plan_says_why(ws, api):
    """Before the clamp every request went out with max_tokens 8192 and got a 400."""
    result = generate(ws, "--model", HAIKU_3, "--pairs", "16")
    assert result.exit_code == 0, result.output
    assert result.stderr.count(LINE) == 1
    assert sent_max_tokens(api) == {4096}  # the rounds and the probe request
    dry = generate(ws, "--model", HAIKU_3, "--dry-run")
    assert dry.exit_code == 0 and LINE in dry.stdout


def test_an_unknown_model_keeps_the_configured_max_tokens(ws, api, monkeypatch):
    monkeypatch.setenv("MLX_PARTNER_GENERATE_MAX_TOKENS", "12000")
    result = generate(ws, "--model", "glm-4.6", "--pairs", "16")
    assert result.exit_code == 0, result.output
    assert "output limit" not in result.output
    assert sent_max_tokens(api) == {12000}


def test_batches_sized_to_a_context_window_use_the_clamped_max_tokens(ws):
    """With a context window (--context-tokens), a batch's document budget is what is left after
    the reply: haiku-3's 4096, not the configured 8192. No network: the endpoint is not loopback."""
    workspace = Workspace.at(ws)
    sources = SourcesSettings(token_budget=100_000)
    budgets = {}
    for model in (HAIKU_3, "glm-4.6"):
        _, settings, fitted, notes = configure_endpoint(
            workspace, GenerateSettings(model=model, context_tokens=60_000), sources, {})
        budgets[model] = (settings.max_tokens, fitted.token_budget)
        assert any(f"replies of at most {settings.max_tokens} tokens" in n for n in notes)
    assert budgets[HAIKU_3][0] == 4096 and budgets["glm-4.6"][0] == 8192
    assert budgets[HAIKU_3][1] - budgets["glm-4.6"][1] == 8192 - 4096
