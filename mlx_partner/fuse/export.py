"""`fuse --gguf`: the fused model as a float16 GGUF for llama.cpp, LM Studio and Ollama, and the
Ollama Modelfile beside it.

    plan = plan_gguf(base_path, base_config)        # before any work: can it be exported, how
    path, note = export_gguf_file(model_dir, None, config, run, plan)
    modelfile, note = write_modelfile(model_dir, path, system_prompt, tokenizer, chat_settings)

llama and qwen2 models with a byte-level BPE tokenizer (SmolLM2, Llama 3.x, Qwen2.5) go through
our exporter (`gguf.writer`, llama.cpp's `gguf` package), which carries the chat template with the
partner's system prompt as its default. Anything else is refused up front with the reason, and the
MLX folder is still fused. That includes SentencePiece models (Llama 2, Mistral): mlx-lm's own
exporter writes them a file that llama.cpp refuses to load ("invalid gguf type for
tokenizer.ggml.token_type", measured with the llama.cpp that llama-cpp-python 0.3.36 vendors), and
a faithful one needs the model's tokenizer.model, which fused folders do not keep.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..gguf.header import read_header
from ..gguf.writer import SUPPORTED_ARCHITECTURES, export_blocker, export_gguf
from ..workspace import atomic_write_text
from .modelfile import modelfile_text, stop_tokens, turn_format

MODELFILE = "Modelfile"


@dataclass(frozen=True)
class GGUFPlan:
    route: str | None  # "gguf" (ours), or None: cannot be exported
    reason: str = ""  # why not, when route is None


def plan_gguf(base_path: Path, config: dict[str, Any]) -> GGUFPlan:
    """How (and whether) a fuse of this base can be exported, from its config and tokenizer only."""
    if importlib.util.find_spec("gguf") is None:
        return GGUFPlan(None, "llama.cpp's gguf package is not installed (pip install gguf)")
    reason = export_blocker(base_path, config)
    return GGUFPlan("gguf") if reason is None else GGUFPlan(None, reason)


def refusal_line(plan: GGUFPlan, run: str) -> str:
    """The one line `fuse` prints when --gguf cannot be done, before any work."""
    return (f"--gguf: not exporting, {plan.reason} (supported: {', '.join(SUPPORTED_ARCHITECTURES)} with a byte-level "
            f"BPE tokenizer, e.g. SmolLM2, Llama 3.x, Qwen2.5). The MLX model is fused all the same; llama.cpp's "
            f"convert_hf_to_gguf.py may convert models/{run}/.")


def export_gguf_file(model_dir: Path, model: Any | None, config: dict[str, Any], run: str,
                     plan: GGUFPlan) -> tuple[Path, str]:
    """Write <run>.gguf (float16) beside the fused model. The float weights come from `model`,
    or, when None, from the (float) safetensors in model_dir."""
    from mlx.utils import tree_flatten

    path = model_dir / f"{run}.gguf"
    if plan.route != "gguf":
        raise ModelError(f"--gguf: not exporting, {plan.reason}.")
    params = dict(tree_flatten(model.parameters())) if model is not None else None
    cfg = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    exported = export_gguf(model_dir, path, weights=params, config=cfg)
    template = ("with its chat template (the partner's system prompt by default)" if exported.chat_template
                else "without a chat template (the model has none)")
    return path, (f"Wrote {path.name} (float16 {exported.architecture}, byte-level BPE '{exported.pre_tokenizer}' "
                  f"tokenizer, {template}).")


def _render(tokenizer: Any):
    def render(messages: list[dict[str, str]], generation: bool) -> str:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation,
                                                 enable_thinking=False)
        except Exception as exc:  # a template that refuses a system role, and the like
            raise ModelError(f"the chat template cannot render a system message ({exc})") from None
    return render


def _gguf_tokens(path: Path) -> tuple[list[str], str | None, str]:
    """(control tokens, EOS, the BOS the runtime adds itself or "") as the GGUF file says."""
    meta = read_header(path).metadata
    tokens = list(meta.get("tokenizer.ggml.tokens", []))
    types = list(meta.get("tokenizer.ggml.token_type", []))
    specials = [t for t, k in zip(tokens, types, strict=False) if k == 3]
    eos_id, bos_id = meta.get("tokenizer.ggml.eos_token_id"), meta.get("tokenizer.ggml.bos_token_id")
    eos = tokens[eos_id] if eos_id is not None and eos_id < len(tokens) else None
    adds_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos_id is not None and bos_id < len(tokens)
    return specials, eos, tokens[bos_id] if adds_bos else ""


def write_modelfile(model_dir: Path, gguf_path: Path, system_prompt: str, tokenizer: Any, chat: Any) -> tuple[Path | None, str]:
    """Write model_dir/Modelfile for `gguf_path`; (None, why not) when the chat template cannot
    be written as an Ollama template faithfully."""
    try:
        fmt = turn_format(_render(tokenizer))
        specials, eos, bos = _gguf_tokens(gguf_path)
        text = modelfile_text(gguf_path.name, system_prompt, fmt, chat, stop_tokens(fmt, specials, eos), strip_prefix=bos)
    except ModelError as exc:
        return None, f"No Modelfile: {exc}; Ollama would fall back to its own template."
    path = model_dir / MODELFILE
    atomic_write_text(path, text)
    return path, f"Wrote {MODELFILE} (SYSTEM, TEMPLATE and stops from the chat template, sampling from [chat])."


def ollama_line(model_dir: Path, run: str) -> str:
    """The one command that makes an Ollama model of the fused run."""
    return f"ollama create {ollama_name(run)} -f {model_dir / MODELFILE}"


def ollama_name(run: str) -> str:
    return "partner-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in run.lower())
