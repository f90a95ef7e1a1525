"""`mlx-partner serve`: mlx-lm's OpenAI-compatible server on a run's fused model.

The server runs as the real CLI in a child process on the tiny model; requests are the OpenAI
chat-completions shape over plain HTTP (urllib), streamed (server-sent events) and not. The
partner's system prompt must be applied without the client sending one: the answer is the fused
model's greedy continuation of the prompt *with* the system prompt, token for token.
Refusals (no fused model, a stale or old one, a public host from partner.toml, a port in use)
happen before any model is loaded, in one line, exit 1.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness import cli_env, free_port, start_cli
from test_fuse import SYSTEM, make_run, write_test_split

from mlx_partner.cli import cli


@pytest.fixture(scope="module")
def fused_ws(tmp_path_factory, tiny_model) -> Path:
    root = tmp_path_factory.mktemp("serve") / "ws"
    root.mkdir()
    write_test_split(root)
    make_run(root, tiny_model)
    result = CliRunner().invoke(cli, ["-w", str(root), "fuse"])
    assert result.exit_code == 0, result.output
    return root


def post(url: str, body: dict, timeout: float = 120) -> urllib.request.Request:
    return urllib.request.urlopen(urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", "Authorization": "Bearer none"}),
        timeout=timeout)


def wait_healthy(base: str, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"serve exited early\n{proc.result()}")
        try:
            with urllib.request.urlopen(base.removesuffix("/v1") + "/health", timeout=5) as r:
                if json.loads(r.read()).get("status") == "ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"serve did not come up\n{proc.result()}")


def expected_answer(model_dir: Path, question: str, max_tokens: int) -> tuple[str, int]:
    """The fused model's greedy answer to `question` with the partner's system prompt given
    explicitly (as `chat` and training render it), and the prompt's length in tokens."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load

    from mlx_partner.prompts import chat_messages, encode_prompt, render_prompt

    model, tok = load(str(model_dir))
    messages = chat_messages(SYSTEM, [{"role": "user", "content": question}], tok)
    ids = encode_prompt(tok, render_prompt(tok, messages, add_generation_prompt=True))
    out = []
    for token, _ in generate_step(mx.array(ids), model, max_tokens=max_tokens, sampler=lambda lp: mx.argmax(lp, axis=-1)):
        if int(token) in tok.eos_token_ids:
            break
        out.append(int(token))
    return tok.decode(out), len(ids)


def test_serve_answers_openai_requests_as_the_partner(fused_ws):
    port = free_port()
    proc = start_cli(["serve", "--port", str(port)], fused_ws, cli_env(None, key=None))
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_healthy(base, proc)
        question = "What is slow work?"
        body = {"model": "anything-the-app-likes", "messages": [{"role": "user", "content": question}],
                "temperature": 0, "max_tokens": 12}
        with post(f"{base}/chat/completions", body) as r:
            reply = json.loads(r.read())
        with post(f"{base}/chat/completions", {**body, "stream": True}) as r:
            events = [line.decode().removeprefix("data: ").strip() for line in r if line.startswith(b"data: ")]
        with urllib.request.urlopen(f"{base}/models", timeout=30) as r:
            listed = json.loads(r.read())
    finally:
        proc.proc.terminate()
        proc.proc.wait(30)
    out = proc.result()
    assert f"Serving run r1 ({fused_ws / 'models' / 'r1'}) at {base}" in out.stdout
    assert f"curl {base}/chat/completions" in out.stdout and "no authentication" in out.stderr

    answer, prompt_tokens = expected_answer(fused_ws / "models" / "r1", question, 12)
    # mlx-lm's streaming BPE detokenizer drops the space a reply's first token starts with
    # (trim_space); the server answers through it, tokenizer.decode does not.
    answer = answer[1:] if answer.startswith(" ") else answer
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["choices"][0]["message"]["content"] == answer  # the partner's prompt was applied
    assert reply["usage"]["prompt_tokens"] == prompt_tokens
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == answer
    assert [m["id"] for m in listed["data"]] == ["r1"]


def test_a_clients_system_message_still_wins(fused_ws):
    from mlx_lm.utils import load_tokenizer

    from mlx_partner.prompts import encode_prompt, render_prompt

    port = free_port()
    proc = start_cli(["serve", "--port", str(port)], fused_ws, cli_env(None, key=None))
    base = f"http://127.0.0.1:{port}/v1"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    try:
        wait_healthy(base, proc)
        with post(f"{base}/chat/completions", {"model": "r1", "messages": messages, "max_tokens": 2}) as r:
            reply = json.loads(r.read())
    finally:
        proc.proc.terminate()
        proc.proc.wait(30)
    tok = load_tokenizer(fused_ws / "models" / "r1")
    assert reply["usage"]["prompt_tokens"] == len(encode_prompt(tok, render_prompt(tok, messages, True)))


def test_ctrl_c_stops_it_cleanly(fused_ws, tmp_path):
    """SIGINT, as Ctrl-C sends it: "Stopped.", exit 0 (mlx-lm's own server aborts here, exit -6)."""
    import signal

    port = free_port()
    proc = start_cli(["serve", "--port", str(port)], fused_ws, cli_env(None, key=None), logs=tmp_path / "logs")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.alive():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
                break
            except OSError:
                time.sleep(0.3)
        os.kill(proc.pid, signal.SIGINT)
        result = proc.wait(30)
    finally:
        proc.kill()
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.rstrip().endswith("Stopped.")


def test_port_in_use_is_one_line(fused_ws):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["-w", str(fused_ws), "serve", "--port", str(port)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip() == f"Error: Port {port} is in use on 127.0.0.1; stop what listens there or choose another with --port."


def test_refusals_name_the_command_that_fixes_them(tmp_path, tiny_model, fused_ws):
    root = tmp_path / "ws"
    root.mkdir()
    result = CliRunner().invoke(cli, ["-w", str(root), "serve"])
    assert result.exit_code == 1 and "no trained partner" in result.output
    make_run(root, tiny_model)
    result = CliRunner().invoke(cli, ["-w", str(root), "serve"])
    assert result.exit_code == 1 and "has no fused model" in result.output and "`mlx-partner fuse --run r1`" in result.output
    # A fused folder from before the system prompt went into the template.
    fused = root / "models" / "r1"
    fused.mkdir(parents=True)
    (fused / "config.json").write_text("{}")
    (fused / "mlx_partner.json").write_text(json.dumps({"kind": "fuse"}))
    result = CliRunner().invoke(cli, ["-w", str(root), "serve"])
    assert result.exit_code == 1 and "fused before its chat template carried" in result.output
    # Adapters newer than the fused model (a resumed run).
    old = time.time() - 3600
    os.utime(fused / "config.json", (old, old))
    result = CliRunner().invoke(cli, ["-w", str(root), "serve"])
    assert result.exit_code == 1 and "older than the run's adapters" in result.output
    result = CliRunner().invoke(cli, ["-w", str(root), "serve", "--run", "nope"])
    assert result.exit_code == 1 and "nope" in result.output


def test_a_public_host_must_be_given_explicitly(fused_ws, monkeypatch):
    monkeypatch.setenv("MLX_PARTNER_SERVE_HOST", "0.0.0.0")
    result = CliRunner().invoke(cli, ["-w", str(fused_ws), "serve"])
    assert result.exit_code == 1 and "no authentication" in result.output and "--host 0.0.0.0" in result.output


def test_plan_for_an_explicit_public_host(fused_ws):
    from mlx_partner.config import Settings
    from mlx_partner.serve import is_loopback, plan_serve
    from mlx_partner.workspace import Workspace

    port = free_port()
    plan = plan_serve(Workspace.at(fused_ws), None, "0.0.0.0", port, Settings())
    assert plan.base_url == f"http://0.0.0.0:{port}/v1" and not is_loopback(plan.host)
    assert plan.argv()[plan.argv().index("--temp") + 1] == "0.7"  # [chat] temperature, not mlx-lm's 0
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("192.168.1.2")
