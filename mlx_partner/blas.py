"""A fast BLAS for MLX's CPU backend on Linux.

The Linux `mlx[cpu]` wheel links a reference BLAS (a 1024x1024 float32 matmul: ~5 GFLOPS on the
development machine) while OpenBLAS from the `cmeel-openblas` wheel gives ~200-350 GFLOPS. Symbols
can only be swapped before the dynamic loader resolves them, so the console entry point re-executes
itself once with OpenBLAS in LD_PRELOAD. OpenBLAS needs `libgfortran.so.5`, which the mlx wheel ships
under a hashed file name: a small folder of links under the user cache supplies the plain name.

On macOS MLX uses Metal and Accelerate, and none of this applies. `MLX_PARTNER_FAST_BLAS=0` turns
it off.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from pathlib import Path

from .workspace import partner_home

MARKER = "MLX_PARTNER_FAST_BLAS"


def _site_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


def applies() -> bool:
    """True where MLX runs on its Linux CPU wheel, the only place a BLAS swap helps."""
    return sys.platform.startswith("linux") and os.environ.get(MARKER, "") not in ("0", "off")


def fast_blas_env() -> dict[str, str] | None:
    """Environment additions that make a new process use OpenBLAS, or None if unavailable."""
    site = _site_dir("mlx")
    if site is None:
        return None
    openblas = site / "cmeel.prefix" / "lib" / "libopenblas.so.0"
    mlx_libs = site / "mlx_cpu.libs"
    gfortran = sorted(glob.glob(str(mlx_libs / "libgfortran-*.so.5*")))
    if not openblas.exists() or not gfortran:
        return None
    links = partner_home() / "blas"
    links.mkdir(parents=True, exist_ok=True)
    link = links / "libgfortran.so.5"
    if not link.exists() or os.path.realpath(link) != os.path.realpath(gfortran[0]):
        tmp = links / f".libgfortran.{os.getpid()}"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(gfortran[0])
        os.replace(tmp, link)
    preload = " ".join(p for p in [str(openblas), os.environ.get("LD_PRELOAD", "")] if p)
    library_path = os.pathsep.join(
        p for p in [str(links), str(mlx_libs), os.environ.get("LD_LIBRARY_PATH", "")] if p
    )
    return {"LD_PRELOAD": preload, "LD_LIBRARY_PATH": library_path, MARKER: "active"}


def is_active() -> bool:
    return os.environ.get(MARKER) == "active"


def reexec_with_fast_blas() -> None:
    """Re-run this process under OpenBLAS once, before MLX is imported. Returns if it cannot.

    Called only from the console entry point, never inside tests or a library caller.
    """
    if not applies() or is_active() or "mlx.core" in sys.modules:
        return
    try:
        env = fast_blas_env()
    except OSError:
        env = None
    if env is None:
        os.environ[MARKER] = "missing"
        return
    os.environ.update(env)
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    try:
        os.execv(sys.executable, [sys.executable, *argv[1:]])
    except OSError:
        os.environ[MARKER] = "missing"


def status_line() -> str | None:
    """One line for run headers: which BLAS MLX's CPU backend is using, and the fix if slow."""
    if not sys.platform.startswith("linux"):
        return None
    if is_active():
        return "CPU BLAS: OpenBLAS (fast path)."
    if os.environ.get(MARKER) in ("0", "off"):
        return "CPU BLAS: reference (MLX_PARTNER_FAST_BLAS=0); matmuls are ~40x slower."
    return (
        "CPU BLAS: reference BLAS, ~40x slower; install cmeel-openblas "
        "(pip install cmeel-openblas) and run through the mlx-partner command."
    )
