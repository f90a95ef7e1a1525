"""Converting a llama-architecture GGUF file (llama.cpp, Ollama, LM Studio) into an mlx-lm folder.

MLX reads GGUF itself (`mx.load(path, return_metadata=True)`): float tensors come back as arrays
and the block-quantized types it knows (Q4_0, Q4_1, Q8_0) come back as `weight`/`scales`/`biases`
triples in MLX's own affine group-32 layout, so they map onto mlx-lm quantized layers exactly.
What is left to do here is what llama.cpp changed on the way in:

- tensor names and the Q/K row permutation (`layout.py`);
- no `output.weight` means the embeddings are tied;
- the tokenizer lives in the metadata (`tokenizer.py`);
- the model shape (heads, KV heads, RoPE base, ...) lives in `llama.*` metadata: write config.json.

The header is read first (`header.py`), so an unsupported architecture or tensor type is refused
with a plain message before any weight is loaded.

    python -m mlx_partner.gguf.reader FILE.gguf OUT_DIR   # convert (the CLI: `mlx-partner models import`)
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .header import GROUP_SIZE, QUANT_BITS, check_supported, read_header
from .layout import hf_name, unpermute_rows
from .tokenizer import build_tokenizer


def _int(meta: dict[str, Any], key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if value is None:
        raise ModelError(f"The GGUF metadata has no '{key}', which a llama model needs.")
    return int(value.item() if hasattr(value, "item") else value)


def _float(meta: dict[str, Any], key: str, default: float) -> float:
    value = meta.get(key, default)
    value = float(value.item() if hasattr(value, "item") else value)
    return float(f"{value:.7g}")  # GGUF stores float32: 1e-05, not 9.999999747378752e-06


def llama_config(meta: dict[str, Any], tensor_names: set[str], vocab_size: int) -> dict[str, Any]:
    """config.json for mlx-lm's llama model, from the `llama.*` metadata."""
    n_head = _int(meta, "llama.attention.head_count")
    hidden = _int(meta, "llama.embedding_length")
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": _int(meta, "llama.block_count"),
        "intermediate_size": _int(meta, "llama.feed_forward_length"),
        "num_attention_heads": n_head,
        "num_key_value_heads": _int(meta, "llama.attention.head_count_kv", n_head),
        "rms_norm_eps": _float(meta, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": _float(meta, "llama.rope.freq_base", 10000.0),
        "vocab_size": vocab_size,
        "max_position_embeddings": _int(meta, "llama.context_length", 2048),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": any(n.endswith(".attn_q.bias") for n in tensor_names),
        "mlp_bias": any(n.endswith(".ffn_up.bias") for n in tensor_names),
    }
    head_dim = _int(meta, "llama.attention.key_length", hidden // n_head)
    if head_dim != hidden // n_head:
        config["head_dim"] = head_dim
    if meta.get("llama.rope.scaling.type") == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": _float(meta, "llama.rope.scaling.factor", 1.0)}
    return config


def convert_weights(
    weights: dict[str, Any], config: dict[str, Any], dtype: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """GGUF tensors -> mlx-lm llama weights, and the `quantization` entry for config.json (or None).

    dtype: "float32" or "float16" dequantize everything; "quantized" keeps Q4_0/Q4_1/Q8_0 tensors
    as mlx-lm quantized layers (exact: MLX unpacks them into its own affine group-32 layout) and
    stores the float tensors in float16 beside them.
    """
    import mlx.core as mx

    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    out: dict[str, Any] = {}
    bits_seen: Counter[int] = Counter()
    for name, value in weights.items():
        if name.endswith(".weight") and f"{name[:-7]}.scales" in weights:
            base = name[:-7]
            w, scales, biases = value, weights[f"{base}.scales"], weights[f"{base}.biases"]
            bits = w.shape[-1] * 32 // (scales.shape[-1] * GROUP_SIZE)
            if dtype == "quantized":
                bits_seen[bits] += 1
                parts = {"weight": w, "scales": scales, "biases": biases}
            else:
                # In float32: q * scale + bias computed in float16 would round off precision.
                parts = {"weight": mx.dequantize(
                    w, scales.astype(mx.float32), biases.astype(mx.float32), group_size=GROUP_SIZE, bits=bits
                )}
        elif name.endswith((".scales", ".biases")) and f"{name[:-7]}.weight" in weights:
            continue  # handled with its weight
        else:
            base, leaf = name.rsplit(".", 1)
            parts = {leaf: value}
        target = hf_name(f"{base}.weight").rsplit(".", 1)[0]
        heads = n_head if base.endswith(".attn_q") else n_kv if base.endswith(".attn_k") else None
        for leaf, array in parts.items():
            if heads is not None:
                array = unpermute_rows(array, heads)
            if array.dtype != mx.uint32:  # packed words stay packed
                array = array.astype(mx.float16 if dtype in ("float16", "quantized") else mx.float32)
            out[f"{target}.{leaf}"] = array
    quantization = None
    if bits_seen:
        # The most common width is the default; the loader infers the others from their shapes.
        quantization = {"group_size": GROUP_SIZE, "bits": bits_seen.most_common(1)[0][0], "mode": "affine"}
    return out, quantization


@dataclass(frozen=True)
class Converted:
    config: dict[str, Any]
    parameters: int
    dtype: str  # "float32", "float16" or e.g. "4-bit (Q4_1), embedding 8-bit"
    source_types: dict[str, int]


def convert_gguf(path: Path, out_dir: Path, dtype: str = "float32") -> Converted:
    """Write an mlx-lm folder (config.json, model.safetensors, tokenizer files) for a GGUF file.

    `dtype`: "float32", "float16" or "quantized" (see `convert_weights`). `out_dir` is written
    in place: callers wanting atomicity pass a temporary folder and rename it.
    """
    import mlx.core as mx

    path = Path(path)
    header = read_header(path)
    check_supported(header, path)
    try:
        weights, meta = mx.load(str(path), return_metadata=True)
    except Exception as exc:  # MLX's own reader has the last word on what it can unpack
        raise ModelError(f"MLX could not read {path.name} ({exc}).") from None
    tokenizer, tokenizer_config = build_tokenizer(meta)
    vocab_size = int(weights["token_embd.weight"].shape[0])
    config = llama_config(meta, set(weights), vocab_size)
    for key, tok in (("bos_token_id", "bos_token"), ("eos_token_id", "eos_token")):
        config[key] = tokenizer.token_to_id(tokenizer_config[tok]) if tokenizer_config[tok] else None
    new_weights, quantization = convert_weights(weights, config, dtype)
    if quantization:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    config["torch_dtype"] = "float32" if dtype == "float32" else "float16"
    del weights

    out_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out_dir / "model.safetensors"), new_weights, metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
    if "chat_template" in tokenizer_config:
        (out_dir / "chat_template.jinja").write_text(tokenizer_config["chat_template"])

    params = sum(math.prod(t.shape) for t in header.tensors)
    types = dict(header.type_counts())
    if quantization:
        quant_types = sorted(t for t in types if t in QUANT_BITS)
        label = f"{quantization['bits']}-bit ({'/'.join(quant_types)}, kept)"
    else:
        label = dtype
    return Converted(config, params, label, types)


if __name__ == "__main__":  # pragma: no cover - a developer convenience
    import sys

    print(convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]), *(sys.argv[3:4] or ["float32"])))
