"""The merge: a run's adapters added into its base's weights, the way `mlx_lm fuse` does it.

    model, tokenizer, config = fuse_model(base_path, run_dir, "float32")

A quantized base is dequantized first, so the adapter is added to real weights; the model is
merged in float32 and rounded once, at the end, to the dtype it is stored in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fuse_model(base_path: Path, run_dir: Path, dtype: str) -> tuple[Any, Any, dict[str, Any]]:
    """Base + adapters -> a model with the adapters merged, in `dtype` ("float32", "float16",
    "bfloat16"); a quantized base is dequantized first. Returns (model, tokenizer, config)."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import dequantize_model, load

    model, tokenizer, config = load(str(base_path), return_config=True)
    if "quantization" in config or "quantization_config" in config:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    model.set_dtype(mx.float32)  # merge in float32; round once, at the end
    model = load_adapters(model, str(run_dir))
    fused = [(name, module.fuse(dequantize=True)) for name, module in model.named_modules() if hasattr(module, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    model.set_dtype(getattr(mx, dtype))
    config["torch_dtype"] = dtype
    return model, tokenizer, config


def requantize(base_path: Path, run_dir: Path, dtype: str, quant: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A second merged copy, quantized like the base (nn.quantize works in place, so the float
    model is kept to fall back on). Returns (model, config)."""
    from mlx_lm.utils import quantize_model

    copy, _, copy_config = fuse_model(base_path, run_dir, dtype)
    return quantize_model(copy, copy_config, quant.get("group_size"), quant.get("bits"), mode=quant.get("mode", "affine"))


def output_dtype(base_config: dict[str, Any], on_cpu: bool) -> str:
    """float32 on a CPU backend (what chat computes in there); else the base's own float type."""
    if on_cpu:
        return "float32"
    stored = str(base_config.get("torch_dtype") or base_config.get("dtype") or "float16")
    return stored if stored in ("float32", "float16", "bfloat16") else "float16"


def save_folder(path: Path, model: Any, tokenizer: Any, config: dict[str, Any]) -> None:
    """An mlx-lm model folder: weights, config.json, tokenizer files (chat template included)."""
    from mlx_lm.utils import save_config, save_model

    save_model(path, model)
    save_config(dict(config), config_path=path / "config.json")
    tokenizer.save_pretrained(str(path))


def release() -> None:
    """Give a dropped model's memory back before the next one loads (one model at a time)."""
    import gc

    import mlx.core as mx

    gc.collect()
    mx.clear_cache()
