"""`train` on more than one machine: MLX's own `mlx.launch`, here two local processes over the ring.

The slow test runs the real CLI as two ranks (`mlx.launch --backend ring -n 2`, data-parallel
LoRA on the tiny model); each rank's output and exit status go to files of its own. Both finish;
only rank 0 says anything and writes the run; the manifest records two processes over the ring;
the adapters load in mlx-lm. See docs/DISTRIBUTED.md for the same on two Macs.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import write_data

from mlx_partner.train.loop import launch_backend


@pytest.mark.parametrize("env, backend", [
    ({"MLX_HOSTFILE": "/tmp/x", "MLX_RANK": "1"}, "ring"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "mpi"),
    ({"PMI_SIZE": "2"}, "mpi"),
    ({"MLX_JACCL_COORDINATOR": "10.0.0.1:32323", "MLX_IBV_DEVICES": "/tmp/y"}, "jaccl"),
    ({"NCCL_HOST_IP": "10.0.0.1", "MLX_WORLD_SIZE": "2"}, "nccl"),
    ({}, "unknown"),
])
def test_launch_backend_from_what_mlx_launch_sets(env, backend):
    assert launch_backend(env) == backend


def _free_port_pair() -> int:
    """A port p with p + 1 free as well (the ring listens on one port per rank)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free ports")


@pytest.mark.slow
def test_train_under_mlx_launch_ring_with_two_processes(tiny_model, tmp_path):
    ws = write_data(tmp_path / "ws")
    logs = tmp_path / "logs"
    logs.mkdir()
    train = [sys.executable, "-m", "mlx_partner", "-w", str(ws.root), "train", "--base-model", str(tiny_model),
             "--iters", "6", "--batch-size", "4", "--steps-per-eval", "2", "--run", "dist"]
    # Each rank's stdout, stderr and exit status in files of its own ($MLX_RANK is set by mlx.launch).
    rank = f"{shlex.join(train)} >{logs}/out-$MLX_RANK 2>{logs}/err-$MLX_RANK; echo $? >{logs}/rc-$MLX_RANK"
    launch = Path(sys.executable).with_name("mlx.launch")
    done = subprocess.run([str(launch), "--backend", "ring", "-n", "2", "-p", str(_free_port_pair()), "--",
                           "bash", "-c", rank], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    read = lambda name: (logs / name).read_text() if (logs / name).exists() else "(missing)"  # noqa: E731
    report = f"mlx.launch: {done.returncode}\n{done.stderr[-2000:]}\n" + "\n".join(
        f"--- {n}\n{read(n)[-1500:]}" for n in ("rc-0", "out-0", "err-0", "rc-1", "out-1", "err-1"))
    assert read("rc-0").strip() == "0" and read("rc-1").strip() == "0", report  # both ranks finished
    out0 = read("out-0")
    assert out0.count("Adapters: ") == 1 and out0.count("Best validation loss") == 1, report
    assert read("out-1") == "" and read("err-1") == "", "only rank 0 prints: " + report
    assert "6/6 iterations" in out0 and "Memory plan" in read("err-0"), report

    runs = [p.name for p in ws.adapters_dir.iterdir() if p.is_dir() and not p.is_symlink()]
    assert runs == ["dist"], runs
    m = json.loads((ws.adapters_dir / "dist" / "manifest.json").read_text())
    assert m["status"] == "finished" and m["iterations_done"] == 6
    assert m["distributed"] == {"processes": 2, "backend": "ring"}
    assert not [p.name for p in (ws.adapters_dir / "dist").rglob(".*") if p.is_file()], "no temp file left behind"

    from mlx_lm import generate, load

    model, tokenizer = load(str(tiny_model), adapter_path=str(ws.adapters_dir / "dist"))
    assert isinstance(generate(model, tokenizer, "Hello", max_tokens=3), str)
