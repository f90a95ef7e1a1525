"""Tensor names and row order, llama.cpp's and mlx-lm's (Hugging Face's), both ways.

llama.cpp renames every tensor (`blk.N.attn_q` for `model.layers.N.self_attn.q_proj`) and
permutes the rows of Q and K for its RoPE layout; import undoes both, export redoes them.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ModelError

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|scales|biases|bias)$")
_TOP = re.compile(r"^(\w+)\.(weight|scales|biases|bias)$")


def hf_name(gguf_name: str) -> str:
    """`blk.3.attn_q.scales` -> `model.layers.3.self_attn.q_proj.scales`; ModelError if unknown."""
    if m := _BLOCK.match(gguf_name):
        layer, part, leaf = m.groups()
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{leaf}"
    elif (m := _TOP.match(gguf_name)) and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    raise ModelError(f"The GGUF tensor '{gguf_name}' has no place in an mlx-lm llama model; this file cannot be imported.")


def unpermute_rows(x: Any, n_head: int) -> Any:
    """Undo llama.cpp's Q/K row permutation (its RoPE pairs rows (i, i+d/2) as (2i, 2i+1)).

    Works on rows only, so a float weight, the packed words of a quantized one, its scales and
    biases, and a bias vector all come back in Hugging Face order.
    """
    rows = x.shape[0]
    rest = tuple(x.shape[1:])
    return x.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def permute_rows(x: Any, n_head: int) -> Any:
    """What llama.cpp's converter does (the inverse of `unpermute_rows`); used to write test files."""
    rows = x.shape[0]
    rest = tuple(x.shape[1:])
    return x.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


_HF_TO_GGUF = {v: k for k, v in _LAYER_NAMES.items()}
_HF_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_tensor_name(hf: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight` (the inverse of `hf_name`)."""
    module, leaf = hf.rsplit(".", 1)
    if module in _HF_TOP:
        return f"{_HF_TOP[module]}.{leaf}"
    m = re.match(r"^model\.layers\.(\d+)\.(.+)$", module)
    if m and m.group(2) in _HF_TO_GGUF:
        return f"blk.{m.group(1)}.{_HF_TO_GGUF[m.group(2)]}.{leaf}"
    raise ModelError(f"The weight '{hf}' has no GGUF name; only plain llama models can be exported.")
