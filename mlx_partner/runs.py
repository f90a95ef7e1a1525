"""The run folder, adapters/<run>/: how a run is named, found and described on disk.

`train` writes a run; `fuse`, `chat`, `eval` and `retrain` read one, through this module only:

    adapters.safetensors, adapter_config.json   the best-validation weights, loadable by
                                                `python -m mlx_lm generate --adapter-path`
    checkpoints/                                 the last checkpoint (+ optimizer state) and a few
                                                 periodic ones, for `train --resume`
    manifest.json, loss.png, system_prompt.txt  what was trained on what, and how it went

`adapters/latest` (a symlink) and the plain-text `adapters/LATEST` (for file systems without
symlinks) name the newest finished run. manifest.json carries a "version"; a manifest written
before versions existed has none and reads as version 1, the same layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import __version__, blas
from .errors import TrainingError
from .memory import GB, available_memory
from .workspace import SYSTEM_PROMPT_FILE, Workspace, atomic_write_json, atomic_write_text

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1  # bump when the layout changes, and teach read_manifest the older ones
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapters.safetensors"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.safetensors"  # in checkpoints/: a copy of the newest checkpoint's weights
LOSS_PLOT = "loss.png"
SYSTEM_PROMPT = SYSTEM_PROMPT_FILE
LATEST_LINK = "latest"
LATEST_FILE = "LATEST"


def adapters_dir(ws: Workspace | Path | str) -> Path:
    """The workspace's adapters/ folder, given a Workspace or its root."""
    root = ws.root if isinstance(ws, Workspace) else Path(ws)
    return root / "adapters"


def run_dirs(ws: Workspace | Path | str) -> list[Path]:
    """Every folder under adapters/ with a manifest, by name (adapters/latest, a link, excluded)."""
    adapters = adapters_dir(ws)
    if not adapters.is_dir():
        return []
    return sorted((p.parent for p in adapters.glob(f"*/{MANIFEST}") if not p.parent.is_symlink()),
                  key=lambda p: p.name)


def find_run(ws: Workspace | Path | str, name: str | None = None) -> Path:
    """adapters/<name> (or a run folder's path), else the newest finished run (adapters/latest)."""
    adapters = adapters_dir(ws)
    if name:
        for path in (adapters / name, Path(name).expanduser()):
            if path.is_dir() and (path / ADAPTER_CONFIG).exists():
                return path.resolve()
        runs = sorted(p.parent.name for p in adapters.glob(f"*/{MANIFEST}")) if adapters.is_dir() else []
        hint = f"runs there: {', '.join(runs)}" if runs else "there are none yet; run `mlx-partner train` first"
        raise TrainingError(f"No run named '{name}' in {adapters}; {hint}.")
    link = adapters / LATEST_LINK
    if link.is_dir():
        return link.resolve()
    with contextlib.suppress(OSError):
        named = (adapters / LATEST_FILE).read_text(encoding="utf-8").strip()
        if named and (adapters / named).is_dir():
            return (adapters / named).resolve()
    raise TrainingError(f"No trained run yet in {adapters.parent}; run `mlx-partner train` first.")


def read_manifest(run_dir: Path | str) -> dict[str, Any]:
    """A run's manifest.json, with "version" filled in (1 when an older release wrote none)."""
    path = Path(run_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"{path.parent} has no {MANIFEST}, so it is not an mlx-partner run.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"Could not read {path} ({exc}).") from None
    if not isinstance(manifest, dict):
        raise TrainingError(f"Could not read {path} (not a JSON object).")
    found = manifest.setdefault("version", 1)
    if not isinstance(found, int) or found > MANIFEST_VERSION:
        raise TrainingError(f"{path} has manifest version {found!r}; this mlx-partner reads up to "
                            f"version {MANIFEST_VERSION}: upgrade mlx-partner to use this run.")
    return manifest


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically, stamped with the current MANIFEST_VERSION."""
    record = {"version": MANIFEST_VERSION, **{k: v for k, v in manifest.items() if k != "version"}}
    atomic_write_json(run_dir / MANIFEST, record)


def new_run_name(adapters: Path) -> str:
    """run-<date>-<time> (local time, as the user reads it), with -2, -3 ... if that is taken."""
    base = time.strftime("run-%Y%m%d-%H%M%S")
    name, n = base, 2
    while (adapters / name).exists():
        name, n = f"{base}-{n}", n + 1
    return name


def point_latest(adapters: Path, run: str) -> None:
    """Make adapters/LATEST and the adapters/latest symlink name `run` (each replaced atomically)."""
    atomic_write_text(adapters / LATEST_FILE, run + "\n")
    tmp = adapters / f".latest.{os.getpid()}"
    with contextlib.suppress(OSError):  # no symlinks here: LATEST is enough
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(run, target_is_directory=True)
        os.replace(tmp, adapters / LATEST_LINK)


def machine_info(on_cpu: bool) -> dict[str, Any]:
    """The machine a run trained on, for its manifest."""
    return {
        "system": platform.system(), "release": platform.release(), "machine": platform.machine(),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "memory_gb": round(available_memory()[0] / GB, 1), "backend": "cpu" if on_cpu else "gpu",
        "blas": blas.status_line(),
    }


def versions() -> dict[str, str]:
    """The versions of mlx-partner, mlx and mlx-lm, for a run's manifest."""
    out = {"mlx_partner": __version__}
    for key, dist in (("mlx", "mlx"), ("mlx_lm", "mlx-lm")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "unknown"
    return out
