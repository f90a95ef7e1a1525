"""The partner's system prompt inside the fused model: its chat template's default (mlx-lm,
transformers, Jinja), and the Ollama Modelfile that renders what that template renders.

Every check renders: the fused folder's template with no system message must give the very
tokens training saw with the system prompt given, for the tiny llama (ChatML, a Llama-3-style
template with a date line, a Gemma-style one with no system role) and the tiny qwen2 (Qwen2.5's
own template, whose default would be "You are Qwen, created by Alibaba Cloud...").

The Modelfile's TEMPLATE is a Go template; `render_go` below is a small renderer for the subset
`fuse` writes (range over .Messages, if / else if / end, eq / not / len / slice, fields, string
literals), so the test needs no Ollama.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_fuse import make_run
from tiny_model import QWEN_DEFAULT_SYSTEM, build_tiny_model

from mlx_partner.cli import cli
from mlx_partner.fuse.template import jinja_string, with_partner_default
from mlx_partner.prompts import chat_messages, encode_prompt, render_prompt, training_tokens

TRICKY = ('You are Ada\'s partner. She says "slow is honest" \\ and {{ never }} {% this %}.\n\n'
          "Second paragraph: café, naïve, 日本語 — and a tab\there.")


def fuse_run(tmp_path: Path, base: Path, system: str, gguf: bool = False) -> Path:
    root = tmp_path / "ws"
    root.mkdir(exist_ok=True)
    run = make_run(root, base)
    (run / "system_prompt.txt").write_text(system)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "system_prompt": system}))
    result = CliRunner().invoke(cli, ["-w", str(root), "fuse"] + (["--gguf"] if gguf else []))
    assert result.exit_code == 0, result.output
    return root / "models" / "r1"


@pytest.fixture(scope="module")
def variants(tmp_path_factory, tiny_model, tiny_qwen2) -> dict[str, Path]:
    out = {"chatml": tiny_model, "qwen2": tiny_qwen2}
    for template in ("llama3", "gemma"):
        out[template] = build_tiny_model(tmp_path_factory.mktemp(template) / template, template=template)
    return out


def load_tok(path: Path):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(path)


@pytest.mark.parametrize("kind", ["chatml", "qwen2", "llama3", "gemma"])
def test_no_system_message_gives_the_tokens_training_saw(kind, variants, tmp_path):
    fused = fuse_run(tmp_path, variants[kind], TRICKY)
    base, tok = load_tok(variants[kind]), load_tok(fused)
    turns = [{"role": "user", "content": "What is slow work?"}, {"role": "assistant", "content": "Honest work."}]
    trained = training_tokens(base, {"messages": chat_messages(TRICKY, turns, base)})[0]
    assert training_tokens(tok, {"messages": turns})[0] == trained
    prompt = render_prompt(tok, turns[:1], add_generation_prompt=True)
    assert prompt == render_prompt(base, chat_messages(TRICKY, turns[:1], base), add_generation_prompt=True)
    assert prompt.count(TRICKY) == 1 and QWEN_DEFAULT_SYSTEM not in prompt
    assert encode_prompt(tok, prompt) == encode_prompt(base, render_prompt(base, chat_messages(TRICKY, turns[:1], base), True))
    # Both places hold the same template, and mlx_partner.json says the default is in it.
    config = json.loads((fused / "tokenizer_config.json").read_text())
    assert config["chat_template"] == (fused / "chat_template.jinja").read_text()
    assert json.loads((fused / "mlx_partner.json").read_text())["default_system_prompt"] is True


@pytest.mark.parametrize("kind", ["chatml", "qwen2", "llama3"])
def test_a_clients_own_system_message_wins(kind, variants, tmp_path):
    fused = fuse_run(tmp_path, variants[kind], TRICKY)
    base, tok = load_tok(variants[kind]), load_tok(fused)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    mine = render_prompt(tok, msgs, add_generation_prompt=True)
    assert mine == render_prompt(base, msgs, add_generation_prompt=True) and TRICKY not in mine


def test_gemma_folds_once_even_when_chat_already_folded(variants, tmp_path):
    """`chat` folds the prompt into the first user turn itself for templates with no system role;
    the template must not fold it a second time."""
    fused = fuse_run(tmp_path, variants["gemma"], TRICKY)
    tok = load_tok(fused)
    folded = chat_messages(TRICKY, [{"role": "user", "content": "Hi"}], tok)
    assert render_prompt(tok, folded, True).count(TRICKY) == 1
    assert render_prompt(tok, [{"role": "user", "content": "Hi"}], True) == render_prompt(tok, folded, True)


def test_qwen_tools_prompt_carries_the_partner_too(variants, tmp_path):
    fused = fuse_run(tmp_path, variants["qwen2"], "You are Ada's partner.")
    tok = load_tok(fused)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tools=tools, tokenize=False,
                                   add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are Ada's partner.\n\n# Tools") and "Qwen" not in text


def test_refusing_twice_keeps_one_prelude_and_jinja_literals_round_trip():
    from jinja2 import Environment

    base = "{% for m in messages %}[{{ m['role'] }}:{{ m['content'] }}]{% endfor %}"
    once = with_partner_default(base, "first", True)
    twice = with_partner_default(once, TRICKY, True)
    assert twice.count("mlx-partner:") == 1 and "first" not in twice
    render = Environment().from_string(twice).render
    assert render(messages=[{"role": "user", "content": "q"}]) == f"[system:{TRICKY}][user:q]"
    assert render(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]) == "[system:s][user:q]"
    assert render(messages=[]) == f"[system:{TRICKY}]"
    assert Environment().from_string("{{ " + jinja_string(TRICKY) + " }}").render() == TRICKY
    assert with_partner_default(base, "", True) == base  # no system prompt: the template as it was


# --- the Modelfile -------------------------------------------------------------------------------


def parse_modelfile(text: str) -> dict:
    """FROM, SYSTEM, TEMPLATE (triple-quoted, verbatim) and PARAMETERs, as Ollama's parser reads them."""
    out: dict = {"parameters": []}
    for m in re.finditer(r'^(FROM|SYSTEM|TEMPLATE|PARAMETER)[ \t]+("""(.*?)"""|[^\n]*)$', text, re.M | re.S):
        command, value = m.group(1), m.group(3) if m.group(3) is not None else m.group(2).strip()
        if command == "PARAMETER":
            key, _, arg = value.partition(" ")
            out["parameters"].append((key, arg.strip().strip('"')))
        else:
            out[command.lower()] = value
    return out


_ACTION = re.compile(r"{{(.*?)}}", re.S)


def render_go(template: str, messages: list[dict]) -> str:
    """Render the Go-template subset `fuse` writes, for Ollama's .Messages."""
    tokens, pos = [], 0
    for m in _ACTION.finditer(template):
        tokens.append(("text", template[pos:m.start()]))
        tokens.append(("action", m.group(1).strip()))
        pos = m.end()
    tokens.append(("text", template[pos:]))
    tree, rest = _parse(tokens, 0)
    assert rest == len(tokens)
    out: list[str] = []
    _run(tree, {"$": {"Messages": messages}}, out)
    return "".join(out)


def _parse(tokens, i, stop=("end",)):
    nodes = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
        elif value in stop or value.startswith("else"):
            return nodes, i
        elif value.startswith("range "):
            m = re.fullmatch(r"range \$(\w+), \$(\w+) := \.Messages", value)
            body, i = _parse(tokens, i + 1)
            nodes.append(("range", m.groups(), body))
            i += 1
        elif value.startswith("if "):
            branches, cond = [], value[3:]
            while True:
                body, i = _parse(tokens, i + 1)
                branches.append((cond, body))
                if tokens[i][1] == "end":
                    break
                cond = tokens[i][1][len("else if "):] if tokens[i][1].startswith("else if ") else "true"
            nodes.append(("if", branches))
            i += 1
        else:
            nodes.append(("expr", value))
            i += 1
    return nodes, i


def _eval(expr: str, env: dict):
    expr = expr.strip()
    if expr.startswith("(") and expr.endswith(")"):
        return _eval(expr[1:-1], env)
    if expr == "true":
        return True
    if m := re.fullmatch(r'"((?:[^"\\]|\\.)*)"', expr):
        return m.group(1)
    if re.fullmatch(r"-?\d+", expr):
        return int(expr)
    if m := re.fullmatch(r"\$(\w*)((?:\.\w+)*)", expr):
        value = env[m.group(1) or "$"]
        for field in filter(None, m.group(2).split(".")):
            value = value[field.lower()] if isinstance(value, dict) and field.lower() in value else value[field]
        return value
    func, args = expr.split(" ", 1)
    parts = re.findall(r'\([^()]*(?:\([^()]*\))?[^()]*\)|"[^"]*"|\S+', args)
    vals = [_eval(p, env) for p in parts]
    return {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not a,
            "and": lambda *a: all(a), "len": len, "slice": lambda xs, i: xs[i:]}[func](*vals)


def _run(nodes, env, out):
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            if m := re.fullmatch(r"\$(\w+) := (.*)", node[1]):
                env[m.group(1)] = _eval(m.group(2), env)
            else:
                out.append(str(_eval(node[1], env)))
        elif node[0] == "range":
            (i_name, m_name), body = node[1], node[2]
            for i, message in enumerate(env["$"]["Messages"]):
                _run(body, {**env, i_name: i, m_name: message}, out)
        else:
            for cond, body in node[1]:
                if _eval(cond, env):
                    _run(body, env, out)
                    break


@pytest.mark.parametrize("kind", ["chatml", "qwen2", "llama3"])
def test_modelfile_renders_what_the_chat_template_renders(kind, variants, tmp_path):
    fused = fuse_run(tmp_path, variants[kind], TRICKY, gguf=True)
    parsed = parse_modelfile((fused / "Modelfile").read_text())
    assert parsed["from"] == "./r1.gguf" and (fused / "r1.gguf").exists()
    assert parsed["system"] == TRICKY
    tok = load_tok(fused)
    # Ollama puts SYSTEM first when the client sends no system message; a two-turn conversation.
    conversation = [{"role": "system", "content": parsed["system"]},
                    {"role": "user", "content": "What is slow work?"},
                    {"role": "assistant", "content": "Honest work, done with attention."},
                    {"role": "user", "content": "And fast work?\nSay it in two lines."}]
    expected = render_prompt(tok, conversation, add_generation_prompt=True)
    assert render_go(parsed["template"], conversation) == expected
    # ... which is also what the template renders when the client sends no system message at all.
    assert render_prompt(tok, conversation[1:], add_generation_prompt=True) == expected
    params = dict(parsed["parameters"])
    stops = [v for k, v in parsed["parameters"] if k == "stop"]
    assert stops and all(s in expected for s in stops)
    assert tok.eos_token in stops
    assert params["temperature"] == "0.7" and params["top_p"] == "0.9" and params["num_predict"] == "512"


def with_bos_post_processor(base: Path, bos: str) -> None:
    """The tokenizer adds BOS itself, as Llama 3's tokenizer.json does (a TemplateProcessing)."""
    tok = json.loads((base / "tokenizer.json").read_text())
    bos_id = next(a["id"] for a in tok["added_tokens"] if a["content"] == bos)
    first = {"SpecialToken": {"id": bos, "type_id": 0}}
    tok["post_processor"] = {
        "type": "TemplateProcessing", "single": [first, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [first, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    (base / "tokenizer.json").write_text(json.dumps(tok))


def test_modelfile_takes_chat_settings_and_strips_a_bos_the_runtime_adds(variants, tmp_path):
    """A Llama-3-style model whose tokenizer adds BOS: the GGUF says add_bos_token, so the
    TEMPLATE must not write <|begin_of_text|> a second time."""
    from mlx_partner.gguf.header import read_header

    base = tmp_path / "llama3-bos"
    shutil.copytree(variants["llama3"], base)
    with_bos_post_processor(base, "<|begin_of_text|>")
    root = tmp_path / "ws"
    root.mkdir()
    (root / "partner.toml").write_text("[chat]\ntemperature = 0.3\nmax_tokens = 200\nmax_kv_size = 4096\n")
    make_run(root, base)
    result = CliRunner().invoke(cli, ["-w", str(root), "fuse", "--gguf"])
    assert result.exit_code == 0, result.output
    fused = root / "models" / "r1"
    assert f"Ollama: ollama create partner-r1 -f {fused / 'Modelfile'}" in result.stdout
    assert read_header(fused / "r1.gguf").metadata["tokenizer.ggml.add_bos_token"] is True
    parsed = parse_modelfile((fused / "Modelfile").read_text())
    tok = load_tok(fused)
    conversation = [{"role": "system", "content": parsed["system"]}, {"role": "user", "content": "Hi"}]
    expected = render_prompt(tok, conversation, add_generation_prompt=True)
    assert expected.startswith("<|begin_of_text|>")
    assert render_go(parsed["template"], conversation) == expected.removeprefix("<|begin_of_text|>")
    params = dict(parsed["parameters"])
    assert (params["temperature"], params["num_predict"], params["num_ctx"]) == ("0.3", "200", "4096")
    assert [v for k, v in parsed["parameters"] if k == "stop"] == ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
