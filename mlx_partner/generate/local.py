"""Local endpoints: Ollama or llama.cpp's llama-server speaking the Messages API on this machine.

    endpoint = resolve_endpoint(os.environ, settings)      # asks a loopback server what it is
    settings, sources = fit_to_endpoint(endpoint, settings, sources, profile)

A loopback ANTHROPIC_BASE_URL needs no key (the SDK is given `PLACEHOLDER_KEY`, never logged or
written). A loopback server that says it is llama-server (GET /props) or Ollama (GET
/api/version) is *local*: nothing is priced ("local, $0"), there is no Message Batches API, tool
use may be missing or loose, the context window is the server's (asked for: /props n_ctx,
Ollama's /api/show num_ctx; or `[generate] context_tokens`), and replies are slow, so one
request at a time with a long time-out, unless the settings say otherwise. A loopback proxy that
does not say what it is (a cloud relay, the test suite's fake API) keeps the cloud behaviour;
`[generate] local = "yes"` (or "no") decides instead.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..config import GenerateSettings, SourcesSettings
from ..errors import GenerationError
from ..sources.documents import estimate_tokens
from .requests import INSTRUCTIONS, Price, tool_schema

DEFAULT_BASE_URL = "https://api.anthropic.com"
PLACEHOLDER_KEY = "no-key-needed-for-a-local-endpoint"  # noqa: S105 - not a secret: a loopback server ignores it
LOCAL_PRICE = Price("local", 0.0, 0.0)
# Defaults for one local machine, used where the settings still hold the cloud defaults.
LOCAL_CONCURRENCY = 1
LOCAL_TIMEOUT = 900.0  # seconds: a small model on a CPU writes ~16 tokens/s
LOCAL_MAX_RETRIES = 1  # a timed-out local request sent again costs as long again
# The dry run's time estimate when no earlier run measured this endpoint.
ASSUMED_PROMPT_TOKENS_PER_SECOND = 200.0
ASSUMED_OUTPUT_TOKENS_PER_SECOND = 20.0
CONTEXT_MARGIN = 0.85  # our 4-characters-a-token estimate runs low for some tokenizers
ROUND_ALLOWANCE = 600  # round text and the questions already asked, in tokens


@dataclass(frozen=True)
class Endpoint:
    """Where requests go and what that server is: never a key."""

    url: str
    loopback: bool = False
    local: bool = False
    server: str = ""  # "llama-server", "Ollama", or "" when it did not say
    context_tokens: int = 0  # 0: not known
    context_from: str = ""  # how it is known: "the server (/props)", "[generate] context_tokens", ...

    @property
    def price(self) -> Price | None:
        """Local, $0 for a local endpoint; None: the model's list price."""
        return LOCAL_PRICE if self.local else None

    def describe(self) -> str:
        what = f"{self.server} at {self.url}" if self.server else self.url
        return f"{what} (local, $0)" if self.local else what


def base_url(environ: Mapping[str, str]) -> str:
    return (environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")


def is_loopback(url: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: this machine."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _get_json(url: str, body: dict[str, Any] | None = None, headers: Mapping[str, str] | None = None,
              timeout: float = 3.0) -> Any:
    """GET (or POST `body`) a loopback server's JSON; None when it does not answer with JSON."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 - a loopback URL
            return json.loads(reply.read() or b"null")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def credential_headers(environ: Mapping[str, str]) -> dict[str, str]:
    """The headers the SDK would send, for a loopback server started with a key (llama-server --api-key)."""
    if environ.get("ANTHROPIC_API_KEY", "").strip():
        return {"x-api-key": environ["ANTHROPIC_API_KEY"].strip()}
    if environ.get("ANTHROPIC_AUTH_TOKEN", "").strip():
        return {"authorization": "Bearer " + environ["ANTHROPIC_AUTH_TOKEN"].strip()}
    return {}


def ask_server(url: str, model: str, headers: Mapping[str, str] | None = None) -> tuple[str, int]:
    """(server name, its context window or 0) from llama-server's /props or Ollama's API."""
    props = _get_json(f"{url}/props", headers=headers)
    if isinstance(props, dict) and ("default_generation_settings" in props or "n_ctx" in props):
        n_ctx = props.get("n_ctx") or (props.get("default_generation_settings") or {}).get("n_ctx") or 0
        return "llama-server", int(n_ctx)
    version = _get_json(f"{url}/api/version", headers=headers)
    if isinstance(version, dict) and "version" in version:
        show = _get_json(f"{url}/api/show", {"model": model}, headers)
        return "Ollama", ollama_context(show)
    return "", 0


def ollama_context(show: Any) -> int:
    """The window Ollama serves a model with: its num_ctx parameter, else Ollama's default 4096
    (capped at the model's own length)."""
    if not isinstance(show, dict):
        return 0
    for line in str(show.get("parameters") or "").splitlines():
        name, _, value = line.strip().partition(" ")
        if name == "num_ctx" and value.strip().isdigit():
            return int(value.strip())
    lengths = [int(v) for k, v in (show.get("model_info") or {}).items() if k.endswith(".context_length") and str(v).isdigit()]
    return min([4096, *lengths])


def resolve_endpoint(environ: Mapping[str, str], settings: GenerateSettings) -> Endpoint:
    """The endpoint of this run; a loopback server is asked what it is (no network otherwise)."""
    url = base_url(environ)
    loopback = is_loopback(url)
    server, n_ctx = ask_server(url, settings.model, credential_headers(environ)) if loopback and settings.local != "no" else ("", 0)
    local = settings.local == "yes" or (settings.local == "auto" and bool(server))
    context, source = n_ctx, f"the server ({'/props' if server == 'llama-server' else '/api/show'})" if n_ctx else ""
    if settings.context_tokens:
        context, source = settings.context_tokens, "[generate] context_tokens / --context-tokens"
    return Endpoint(url, loopback, local, server, context if local or settings.context_tokens else 0, source)


def local_defaults(settings: GenerateSettings, endpoint: Endpoint) -> tuple[GenerateSettings, list[str]]:
    """Concurrency, time-out and retries for one local machine, where the settings hold the cloud
    defaults (a value you set wins); the lines that say which were used."""
    if not endpoint.local:
        return settings, []
    cloud = GenerateSettings()
    changes = {}
    for name, value in (("concurrency", LOCAL_CONCURRENCY), ("timeout", LOCAL_TIMEOUT), ("max_retries", LOCAL_MAX_RETRIES)):
        if getattr(settings, name) == getattr(cloud, name):
            changes[name] = value
    settings = dataclasses.replace(settings, **changes)
    used = ", ".join(f"{n} {getattr(settings, n):g}{' (local default)' if n in changes else ''}"
                     for n in ("concurrency", "timeout", "max_retries"))
    return settings, [f"Local endpoint {endpoint.describe()}: {used}."]


def fit_to_context(endpoint: Endpoint, settings: GenerateSettings, sources: SourcesSettings,
                   profile: str) -> tuple[GenerateSettings, SourcesSettings, list[str]]:
    """Replies and batches sized so that documents + instructions + max_tokens fit the window."""
    window = endpoint.context_tokens
    if not window:
        return settings, sources, []
    max_tokens = min(settings.max_tokens, max(1024, window // 4))
    overhead = estimate_tokens(INSTRUCTIONS + profile + json.dumps(tool_schema())) + ROUND_ALLOWANCE
    budget = int(window * CONTEXT_MARGIN) - max_tokens - overhead
    if budget < 400:
        raise GenerationError(
            f"The endpoint's context window ({window} tokens, from {endpoint.context_from}) is too small: the "
            f"instructions and your profile take about {overhead} tokens and a reply up to {max_tokens}; "
            "start the server with a larger one (llama-server -c 8192, Ollama's num_ctx) or set --context-tokens."
        )
    budget = min(budget, sources.token_budget)
    settings = dataclasses.replace(settings, max_tokens=max_tokens)
    sources = dataclasses.replace(sources, token_budget=budget)
    return settings, sources, [f"Context window {window} tokens (from {endpoint.context_from}): batches of at most "
                               f"{budget} document tokens, replies of at most {max_tokens} tokens."]


def fit_to_endpoint(endpoint: Endpoint, settings: GenerateSettings, sources: SourcesSettings,
                    profile: str) -> tuple[GenerateSettings, SourcesSettings, list[str]]:
    """Both adjustments for an endpoint, and the lines that say what was used."""
    settings, lines = local_defaults(settings, endpoint)
    settings, sources, more = fit_to_context(endpoint, settings, sources, profile)
    return settings, sources, lines + more


def time_estimate(input_tokens: int, output_tokens: int, measured: float = 0.0) -> tuple[float, str]:
    """(seconds, how it was estimated) for a local endpoint: from the output tokens per second an
    earlier run measured here (prompt time included), else from assumed rates."""
    if measured > 0:
        return output_tokens / measured, f"measured on earlier requests: {measured:.1f} output tokens/s, prompt included"
    seconds = input_tokens / ASSUMED_PROMPT_TOKENS_PER_SECOND + output_tokens / ASSUMED_OUTPUT_TOKENS_PER_SECOND
    return seconds, (f"assumed {ASSUMED_PROMPT_TOKENS_PER_SECOND:g} prompt and {ASSUMED_OUTPUT_TOKENS_PER_SECOND:g} "
                     "output tokens/s; a run here measures them")


def measured_rate(ledger: list[dict[str, Any]], url: str) -> float:
    """Output tokens per second of the finished requests the ledger holds for this endpoint."""
    lines = [r for r in ledger if r.get("generator") == url and r.get("seconds") and r.get("status") in ("ok", "invalid")]
    seconds = sum(float(r["seconds"]) for r in lines)
    return sum(int(r.get("output_tokens") or 0) for r in lines) / seconds if seconds > 0 else 0.0
