"""Exporting an mlx-lm llama folder as a float16 GGUF, for llama.cpp, Ollama and LM Studio.

mlx-lm's own exporter writes a SentencePiece vocabulary with no merges, which is wrong for
byte-level BPE models (SmolLM2, Llama 3): this is the inverse of the import (`reader.py`) for
those. Tensor names and the Q/K row order are llama.cpp's again (`layout.py`), the tokenizer goes
into `tokenizer.ggml.*` metadata with the pre-tokenizer name llama.cpp knows (`tokenizer.py`).

    meta = export_gguf(Path("models/run"), Path("models/run/run.gguf"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .layout import gguf_tensor_name, permute_rows
from .tokenizer import pre_tokenizer_name


def _vocabulary(tok: dict[str, Any], tok_config: dict[str, Any]) -> dict[str, Any]:
    """The `tokenizer.ggml.*` entries of a byte-level BPE tokenizer.json, and its vocab by token."""
    import mlx.core as mx

    pre = pre_tokenizer_name(tok)
    if (tok.get("model") or {}).get("type") != "BPE" or pre is None:
        raise ModelError("This model's tokenizer is not a byte-level BPE that llama.cpp knows (gpt2, smollm, llama-bpe).")
    vocab = dict(tok["model"]["vocab"])
    added = {a["content"]: a for a in tok.get("added_tokens", [])}
    vocab.update({content: a["id"] for content, a in added.items()})
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ModelError("The tokenizer's ids have gaps, which GGUF cannot store.")
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    token_type = [(3 if added[t].get("special") else 4) if t in added else 1 for t in tokens]
    return {
        "vocab": vocab,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": mx.array(token_type, dtype=mx.int32),
        "tokenizer.ggml.add_bos_token": mx.array(bool(tok_config.get("add_bos_token", False))),
        "tokenizer.ggml.add_space_prefix": mx.array(False),
    }


def _u32(x: int) -> Any:
    import mlx.core as mx

    return mx.array(int(x), dtype=mx.uint32)


def _f32(x: float) -> Any:
    import mlx.core as mx

    return mx.array(float(x), dtype=mx.float32)


def _model_metadata(name: str, config: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """The `general.*` and `llama.*` entries: the model's shape, as llama.cpp reads it."""
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    return {
        "general.architecture": "llama",
        "general.name": name,
        "general.file_type": _u32(1),  # mostly F16
        "general.quantization_version": _u32(2),
        "llama.vocab_size": _u32(vocab_size),
        "llama.context_length": _u32(config.get("max_position_embeddings", 2048)),
        "llama.embedding_length": _u32(config["hidden_size"]),
        "llama.block_count": _u32(config["num_hidden_layers"]),
        "llama.feed_forward_length": _u32(config["intermediate_size"]),
        "llama.attention.head_count": _u32(n_head),
        "llama.attention.head_count_kv": _u32(n_kv),
        "llama.attention.key_length": _u32(head_dim),
        "llama.attention.value_length": _u32(head_dim),
        "llama.rope.dimension_count": _u32(head_dim),
        "llama.rope.freq_base": _f32(config.get("rope_theta", 10000.0)),
        "llama.attention.layer_norm_rms_epsilon": _f32(config.get("rms_norm_eps", 1e-5)),
    }


def _special_tokens(tok_config: dict[str, Any], vocab: dict[str, int]) -> dict[str, Any]:
    """The bos/eos/padding/unknown token ids that tokenizer_config.json names."""
    out: dict[str, Any] = {}
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("padding", "pad_token"), ("unknown", "unk_token")):
        value = tok_config.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        if value in vocab:
            out[f"tokenizer.ggml.{key}_token_id"] = _u32(vocab[value])
    return out


def _tensors(model_dir: Path, weights: dict[str, Any] | None, config: dict[str, Any]) -> dict[str, Any]:
    """GGUF-named tensors: Q/K rows permuted back, matrices in float16, vectors in float32."""
    import mlx.core as mx

    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    if weights is None:
        weights = {}
        for shard in sorted(model_dir.glob("model*.safetensors")):
            weights.update(mx.load(str(shard)))
    tensors = {}
    for name, value in weights.items():
        if name.endswith(("rotary_emb.inv_freq",)):
            continue
        if ".q_proj." in name:
            value = permute_rows(value, n_head)
        elif ".k_proj." in name:
            value = permute_rows(value, n_kv)
        tensors[gguf_tensor_name(name)] = value.astype(mx.float16 if value.ndim > 1 else mx.float32)
    return tensors


def export_gguf(model_dir: Path, out_path: Path, weights: dict[str, Any] | None = None,
                config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a float16 GGUF for a byte-level BPE llama model folder; returns its metadata.

    `weights` (HF names, float) and `config` default to the folder's own. Raises ModelError for
    what this cannot write faithfully (another architecture, a quantized model, an unknown tokenizer).
    """
    import mlx.core as mx

    config = config or json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ModelError(f"Only llama models can be exported to GGUF here, and this one is '{config.get('model_type')}'.")
    if config.get("quantization"):
        raise ModelError("A quantized model cannot be exported to GGUF here; fuse without --quantize.")
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_meta = _vocabulary(tok, tok_config)
    vocab = tokenizer_meta.pop("vocab")
    template = tok_config.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").exists():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")

    meta = {**_model_metadata(model_dir.name, config, len(vocab)), **tokenizer_meta}
    scaling = config.get("rope_scaling") or {}
    if scaling:
        if scaling.get("type", scaling.get("rope_type")) != "linear":
            raise ModelError(f"RoPE scaling '{scaling}' cannot be written to GGUF here.")
        meta["llama.rope.scaling.type"] = "linear"
        meta["llama.rope.scaling.factor"] = _f32(scaling["factor"])
    meta.update(_special_tokens(tok_config, vocab))
    if template:
        meta["tokenizer.chat_template"] = template

    tensors = _tensors(model_dir, weights, config)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mx.save_gguf(str(out_path), tensors, meta)
    return meta
