"""The fast CPU BLAS: a re-executed process really runs MLX on OpenBLAS, with correct results."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlx_partner import blas

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or blas.fast_blas_env() is None,
    reason="the BLAS swap applies to MLX's Linux CPU wheel with cmeel-openblas installed",
)

PROBE = """
import numpy as np
from mlx_partner.blas import reexec_with_fast_blas, status_line
reexec_with_fast_blas()
import mlx.core as mx
a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
ok = np.allclose(np.array(mx.array(a) @ mx.array(a)), a @ a, atol=1e-3)
maps = open('/proc/self/maps').read()
print('openblas' if 'libopenblas' in maps else 'reference', ok, status_line())
"""


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", blas.MARKER)}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_reexec_loads_openblas_and_matmuls_stay_correct():
    line = _run({})
    assert line.startswith("openblas True")
    assert "OpenBLAS" in line


def test_can_be_turned_off():
    line = _run({blas.MARKER: "0"})
    assert line.startswith("reference True")
    assert "MLX_PARTNER_FAST_BLAS=0" in line
