"""Exporting an mlx-lm llama or qwen2 folder as a float16 GGUF, through llama.cpp's `gguf` package.

What llama.cpp's own converter (`convert_hf_to_gguf.py`) writes for these models, written with the
same library: `GGUFWriter` for the file, `TensorNameMap` for the tensor names, `SpecialVocab` for
the merges, special token ids, add-BOS flags and chat template. What is ours:

- the vocabulary is read from tokenizer.json (no transformers): ids past the tokenizer's last
  token (Qwen2.5 pads its embedding) become `[PAD<i>]` tokens, added tokens CONTROL when special
  (or looking it, `<|...|>`), else USER_DEFINED, as the converter types them;
- the pre-tokenizer's name comes from its structure (`tokenizer.py`), not from the converter's
  table of hashes of known models, so a fine-tune of any base with a known pre-tokenizer works;
- llama's Q/K rows are permuted for llama.cpp's RoPE layout (`layout.py`); qwen2's are not
  (llama.cpp runs it with NEOX RoPE, the Hugging Face layout);
- Llama 3.1/3.2 RoPE scaling becomes the `rope_freqs` tensor, as the converter computes it.

Matrices are float16, vectors float32; tensors are converted and written one at a time, so memory
stays at about one model. `export_blocker` says, before any work, why a folder cannot be exported.

    exported = export_gguf(Path("models/run"), Path("models/run/run.gguf"))
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .layout import permute_rows
from .tokenizer import pre_tokenizer_name

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
KNOWN_PRE_TOKENIZERS = ("gpt-2", "smollm", "llama-bpe", "qwen2")
_ROPE_SCALING = {"llama": ("linear", "llama3"), "qwen2": ("linear", "yarn")}
_UNUSED, _NORMAL, _CONTROL, _USER_DEFINED = 5, 1, 3, 4  # gguf.TokenType


@dataclass(frozen=True)
class Exported:
    path: Path
    architecture: str
    pre_tokenizer: str
    tokens: int
    tensors: int
    chat_template: bool


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _rope_type(config: dict[str, Any]) -> str | None:
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    return None if kind in (None, "default") else str(kind)


def export_blocker(model_dir: Path, config: dict[str, Any]) -> str | None:
    """Why `model_dir` cannot be exported faithfully (one sentence), or None when it can.
    Reads config and tokenizer.json only, so it can run before any weight is loaded."""
    arch = config.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        return (f"'{arch}' models cannot be exported to GGUF here (supported: {', '.join(SUPPORTED_ARCHITECTURES)}, "
                f"with a byte-level BPE tokenizer)")
    tok = _read_json(model_dir / "tokenizer.json")
    model = tok.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return ("it has a SentencePiece-style tokenizer (byte fallback: Llama 2, Mistral), which this exporter does not "
                "write (mlx-lm's exporter writes one llama.cpp refuses to load)")
    if model.get("type") != "BPE" or (tok.get("decoder") or {}).get("type") != "ByteLevel":
        return "its tokenizer is not a byte-level BPE (tokenizer.json), the kind this exporter writes"
    if pre_tokenizer_name(tok) is None:
        return (f"its tokenizer is not a byte-level BPE that llama.cpp knows (its pre-tokenizer is none of "
                f"{', '.join(KNOWN_PRE_TOKENIZERS)})")
    normalizer = (tok.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC"):
        return f"its tokenizer normalizes text ({normalizer}), which llama.cpp does not"
    rope = _rope_type(config)
    if rope is not None and rope not in _ROPE_SCALING[arch]:
        return f"it uses '{rope}' RoPE scaling, which this exporter cannot write for {arch}"
    return None


def vocabulary(tok: dict[str, Any], n_rows: int) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types, one per embedding row, from tokenizer.json."""
    by_id = {i: t for t, i in (tok.get("model") or {}).get("vocab", {}).items()}
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    if by_id and max(by_id) >= n_rows:
        raise ModelError(f"The tokenizer has ids up to {max(by_id)} but the embedding only {n_rows} rows.")
    tokens, types = [], []
    for i in range(n_rows):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(_UNUSED)
        elif i in added:
            text = by_id[i]
            special = added[i].get("special") or (text.startswith("<|") and text.endswith("|>"))
            tokens.append(text)
            types.append(_CONTROL if special else _USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(_NORMAL)
    return tokens, types


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _hparams(writer: Any, arch: str, config: dict[str, Any], n_vocab: int) -> None:
    """The model's shape, as the converter writes it for llama and qwen2."""
    import gguf

    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    if config.get("head_dim"):
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    if arch == "llama":
        writer.add_vocab_size(n_vocab)
        writer.add_rope_dimension_count(_head_dim(config))
    scaling, rope = config.get("rope_scaling") or {}, _rope_type(config)
    if rope == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif rope == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)


def llama3_rope_factors(config: dict[str, Any]) -> list[float]:
    """The `rope_freqs` tensor llama.cpp needs for Llama 3.1/3.2 RoPE scaling (the converter's formula)."""
    scaling = config["rope_scaling"]
    dim, base = _head_dim(config), float(config.get("rope_theta", 10000.0))
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old = scaling.get("original_max_position_embeddings", 8192)
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(float(factor))
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


def _tensors(arch: str, weights: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, Any]]:
    """(GGUF name, mx array) in write order: llama's Q/K permuted, matrices float16, vectors float32."""
    import gguf
    import mlx.core as mx

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), config["num_hidden_layers"])
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    out = []
    for name, value in weights.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ModelError(f"The weight '{name}' has no place in a {arch} GGUF; this model cannot be exported.")
        if arch == "llama" and ".q_proj." in name:
            value = permute_rows(value, n_head)
        elif arch == "llama" and ".k_proj." in name:
            value = permute_rows(value, n_kv)
        out.append((target, value.astype(mx.float16 if value.ndim > 1 else mx.float32)))
    if _rope_type(config) == "llama3":
        out.append(("rope_freqs.weight", mx.array(llama3_rope_factors(config), dtype=mx.float32)))
    return out


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _load_weights(model_dir: Path) -> dict[str, Any]:
    import mlx.core as mx

    weights: dict[str, Any] = {}
    for shard in sorted(model_dir.glob("model*.safetensors")):
        weights.update(mx.load(str(shard)))
    return weights


def export_gguf(model_dir: Path, out_path: Path, weights: dict[str, Any] | None = None,
                config: dict[str, Any] | None = None, chat_template: str | None = None) -> Exported:
    """Write a float16 GGUF for a llama or qwen2 folder with a byte-level BPE tokenizer.

    `weights` (Hugging Face names, float) and `config` default to the folder's own; `chat_template`
    to the folder's (tokenizer_config.json, else chat_template.jinja, as the converter reads them).
    Raises ModelError for what this cannot write faithfully (see `export_blocker`).
    """
    import gguf
    import numpy as np

    config = config or _read_json(model_dir / "config.json")
    if config.get("quantization"):
        raise ModelError("A quantized model cannot be exported to GGUF here; export its float weights.")
    reason = export_blocker(model_dir, config)
    if reason:
        raise ModelError(f"This model cannot be exported to GGUF: {reason}.")
    arch = str(config["model_type"])
    tok = _read_json(model_dir / "tokenizer.json")
    weights = weights if weights is not None else _load_weights(model_dir)
    tensors = _tensors(arch, weights, config)
    n_rows = int(weights["model.embed_tokens.weight"].shape[0])
    tokens, types = vocabulary(tok, n_rows)
    with _quiet("gguf"):  # its guesses about odd post-processors are warnings on stderr, not ours
        special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_rows)
    # What the tokenizer does when asked for special tokens: BOS only if its post-processor adds
    # one (transformers 5 drops tokenizer_config's add_bos_token when it saves the fused folder).
    special.add_special_token.setdefault("bos", False)
    if chat_template is not None:
        special.chat_template = chat_template
    pre = str(pre_tokenizer_name(tok))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_path), arch)
    try:
        writer.add_name(model_dir.name)
        _hparams(writer, arch, config, n_rows)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special.add_to_gguf(writer, quiet=True)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, value in tensors:
            dtype = np.float16 if value.dtype.size == 2 else np.float32
            writer.add_tensor_info(name, tuple(value.shape), np.dtype(dtype), value.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _name, value in tensors:  # one at a time: memory stays at about one model
            writer.write_tensor_data(np.array(value))
    finally:
        writer.close()
    return Exported(out_path, arch, pre, len(tokens), len(tensors), special.chat_template is not None)
