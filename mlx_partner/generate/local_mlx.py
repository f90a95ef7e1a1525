"""The in-process MLX generator: `generate --generator mlx:<model>` writes the pairs with a local
mlx-lm model, one request at a time, nothing sent anywhere.

    endpoint, settings, sources, notes = mlx_endpoint(ws, settings, sources)   # resolve, memory check
    client = MlxGenerator(ws, settings)                 # stands in for anthropic.Anthropic()
    message = client.messages.create(**params)          # loads the model on first use

It stands in for the `anthropic` client: the very request the Messages API path builds (system,
messages and the tool's JSON schema) becomes one chat prompt through the model's chat template,
asking for the tool's JSON object in text; the reply comes back as a text-only message, so
`replies.parse_reply` reads it exactly like an API reply's JSON-in-text fallback and every check
after it is unchanged. Generation stops at the end of the top-level JSON object, at the model's
end of turn, or at the request's max_tokens (then the reply is "cut off", asked again, and the
batch fails after `validation_retries` tries, as for an API).

To the rest of the run it is a local endpoint (`local.Endpoint`, url `mlx:<model path>`): no key,
no price, no Message Batches, one request at a time, batches sized to the model's context window;
the ledger names it in "model" and "generator" and records each reply's seconds, from which a
later `--dry-run` measures its time estimate. The progress line shows the tokens/s measured in
this run and the ETA at that rate. `mlx` and `mlx_lm` are imported inside the functions that use
them, so `--help` stays instant.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import GenerateSettings, SourcesSettings
from ..errors import ConfigError, ModelError
from ..memory import GB, OVERHEAD_BYTES, Arch, available_memory
from ..models import is_cpu_backend, read_config, resolve_model
from ..prompts import chat_messages, encode_prompt, render_prompt
from ..workspace import Workspace
from .local import ROUND_ALLOWANCE, Endpoint, fit_to_endpoint

MLX_PREFIX = "mlx:"
SERVER = "mlx-lm in this process"
DEFAULT_CONTEXT = 8192  # when config.json names no max_position_embeddings
SAMPLING = {"temp": 0.7, "top_p": 0.95}


def mlx_model_ref(generator: str) -> str | None:
    """The model named by `generate.generator`: None for "anthropic" (the Messages API)."""
    value = (generator or "").strip()
    if value in ("", "anthropic"):
        return None
    if value.startswith(MLX_PREFIX) and value[len(MLX_PREFIX):].strip():
        return value[len(MLX_PREFIX):].strip()
    raise ConfigError(f'The setting generate.generator is {value!r}; use "anthropic" or "mlx:<model>" '
                      "(a hub id, a local folder or a `models list` name).")


def is_local_mlx(model: str) -> bool:
    """Whether a run's model name (ledger, pair records) is an in-process MLX model."""
    return model.startswith(MLX_PREFIX)


# --- memory: the generator alone must fit -------------------------------------------------------


def inference_bytes(arch: Arch, context: int, on_cpu: bool) -> tuple[float, float]:
    """(total bytes to generate with `context` tokens of KV cache, bytes per parameter)."""
    per = 4.0 if on_cpu else ((arch.bits / 8 + 4 / 64) if arch.bits else float(arch.stored_bytes))
    kv = 2 * arch.layers * arch.kv_heads * arch.head_dim * context * (4 if on_cpu else 2)
    return arch.params * per + kv + OVERHEAD_BYTES, per


def check_fits(name: str, config: Mapping[str, Any], context: int, on_cpu: bool,
               memory_gb: float | None = None) -> None:
    """ModelError, in one sentence with the size that would fit, when the model does not fit alone."""
    arch = Arch.from_config(dict(config))
    need, per = inference_bytes(arch, context, on_cpu)
    budget, source = available_memory(memory_gb)
    if need <= budget:
        return
    kv = need - arch.params * per - OVERHEAD_BYTES
    fit = max(0.0, (budget - kv - OVERHEAD_BYTES) / per)
    how = "in float32 on this CPU backend" if on_cpu else ("at 4 bits" if arch.bits == 4 else "as stored")
    raise ModelError(
        f"The generator model {name} ({arch.params / 1e9:.1f}B parameters {how}, with a {context}-token context) "
        f"needs about {need / GB:.1f} GB but {budget / GB:.1f} GB is {source.strip('()')}: choose a model of at "
        f"most about {fit / 1e9:.1f}B parameters {how}."
    )


# --- the request -> a chat prompt --------------------------------------------------------------


def prompt_messages(params: Mapping[str, Any]) -> tuple[str, str]:
    """(system, user) text of a Messages API request, the tool's schema turned into a JSON request."""
    system = params.get("system") or ""
    if not isinstance(system, str):
        system = "\n\n".join(block.get("text", "") for block in system)
    parts = []
    for message in params.get("messages") or ():
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [block.get("text", "") for block in content if block.get("type") == "text"]
    for tool in params.get("tools") or ():
        parts.append(
            f"There is no tool to call here: instead of calling {tool['name']}, reply with the JSON object it "
            "takes and nothing else (no prose, no code fence). It must match this JSON schema:\n"
            + json.dumps(tool.get("input_schema", {}), separators=(",", ":"))
        )
    return system, "\n\n".join(p for p in parts if p)


class JsonEnd:
    """Fed the reply as it streams: true once the first top-level JSON object has closed."""

    def __init__(self) -> None:
        self.depth, self.in_string, self.escape, self.started = 0, False, False, False

    def feed(self, text: str) -> bool:
        for ch in text:
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"':
                    self.in_string = False
                continue
            if ch == '"' and self.started:
                self.in_string, self.escape = True, False
            elif ch == "{":
                self.depth, self.started = self.depth + 1, True
            elif ch == "}" and self.started:
                self.depth -= 1
                if self.depth == 0:
                    return True
        return False


@dataclass
class Generation:
    """One reply: its text, why it stopped, and how long the two halves took."""

    text: str
    stop_reason: str  # "end_turn" or "max_tokens"
    prompt_tokens: int
    output_tokens: int
    prompt_seconds: float
    seconds: float  # writing the reply


def generate_text(model: Any, tokenizer: Any, prompt: list[int], max_tokens: int,
                  on_token: Callable[[int, float], None] = lambda n, tps: None) -> Generation:
    """Stream a reply with mlx-lm until the JSON object closes, end of turn, or max_tokens."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    start = time.perf_counter()
    first = None
    pieces: list[str] = []
    end, stop, n, prompt_tps = JsonEnd(), "max_tokens", 0, 0.0
    for response in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, sampler=make_sampler(**SAMPLING)):
        if first is None:
            first, prompt_tps = time.perf_counter(), response.prompt_tps
        n = response.generation_tokens
        pieces.append(response.text)
        on_token(n, response.generation_tps)
        if end.feed(response.text):
            stop = "end_turn"
            break
        if response.finish_reason is not None:
            stop = "max_tokens" if response.finish_reason == "length" else "end_turn"
    now = time.perf_counter()
    prompt_seconds = len(prompt) / prompt_tps if prompt_tps else (first or now) - start
    return Generation("".join(pieces), stop, len(prompt), n, prompt_seconds, max(1e-6, now - start - prompt_seconds))


# --- the client ----------------------------------------------------------------------------------


class LocalReply:
    """What `send.call` reads from an SDK message: `model_dump` and `_request_id`."""

    def __init__(self, message: dict[str, Any], request_id: str) -> None:
        self.message, self._request_id = message, request_id

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        return self.message


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def mlx_endpoint(ws: Workspace, settings: GenerateSettings, sources: SourcesSettings, *, batch_api: bool = False,
                 profile: str = "", memory_gb: float | None = None) -> tuple[Endpoint, GenerateSettings, SourcesSettings, list[str]]:
    """`plan.configure_endpoint` for `generate.generator = "mlx:<model>"`: the model resolved like
    --base-model and checked to fit in memory alone (nothing loaded), the run's settings named after
    it, one request at a time, batches and replies sized to its context window."""
    ref = mlx_model_ref(settings.generator)
    if ref is None:
        raise ConfigError("generate.generator does not name an MLX model (mlx:<model>).")
    if batch_api:
        raise ConfigError("--batch-api needs the Message Batches API; the in-process MLX generator has none: run without it.")
    path = resolve_model(ref, ws.root).resolve()
    config = read_config(path)
    window = int(config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
                 or DEFAULT_CONTEXT)
    source = "the model's config.json"
    if settings.context_tokens:
        window, source = settings.context_tokens, "[generate] context_tokens / --context-tokens"
    endpoint = Endpoint(f"{MLX_PREFIX}{path}", loopback=True, local=True, server=SERVER, context_tokens=window,
                        context_from=source)
    check_fits(str(path), config, min(window, sources.token_budget + settings.max_tokens + 2 * ROUND_ALLOWANCE),
               is_cpu_backend(), memory_gb)
    # output "tool": the request keeps the tool's schema, which the prompt turns into a JSON request
    settings = dataclasses.replace(settings, model=endpoint.url, concurrency=1, output="tool")
    settings, sources, notes = fit_to_endpoint(endpoint, settings, sources, profile)
    return endpoint, settings, sources, notes


class MlxGenerator:
    """A stand-in for `anthropic.Anthropic()`: `messages.create(**params)` runs the local model."""

    def __init__(self, ws: Workspace, settings: GenerateSettings) -> None:
        if not is_local_mlx(settings.model):
            raise ConfigError(f"{settings.model} is not an in-process MLX model (mlx:<model path>).")
        self.ws, self.settings = ws, settings
        self.base_url = settings.model
        self.path = Path(settings.model[len(MLX_PREFIX):])
        self.model: Any = None
        self.tokenizer: Any = None
        self.progress: Any = None  # the run's report.Progress, once attached
        self.to_write = 0  # output tokens the run is expected to write (the plan's estimate)
        self.written, self.seconds, self.count = 0, 0.0, 0

    @property
    def messages(self) -> MlxGenerator:
        return self

    def load(self) -> None:
        from ..models import load_model

        loaded = load_model(self.path)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer

    def attach(self, progress: Any, output_tokens: int) -> None:
        """Load the model (before the first request, so its seconds in the ledger are generation
        only) and show tokens/s and the ETA on the run's progress line (`report.Progress.status`)."""
        self.progress, self.to_write = progress, output_tokens
        if self.model is None and progress.total:
            self.load()

    def _show(self, writing: int, tps: float, elapsed: float) -> None:
        """The writing rate now, and the ETA of what is left at the run's measured rate."""
        if self.progress is None or not (tps or self.written):
            return
        written, seconds = self.written + writing, self.seconds + elapsed
        overall = written / seconds if seconds > 0 else tps  # prompt reading included
        eta = max(0, self.to_write - written) / overall if overall else 0.0
        self.progress.status = f"{tps or overall:.1f} tokens/s · ETA {clock(eta)} at the measured rate"

    def create(self, **params: Any) -> LocalReply:
        """One request, answered by the local model: a text-only Messages API reply."""
        if self.model is None:
            self.load()
        start = time.perf_counter()
        system, user = prompt_messages(params)
        messages = chat_messages(system, [{"role": "user", "content": user}], self.tokenizer)
        prompt = encode_prompt(self.tokenizer, render_prompt(self.tokenizer, messages, add_generation_prompt=True))
        g = generate_text(self.model, self.tokenizer, prompt, int(params.get("max_tokens") or self.settings.max_tokens),
                          lambda n, tps: self._show(n, tps, time.perf_counter() - start))
        self.count += 1
        self.written += g.output_tokens
        self.seconds += time.perf_counter() - start
        self._show(0, g.output_tokens / g.seconds if g.output_tokens else 0.0, 0.0)
        message = {
            "id": f"local-{self.count}", "type": "message", "role": "assistant", "model": self.settings.model,
            "stop_reason": g.stop_reason, "content": [{"type": "text", "text": g.text}],
            "usage": {"input_tokens": g.prompt_tokens, "output_tokens": g.output_tokens},
        }
        return LocalReply(message, f"local-{self.count}")
