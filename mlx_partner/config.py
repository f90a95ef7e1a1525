"""Settings in one place: defaults < partner.toml < environment < flags.

Each stage has a small frozen dataclass of settings; `Settings` holds one of each and maps to the
sections of `partner.toml` (`[sources]`, `[generate]`, ...). An environment variable
`MLX_PARTNER_<SECTION>_<KEY>` (e.g. `MLX_PARTNER_GENERATE_MODEL`) overrides the file, and CLI
flags override both through `Settings.override(section, **flags)` (None means "not given").
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _f(default: Any, help: str) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SourcesSettings:
    token_budget: int = _f(12000, "Largest batch of documents sent in one request, in estimated tokens.")
    themes: int = _f(0, "Number of automatic themes for documents without a folder or theme: (0 = choose).")
    seed: int = _f(0, "Seed for the automatic theming (same seed, same themes).")


@dataclass(frozen=True)
class GenerateSettings:
    # claude-sonnet-4-5 is deprecated in the anthropic SDK (end of life November 30th, 2026).
    model: str = _f("claude-sonnet-5-5", "Generator model, e.g. claude-sonnet-5-5, claude-haiku-4-5, or glm-4.6 behind ANTHROPIC_BASE_URL.")
    generator: str = _f("anthropic", "Who writes the pairs: 'anthropic' (the Messages API at ANTHROPIC_BASE_URL, with --model) "
                        "or 'mlx:<model>' (an mlx-lm model in this process: a hub id, a folder or a `models list` name).")
    pairs_total: int = _f(0, "Pairs to generate in all (0 = about 9 per 1000 source words, the seed run's scale).")
    pairs_per_round: int = _f(8, "Pairs asked for in one request.")
    mix: dict = _f({"genuine": 0.44, "scenario": 0.22, "pushback": 0.22, "boundary": 0.12},
                   "Share of each kind of pair; boundary pairs decline near-domain questions her writing does not answer.")
    probes: int = _f(16, "Near-domain probe questions written once to data/probes.jsonl for `eval`, never trained on (0 = none).")
    concurrency: int = _f(4, "Requests in flight at once.")
    max_retries: int = _f(4, "SDK retries for 429, 5xx, 529 and timeouts (with backoff, honouring retry-after).")
    timeout: float = _f(120.0, "Seconds before one request times out.")
    max_tokens: int = _f(8192, "Largest reply, in tokens (held to the model's output limit where that is lower, e.g. claude-3-haiku's 4096).")
    validation_retries: int = _f(2, "Times a reply that fails validation is asked again.")
    output: str = _f("auto", "Structured output: 'tool' (forced tool use), 'json' (JSON in text) or 'auto'.")
    poll_interval: float = _f(10.0, "Seconds between status checks of a Message Batch (--batch-api).")
    local: str = _f("auto", "Local endpoint (no price, no Message Batches, its own context window, one request at a time): 'auto' (a loopback ANTHROPIC_BASE_URL that says it is llama-server or Ollama), 'yes' or 'no'.")
    context_tokens: int = _f(0, "The endpoint's context window in tokens; batches and replies are sized to fit (0 = ask a local server, else none).")


@dataclass(frozen=True)
class DatasetSettings:
    valid_fraction: float = _f(0.1, "Share of pairs held out for validation during training.")
    test_fraction: float = _f(0.1, "Share of pairs held back for `eval` (0 turns it off).")
    seed: int = _f(0, "Seed for the split.")
    system_prompt: str = _f("", "The partner's system prompt ('' = derived from profile.md).")
    passages: bool = _f(False, "Put passages of your writing before each training question (its own plus distractors), as `chat --rag` does.")


@dataclass(frozen=True)
class TrainSettings:
    base_model: str = _f("mlx-community/Qwen2.5-3B-Instruct-4bit", "Base model: a hub id, a local folder, or a name from `models list`.")
    fine_tune_type: str = _f("lora", "lora, dora or full.")
    epochs: float = _f(3.0, "Passes over the training set (converted to iterations).")
    iters: int = _f(0, "Iterations (0 = from epochs).")
    learning_rate: float = _f(1e-4, "Peak learning rate (after warmup, then cosine decay).")
    warmup_fraction: float = _f(0.1, "Share of iterations spent warming up the learning rate.")
    batch_size: int = _f(4, "Examples per step.")
    grad_accumulation: int = _f(1, "Steps whose gradients are summed before an update.")
    lora_rank: int = _f(8, "LoRA rank.")
    lora_scale: float = _f(20.0, "LoRA scale.")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    num_layers: int = _f(16, "Layers to adapt, counted from the top (-1 = all).")
    max_seq_length: int = _f(2048, "Longest example in tokens; longer ones are truncated.")
    steps_per_eval: int = _f(0, "Validate every N steps (0 = about 8 times a run).")
    val_batches: int = _f(-1, "Validation batches (-1 = the whole valid set).")
    patience: int = _f(3, "Stop after this many validations without improvement (0 = never).")
    min_steps_fraction: float = _f(0.5, "No early stop before this share of the planned iterations, so the "
                                   "schedule has its chance (0 = early stopping may fire at any validation).")
    grad_checkpoint: bool = _f(False, "Recompute activations to save memory.")
    mask_prompt: bool = _f(True, "Train on the answers only.")
    seed: int = _f(0, "Seed for training.")
    method: str = _f("sft", "sft (imitate the answers), orpo or dpo (prefer them to the base model's own, or to the answer a correction replaced).")
    preference_beta: float = _f(0.1, "orpo/dpo: weight of the preference term (orpo) or the strength of the preference (dpo).")


@dataclass(frozen=True)
class ChatSettings:
    temperature: float = _f(0.7, "Sampling temperature (0 = greedy).")
    top_p: float = _f(0.9, "Nucleus sampling.")
    max_tokens: int = _f(512, "Longest reply, in tokens.")
    max_kv_size: int = _f(0, "Context tokens kept in chat (0 = the model's window).")
    seed: int = _f(0, "Sampling seed.")
    repetition_penalty: float = _f(1.0, "Above 1 discourages repeating recent tokens; small models loop without it (1 = off).")
    sources: bool = _f(True, "Show the passages of your writing an answer rests on, under it.")
    rag: bool = _f(False, "Put the passages closest to each question into the prompt (train with [dataset] passages = true to match).")


@dataclass(frozen=True)
class ServeSettings:
    host: str = _f("127.0.0.1", "Address `serve` listens on; anything but loopback must be given as --host (no authentication).")
    port: int = _f(8080, "Port `serve` listens on.")
    allowed_origins: str = _f("", "Web pages (origins, comma-separated, e.g. http://localhost:3000) allowed to call `serve` from a browser; '*' allows any.")


SECTIONS: dict[str, type] = {
    "sources": SourcesSettings,
    "generate": GenerateSettings,
    "dataset": DatasetSettings,
    "train": TrainSettings,
    "chat": ChatSettings,
    "serve": ServeSettings,
}


@dataclass(frozen=True)
class Settings:
    sources: SourcesSettings = field(default_factory=SourcesSettings)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)

    def override(self, section: str, **values: Any) -> Settings:
        """A copy with the given keys of one section replaced; None values are ignored."""
        current = getattr(self, section)
        given = {k: v for k, v in values.items() if v is not None}
        unknown = set(given) - {f.name for f in fields(current)}
        if unknown:
            raise ConfigError(f"Unknown setting {section}.{sorted(unknown)[0]}.")
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **given)})

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _from_env(value: str, kind: Any) -> Any:
    """An environment variable's string as `kind`; ValueError when it is not one."""
    if kind is bool:
        if value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise ValueError(value)
    if kind is dict:
        return dict(_parse_pairs(value))
    return kind(value)


def _is_kind(value: Any, kind: Any) -> bool:
    """A TOML value of the declared type (bool is not an int here; an int is a float)."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return kind in (bool, str, dict) and isinstance(value, kind)


def _coerce(value: Any, kind: Any, where: str, key: str) -> Any:
    """Check (and for environment strings, convert) one value against its declared type."""
    try:
        if isinstance(value, str) and kind is not str and kind in (bool, int, float, dict):
            return _from_env(value, kind)
        if _is_kind(value, kind):
            return float(value) if kind is float else value
    except ValueError:
        pass
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"Setting {key} in {where} should be a {name}, not {value!r}.")


def _parse_pairs(text: str) -> list[tuple[str, float]]:
    """'genuine=0.5,scenario=0.25' -> [('genuine', 0.5), ('scenario', 0.25)]."""
    out = []
    for part in text.split(","):
        name, _, number = part.partition("=")
        out.append((name.strip(), float(number)))
    return out


def _apply(settings: Settings, section: str, values: dict[str, Any], where: str) -> Settings:
    cls = SECTIONS[section]
    hints = get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    checked = {}
    for key, value in values.items():
        if key not in valid:
            raise ConfigError(
                f"Unknown setting '{key}' in [{section}] of {where}; valid keys are: {', '.join(valid)}."
            )
        checked[key] = _coerce(value, hints[key], where, f"{section}.{key}")
    return settings.override(section, **checked)


def load_settings(config_path: Path | None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults, then partner.toml (if it exists), then MLX_PARTNER_<SECTION>_<KEY> variables."""
    settings = Settings()
    if config_path is not None and config_path.exists():
        try:
            data = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_path} is not valid TOML ({exc}); fix it or delete it to use the defaults.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Could not read {config_path} ({exc}).") from None
        for section, values in data.items():
            if section not in SECTIONS:
                raise ConfigError(
                    f"Unknown section [{section}] in {config_path}; valid sections are: {', '.join(SECTIONS)}."
                )
            if not isinstance(values, dict):
                raise ConfigError(f"'{section}' in {config_path} should be a [{section}] table.")
            settings = _apply(settings, section, values, str(config_path))
    environ = os.environ if environ is None else environ
    for section in SECTIONS:
        prefix = f"MLX_PARTNER_{section.upper()}_"
        values = {
            name.removeprefix(prefix).lower(): value
            for name, value in environ.items()
            if name.startswith(prefix)
        }
        if values:
            settings = _apply(settings, section, values, "the environment")
    return settings


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def default_config_text() -> str:
    """partner.toml with every setting commented out at its default, with its help."""
    lines = [
        "# mlx-partner settings. Every key is shown at its default; uncomment to change.",
        "# Precedence: defaults < this file < MLX_PARTNER_<SECTION>_<KEY> variables < flags.",
        "# API keys never go here: set ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN) in the environment.",
    ]
    defaults = Settings()
    for section, cls in SECTIONS.items():
        lines += ["", f"[{section}]"]
        for f in fields(cls):
            lines.append(f"# {f.metadata.get('help', '')}")
            lines.append(f"# {f.name} = {_toml_value(getattr(getattr(defaults, section), f.name))}")
    return "\n".join(lines) + "\n"
