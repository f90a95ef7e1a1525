"""Finding and loading base models, the way every MLX stage needs them.

A model reference is a local mlx-lm folder, a name from the local models cache (`models list`;
filled by `models import FILE.gguf`), or a Hugging Face hub id (which needs the network the first
time, then loads from the hub cache offline).

On a CPU backend (Linux `mlx[cpu]`) quantized and half-precision matmuls are 20-30x slower than
float32, so models are dequantized and cast to float32 there; on Apple silicon they load as they
are (QLoRA on a 4-bit base).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError
from .workspace import partner_home


def models_cache() -> Path:
    """Where imported models live: $MLX_PARTNER_HOME/models/<name>/."""
    return partner_home() / "models"


def is_cpu_backend() -> bool:
    """True when MLX computes on the CPU (no Metal, no CUDA)."""
    import mlx.core as mx

    return mx.default_device().type == mx.DeviceType.cpu


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def resolve_model(ref: str, workspace_root: Path | None = None) -> Path:
    """Turn a model reference into a local folder, or raise ModelError saying how to get one."""
    ref = str(ref).strip()
    if not ref:
        raise ModelError("No base model is set; pass --base-model or set base_model in [train] of partner.toml.")
    candidates = [Path(ref).expanduser()]
    if workspace_root is not None and not Path(ref).is_absolute():
        candidates.append(workspace_root / ref)
    for path in candidates:
        if path.suffix.lower() == ".gguf" and path.is_file():
            raise ModelError(
                f"{ref} is a GGUF file; import it first with `mlx-partner models import {ref}`, then use the name it prints."
            )
        if _is_model_dir(path):
            return path.resolve()
        if path.is_dir():
            raise ModelError(f"{path} has no config.json, so it is not an mlx-lm model folder.")
    cached = models_cache() / ref
    if _is_model_dir(cached):
        return cached
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        return _from_hub(ref)
    raise ModelError(
        f"Model '{ref}' was not found: give a local mlx-lm folder, a hub id such as "
        f"mlx-community/Qwen2.5-3B-Instruct-4bit, or import a GGUF with `mlx-partner models import`."
    )


def _from_hub(repo_id: str) -> Path:
    """A hub model from the local hub cache, or downloaded when the network allows."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - mlx-lm depends on it
        raise ModelError(f"Cannot fetch {repo_id}: huggingface_hub is not installed.") from None
    patterns = ["*.json", "*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        raise ModelError(
            f"Model {repo_id} is not in the local hub cache and HF_HUB_OFFLINE is set; download it once "
            f"with network, use a local folder, or import a GGUF with `mlx-partner models import`."
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise ModelError(
            f"Could not download {repo_id} ({type(exc).__name__}); a hub id needs the network the first "
            f"time: connect once, or use a local folder, or import a GGUF with `mlx-partner models import`."
        ) from None


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    config: dict[str, Any]
    path: Path
    dtype: str  # what the weights compute in, e.g. "float32" or "4-bit"
    note: str  # for run headers: how and why it was loaded so


def load_model(ref: str | Path, adapter_path: Path | None = None, workspace_root: Path | None = None,
               float32_on_cpu: bool = True) -> LoadedModel:
    """Load a model (and optionally LoRA adapters) ready for the current backend."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import dequantize_model, load

    path = resolve_model(str(ref), workspace_root)
    try:
        model, tokenizer, config = load(str(path), return_config=True)
    except Exception as exc:
        raise ModelError(f"Could not load the model at {path} ({type(exc).__name__}: {exc}).") from None
    quantized = "quantization" in config or "quantization_config" in config
    if float32_on_cpu and is_cpu_backend():
        if quantized:
            model = dequantize_model(model)
        model.set_dtype(mx.float32)
        dtype = "float32"
        note = "CPU backend: weights dequantized/cast to float32 (quantized and half matmuls are slow on CPU)."
    else:
        bits = (config.get("quantization") or {}).get("bits")
        dtype = f"{bits}-bit" if bits else str(_first_dtype(model))
        note = f"{'Metal' if not is_cpu_backend() else 'CPU'} backend: weights as stored ({dtype})."
    if adapter_path is not None:
        try:
            model = load_adapters(model, str(adapter_path))
        except Exception as exc:
            raise ModelError(f"Could not load adapters from {adapter_path} ({type(exc).__name__}: {exc}).") from None
    model.eval()
    mx.eval(model.parameters())
    return LoadedModel(model, tokenizer, config, path, dtype, note)


def _first_dtype(model: Any) -> Any:
    from mlx.utils import tree_flatten

    for _, value in tree_flatten(model.parameters()):
        return value.dtype
    return "unknown"


def read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"Could not read {path / 'config.json'} ({exc}).") from None
