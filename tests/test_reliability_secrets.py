"""The API key never lands anywhere: not in the workspace, not in a log, not in an error message.

A full run (generate -> dataset -> train -> fuse -> chat -> eval -> runs) with a sentinel key in
the environment, then every byte of the workspace, of the per-user cache and of every command's
output is searched for it. `generate` runs as a real subprocess against a local server that
demands that very key; the MLX stages run in process (the key still in the environment). Then
servers that echo the key back in their error messages (401, 500), and an unreachable endpoint:
the messages shown and written are redacted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fake_anthropic import FakeAnthropic, api_error
from harness import cli_env, make_workspace, run_cli, walk_files

from mlx_partner.cli import cli

SENTINEL = "sk-ant-SENTINEL-api03-Zq8v0T3xKm5wYp2RjL9uHc4NaBe7GdFs"
MARKERS = (SENTINEL, "SENTINEL-api03", "Zq8v0T3xKm5wYp2RjL9uHc4NaBe7GdFs")


def leaks(blob: bytes | str) -> list[str]:
    data = blob.encode("utf-8", "replace") if isinstance(blob, str) else blob
    return [m for m in MARKERS if m.encode() in data]


def assert_nowhere(*roots: Path, outputs: list[str] = ()) -> int:
    """No marker of the key in any file under roots, nor in any output; returns files searched."""
    n = 0
    for path in walk_files(*roots):
        n += 1
        found = leaks(path.read_bytes())
        assert not found, f"the API key is in {path}"
    for i, text in enumerate(outputs):
        assert not leaks(text), f"the API key is in the output of command {i}:\n{text[:2000]}"
    return n


class EchoingServer(FakeAnthropic):
    """A badly behaved endpoint that repeats the caller's key in its error messages."""

    def __init__(self, status: int, **faults: Any) -> None:
        super().__init__(**faults)
        self.status = status
        self.seen_keys: list[str] = []

    def _route(self, method, path, body, headers, f):
        given = headers.get("x-api-key") or headers.get("authorization", "")
        if path == "/v1/messages":
            self.seen_keys.append(given)
            kind = "authentication_error" if self.status == 401 else "api_error"
            return self.status, api_error(kind, f"key {given} is not valid here (proxy echo: {given})"), {}, None
        return super()._route(method, path, body, headers, f)


def test_full_run_leaves_the_key_nowhere(tiny_model, tmp_path, monkeypatch, isolated_home):
    srv = FakeAnthropic(api_key=SENTINEL).start()  # anything but the sentinel gets 401
    try:
        ws = make_workspace(tmp_path / "ws")
        outputs = []
        gen = run_cli(["generate", "--pairs", "24", "--pairs-per-round", "4"], ws, cli_env(srv.url, key=SENTINEL),
                      logs=tmp_path / "logs")
        assert gen.returncode == 0, str(gen)
        outputs.append(gen.output)
        # (the Messages API calls; a loopback server is first asked what it is: GET /props, 404 here)
        assert all(r["status"] == 200 for r in srv.requests if r["path"].startswith("/v1/")), "the server saw the sentinel key and accepted it"

        monkeypatch.setenv("ANTHROPIC_API_KEY", SENTINEL)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.url)
        runner = CliRunner()
        steps = [
            ["dataset", "--base-model", str(tiny_model)],
            ["train", "--base-model", str(tiny_model), "--iters", "4", "--steps-per-eval", "2", "--batch-size", "2",
             "--run", "s", "--quiet"],
            ["fuse", "--run", "s"],
            ["chat", "--run", "s", "--prompt", "What is an ugly loaf?", "--temp", "0", "--max-tokens", "8"],
            ["eval", "--run", "s", "--limit", "2", "--probes", "1", "--max-tokens", "8", "--quiet"],
            ["runs", "--json"],
            ["sources", "--json"],
            ["generate", "--dry-run"],
        ]
        for args in steps:
            result = runner.invoke(cli, ["-w", str(ws), *args])
            assert result.exit_code == 0, f"{args}: {result.output}"
            outputs.append(result.output)
        assert (ws / "models" / "s").is_dir() and (ws / "eval" / "s").is_dir()

        searched = assert_nowhere(ws, isolated_home, tmp_path / "logs", outputs=outputs)
        assert searched > 20, "the run should have written its files"
    finally:
        srv.stop()


@pytest.mark.parametrize("variable", ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"])
@pytest.mark.parametrize("status", [401, 500])
def test_error_messages_redact_the_key(status, variable, tmp_path):
    srv = EchoingServer(status).start()
    try:
        ws = make_workspace(tmp_path / "ws")
        env = cli_env(srv.url, key=None, **{variable: SENTINEL, "MLX_PARTNER_GENERATE_MAX_RETRIES": "0"})
        result = run_cli(["generate", "--pairs", "8", "--pairs-per-round", "4"], ws, env, logs=tmp_path / "logs")
        assert result.returncode == 1, str(result)
        assert "Traceback" not in result.output
        assert any(SENTINEL in k for k in srv.seen_keys), "the key was sent, and echoed back"
        if status == 401:
            assert "rejected (401)" in result.stderr and variable in result.stderr, str(result)
        else:
            assert "redacted" in result.output, "the echoed key is shown redacted"
            ledger = (ws / "data" / "ledger.jsonl").read_text(encoding="utf-8")
            assert "not valid here" in ledger and "redacted" in ledger
        assert_nowhere(ws, tmp_path / "logs", outputs=[result.output])
    finally:
        srv.stop()


def test_unreachable_endpoint_is_one_line_without_the_key(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    env = cli_env("http://127.0.0.1:9", key=SENTINEL, MLX_PARTNER_GENERATE_MAX_RETRIES="0")
    result = run_cli(["generate", "--pairs", "4", "--pairs-per-round", "4"], ws, env, logs=tmp_path / "logs")
    assert result.returncode == 1 and "Traceback" not in result.output, str(result)
    assert "Could not reach the API at http://127.0.0.1:9" in result.stderr
    assert_nowhere(ws, tmp_path / "logs", outputs=[result.output])
