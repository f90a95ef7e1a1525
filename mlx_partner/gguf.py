"""Converting a llama-architecture GGUF file (llama.cpp, Ollama, LM Studio) into an mlx-lm folder.

MLX reads GGUF itself (`mx.load(path, return_metadata=True)`): float tensors come back as arrays
and the block-quantized types it knows (Q4_0, Q4_1, Q8_0) come back as `weight`/`scales`/`biases`
triples in MLX's own affine group-32 layout, so they map onto mlx-lm quantized layers exactly.
What is left to do here is what llama.cpp changed on the way in:

- tensor names: `blk.N.attn_q` -> `model.layers.N.self_attn.q_proj` and so on;
- the rows of Q and K were permuted for llama.cpp's RoPE layout: undo it (rows only, so the
  weight, scales and biases of a quantized tensor alike);
- no `output.weight` means the embeddings are tied;
- the tokenizer lives in the metadata: rebuild `tokenizer.json` with the `tokenizers` library,
  either a byte-level BPE (`tokenizer.ggml.model` "gpt2": tokens + merges, with the pre-tokenizer
  llama.cpp names, e.g. SmolLM's digit splitting) or a SentencePiece BPE ("llama": tokens + scores,
  merges rebuilt from the scores, byte fallback);
- the model shape (heads, KV heads, RoPE base, ...) lives in `llama.*` metadata: write config.json.

The header is read first with a small pure-Python reader, so an unsupported architecture or tensor
type is refused with a plain message before any weight is loaded.

    python -m mlx_partner.gguf FILE.gguf OUT_DIR   # convert (the CLI: `mlx-partner models import`)
"""

from __future__ import annotations

import math
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ModelError

SUPPORTED_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")
TOKENIZER_MODELS = ("gpt2", "llama")  # byte-level BPE; SentencePiece BPE with byte fallback
SUPPORTED_ARCHITECTURES = ("llama",)

# ggml tensor type ids -> names (ggml.h); only the supported ones are converted.
GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
    34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}
# Bits per weight of the quantized types MLX unpacks (all in groups of 32).
QUANT_BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
GROUP_SIZE = 32


# --- reading the header --------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # row-major, as MLX returns it (GGUF stores the dims reversed)
    type: str


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def type_counts(self) -> Counter[str]:
        return Counter(t.type for t in self.tensors)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError
    return struct.unpack(fmt, data)[0]


def _read_str(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data.decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALARS:
        return _read(f, _SCALARS[vtype])
    if vtype == 8:
        return _read_str(f)
    if vtype == 9:
        etype, count = _read(f, "<I"), _read(f, "<Q")
        if etype in _SCALARS:  # read numeric arrays in one go
            fmt = _SCALARS[etype]
            size = struct.calcsize(fmt) * count
            data = f.read(size)
            if len(data) != size:
                raise EOFError
            return list(struct.unpack(f"<{count}{fmt[1]}", data))
        return [_read_value(f, etype) for _ in range(count)]
    raise ValueError(f"unknown metadata value type {vtype}")


def read_header(path: Path) -> GGUFHeader:
    """The metadata and tensor table of a GGUF file, without loading any weight."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelError(f"{path} is not a GGUF file (it does not start with 'GGUF').")
            version = _read(f, "<I")
            if version not in (2, 3):
                raise ModelError(f"{path} is GGUF version {version}; versions 2 and 3 are supported.")
            n_tensors, n_kv = _read(f, "<Q"), _read(f, "<Q")
            metadata = {}
            for _ in range(n_kv):
                key = _read_str(f)
                metadata[key] = _read_value(f, _read(f, "<I"))
            tensors = []
            for _ in range(n_tensors):
                name = _read_str(f)
                dims = [_read(f, "<Q") for _ in range(_read(f, "<I"))]
                type_id = _read(f, "<I")
                _read(f, "<Q")  # offset
                tensors.append(TensorInfo(name, tuple(reversed(dims)), GGML_TYPES.get(type_id, f"type {type_id}")))
    except (EOFError, ValueError, struct.error):
        raise ModelError(f"{path} is truncated or damaged: its GGUF header could not be read.") from None
    return GGUFHeader(version, metadata, tuple(tensors))


def check_supported(header: GGUFHeader, path: Path) -> None:
    """Refuse, in one sentence naming what was found, what this converter cannot do faithfully."""
    arch = header.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"{path.name} is a '{arch}' model; only {', '.join(SUPPORTED_ARCHITECTURES)}-architecture GGUF files can be "
            f"imported (for other models use an mlx-lm folder or a Hugging Face id)."
        )
    bad = sorted({t.type for t in header.tensors if t.type not in SUPPORTED_TYPES})
    if bad:
        example = next(t.name for t in header.tensors if t.type in bad)
        raise ModelError(
            f"{path.name} holds tensors of type {', '.join(bad)} (e.g. {example}); MLX reads only "
            f"{', '.join(SUPPORTED_TYPES)}: get a Q4_0, Q4_1, Q8_0 or F16 build of the model."
        )
    tok_model = header.metadata.get("tokenizer.ggml.model")
    if tok_model not in TOKENIZER_MODELS:
        raise ModelError(
            f"{path.name} has a '{tok_model}' tokenizer; only byte-level BPE ('gpt2': SmolLM, Llama 3) and "
            f"SentencePiece BPE ('llama': Llama 2, TinyLlama, Mistral) tokenizers can be converted: use an "
            f"mlx-lm folder or a Hugging Face id for this model."
        )
    pre = header.metadata.get("tokenizer.ggml.pre", "default")
    if tok_model == "gpt2" and pre not in PRE_TOKENIZERS:
        _pre_tokenizer(str(pre))  # raises, naming the ones it knows
    if tok_model == "llama" and "tokenizer.ggml.scores" not in header.metadata:
        raise ModelError(f"{path.name} has a SentencePiece tokenizer without scores, so its merges cannot be rebuilt.")
    if any(t.name == "rope_freqs.weight" for t in header.tensors):
        raise ModelError(
            f"{path.name} uses Llama-3.1-style RoPE frequency scaling (rope_freqs), which this importer cannot "
            f"map to mlx-lm: use the model's mlx-community build instead."
        )
    scaling = header.metadata.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ModelError(f"{path.name} uses '{scaling}' RoPE scaling; only none or linear can be imported.")


# --- weights -------------------------------------------------------------------------------------

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


# --- tokenizer -----------------------------------------------------------------------------------

# llama.cpp's pre-tokenizer names -> the Hugging Face pre-tokenizer they stand for.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = ("gpt2", "default", "smollm", "starcoder", "llama-bpe", "llama3")


def _pre_tokenizer(pre: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in ("gpt2", "default"):
        return byte_level
    if pre in ("smollm", "starcoder"):
        # SmolLM/StarCoder split every digit on its own before the GPT-2 regex.
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("llama-bpe", "llama3"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    raise ModelError(
        f"The GGUF tokenizer uses the '{pre}' pre-tokenizer, which this importer does not know "
        f"(it knows {', '.join(PRE_TOKENIZERS)})."
    )


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges for a SentencePiece vocabulary, which stores scores instead of merges.

    Every split of a normal piece into two vocabulary pieces is a merge, ranked by the score of
    the piece it makes (higher first): how Hugging Face converts SentencePiece BPE models.
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for piece, pid in vocab.items():
        if types[pid] != 1:
            continue
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                found.append((-scores[pid], vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def build_tokenizer(meta: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A `tokenizers.Tokenizer` and the tokenizer_config.json entries, from GGUF metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types = meta.get("tokenizer.ggml.token_type")
    types = [int(t) for t in (types.tolist() if hasattr(types, "tolist") else types or [1] * len(tokens))]
    vocab = {t: i for i, t in enumerate(tokens)}
    spm = meta.get("tokenizer.ggml.model") == "llama"
    if spm:
        # SentencePiece BPE (Llama 2 family): spaces are '▁', unknown bytes fall back to <0xXX>.
        scores = meta["tokenizer.ggml.scores"]
        scores = [float(x) for x in (scores.tolist() if hasattr(scores, "tolist") else scores)]
        unk_id = meta.get("tokenizer.ggml.unknown_token_id")
        unk = tokens[int(unk_id)] if unk_id is not None else None
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=spm_merges(tokens, scores, types), unk_token=unk,
                                         fuse_unk=True, byte_fallback=True))
        prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        tokenizer.normalizer = normalizers.Sequence(
            ([normalizers.Prepend("▁")] if prefix else []) + [normalizers.Replace(" ", "▁")])
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
            + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    else:
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        tokenizer.pre_tokenizer = _pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")))
        tokenizer.decoder = decoders.ByteLevel()
    # Control (3) and user-defined (4) tokens are matched whole, before BPE.
    kinds = dict(zip(tokens, types, strict=False))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in kinds.items() if k == 3])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in kinds.items() if k == 4])

    from tokenizers import processors

    def token(key: str) -> str | None:
        idx = meta.get(key)
        return None if idx is None else tokens[int(idx.item() if hasattr(idx, "item") else idx)]

    bos, eos, pad, unk = (token(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding", "unknown"))
    # SentencePiece models add BOS unless told otherwise; byte-level BPE ones do not.
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", spm))
    if add_bos and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))]
        )
    elif not spm:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad or eos,
        "unk_token": unk,
        "add_bos_token": add_bos,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("llama.context_length", 2048)),
    }
    if spm:
        del tokenizer_config["add_prefix_space"]  # a byte-level option; the normalizer adds the '▁'
    if "tokenizer.chat_template" in meta:
        tokenizer_config["chat_template"] = str(meta["tokenizer.chat_template"])
    return tokenizer, tokenizer_config


# --- the whole conversion ------------------------------------------------------------------------


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
    import json

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


# --- export: an mlx-lm llama folder -> GGUF (F16), for llama.cpp / Ollama / LM Studio --------------
#
# mlx-lm's own exporter writes a SentencePiece vocabulary with no merges, which is wrong for
# byte-level BPE models (SmolLM2, Llama 3): this is the inverse of the import above, for those.

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


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str | None:
    """llama.cpp's name for a Hugging Face byte-level pre-tokenizer, or None if it has none."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and (parts[0].get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT:
        return "llama-bpe"
    return None


def export_gguf(model_dir: Path, out_path: Path, weights: dict[str, Any] | None = None,
                config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a float16 GGUF for a byte-level BPE llama model folder; returns its metadata.

    `weights` (HF names, float) and `config` default to the folder's own. Raises ModelError for
    what this cannot write faithfully (another architecture, a quantized model, an unknown tokenizer).
    """
    import json

    import mlx.core as mx

    config = config or json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ModelError(f"Only llama models can be exported to GGUF here, and this one is '{config.get('model_type')}'.")
    if config.get("quantization"):
        raise ModelError("A quantized model cannot be exported to GGUF here; fuse without --quantize.")
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
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
    template = tok_config.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").exists():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")

    def u32(x: int) -> Any:
        return mx.array(int(x), dtype=mx.uint32)

    def f32(x: float) -> Any:
        return mx.array(float(x), dtype=mx.float32)

    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    meta: dict[str, Any] = {
        "general.architecture": "llama",
        "general.name": model_dir.name,
        "general.file_type": u32(1),  # mostly F16
        "general.quantization_version": u32(2),
        "llama.vocab_size": u32(len(tokens)),
        "llama.context_length": u32(config.get("max_position_embeddings", 2048)),
        "llama.embedding_length": u32(config["hidden_size"]),
        "llama.block_count": u32(config["num_hidden_layers"]),
        "llama.feed_forward_length": u32(config["intermediate_size"]),
        "llama.attention.head_count": u32(n_head),
        "llama.attention.head_count_kv": u32(n_kv),
        "llama.attention.key_length": u32(head_dim),
        "llama.attention.value_length": u32(head_dim),
        "llama.rope.dimension_count": u32(head_dim),
        "llama.rope.freq_base": f32(config.get("rope_theta", 10000.0)),
        "llama.attention.layer_norm_rms_epsilon": f32(config.get("rms_norm_eps", 1e-5)),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": mx.array(token_type, dtype=mx.int32),
        "tokenizer.ggml.add_bos_token": mx.array(bool(tok_config.get("add_bos_token", False))),
        "tokenizer.ggml.add_space_prefix": mx.array(False),
    }
    scaling = config.get("rope_scaling") or {}
    if scaling:
        if scaling.get("type", scaling.get("rope_type")) != "linear":
            raise ModelError(f"RoPE scaling '{scaling}' cannot be written to GGUF here.")
        meta["llama.rope.scaling.type"] = "linear"
        meta["llama.rope.scaling.factor"] = f32(scaling["factor"])
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("padding", "pad_token"), ("unknown", "unk_token")):
        value = tok_config.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        if value in vocab:
            meta[f"tokenizer.ggml.{key}_token_id"] = u32(vocab[value])
    if template:
        meta["tokenizer.chat_template"] = template

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
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mx.save_gguf(str(out_path), tensors, meta)
    return meta
