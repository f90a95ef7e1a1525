"""The GGUF header: metadata and tensor table read without loading a weight, and what is supported.

A small pure-Python reader, so an unsupported architecture, tensor type or tokenizer is refused
with a plain message before MLX loads any weight (`mx.load` reads the weights themselves).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ModelError
from .tokenizer import PRE_TOKENIZERS, pre_tokenizer

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
        pre_tokenizer(str(pre))  # raises, naming the ones it knows
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
