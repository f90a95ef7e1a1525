"""GGUF files (llama.cpp, Ollama, LM Studio) to and from mlx-lm llama folders.

    header.py     read_header, check_supported: the metadata and tensor table, no weights loaded
    reader.py     convert_gguf: a GGUF file -> an mlx-lm folder (`mlx-partner models import`)
    writer.py     export_gguf: an mlx-lm folder -> a float16 GGUF (`mlx-partner fuse --gguf`)
    layout.py     tensor names and the Q/K row permutation, both ways
    tokenizer.py  the GGUF tokenizer as a Hugging Face one, and its pre-tokenizer's name back

Import from the defining module; the names below are the package's public API.
"""

from .header import GGUFHeader, TensorInfo, check_supported, read_header
from .reader import Converted, convert_gguf, convert_weights, llama_config
from .writer import export_gguf

__all__ = [
    "Converted",
    "GGUFHeader",
    "TensorInfo",
    "check_supported",
    "convert_gguf",
    "convert_weights",
    "export_gguf",
    "llama_config",
    "read_header",
]
