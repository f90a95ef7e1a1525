"""An Ollama Modelfile beside the GGUF: the partner's SYSTEM, a TEMPLATE that renders what the
model's own chat template renders, its stop tokens, and sampling defaults from [chat].

Ollama does not run Jinja: its TEMPLATE is a Go template over `.Messages`, and it puts the
Modelfile's SYSTEM first whenever a client sends no system message of its own. So every
conversation it renders starts with a system message, and the model's chat template only has to
be matched for those. `turn_format` reads the template's turn layout off a few renderings with
marker strings (the text around each role's content, and the generation prompt), checks that the
layout reproduces a two-turn conversation exactly, and `go_template` writes it out.

    fmt = turn_format(lambda msgs, gen: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen))
    text = modelfile_text("run.gguf", system_prompt, fmt, chat_settings, specials, bos=None)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ModelError

Render = Callable[[list[dict[str, str]], bool], str]
_S, _U, _A, _U2, _A2, _U3 = (f"mlxpartner{w}marker" for w in ("sys", "user", "asst", "usertwo", "assttwo", "userthree"))


@dataclass(frozen=True)
class TurnFormat:
    """The text a chat template puts around each role's content, and its generation prompt."""

    system: tuple[str, str]  # the prefix holds whatever the template writes first (e.g. BOS)
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str

    def render(self, messages: list[dict[str, str]]) -> str:
        """What the template renders for a conversation that starts with a system message and
        ends with a user turn (with the generation prompt): the reference for the Go template."""
        out = []
        for m in messages:
            prefix, suffix = getattr(self, m["role"])
            out.append(prefix + m["content"] + suffix)
        return "".join(out) + self.generation


def _split(text: str, marker: str) -> tuple[str, str]:
    if text.count(marker) != 1:
        raise ModelError("the chat template does not render each message's content exactly once")
    before, after = text.split(marker)
    return before, after


def turn_format(render: Render) -> TurnFormat:
    """The turn layout of a chat template (see the module docstring); ModelError when the
    template is not a plain per-role layout (content trimmed or rewritten, turns that depend on
    their neighbours), so that no Modelfile is written that renders differently."""
    system = {"role": "system", "content": _S}
    r1 = render([system, {"role": "user", "content": _U}], False)
    r2 = render([system, {"role": "user", "content": _U}], True)
    r3 = render([system, {"role": "user", "content": _U}, {"role": "assistant", "content": _A}], False)
    r4 = render([system, {"role": "user", "content": _U}, {"role": "assistant", "content": _A},
                 {"role": "user", "content": _U2}], False)
    if not (r2.startswith(r1) and r3.startswith(r1) and r4.startswith(r3)):
        raise ModelError("the chat template renders earlier turns differently as the conversation grows")
    sys_prefix, rest = _split(r1, _S)
    between, user_suffix = _split(rest, _U)
    asst_prefix, asst_suffix = _split(r3[len(r1):], _A)
    user_prefix, user_suffix2 = _split(r4[len(r3):], _U2)
    if user_suffix2 != user_suffix or not between.endswith(user_prefix):
        raise ModelError("the chat template writes user turns differently depending on their place")
    fmt = TurnFormat((sys_prefix, between[: len(between) - len(user_prefix)]), (user_prefix, user_suffix),
                     (asst_prefix, asst_suffix), r2[len(r1):])
    two_turns = [system, {"role": "user", "content": _U}, {"role": "assistant", "content": _A},
                 {"role": "user", "content": _U2}, {"role": "assistant", "content": _A2},
                 {"role": "user", "content": _U3}]
    if fmt.render(two_turns) != render(two_turns, True):
        raise ModelError("the chat template's turns cannot be written as a fixed layout per role")
    return fmt


def _literal(text: str) -> str:
    """Template text as Go-template literal text ("{{" would open an action)."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(fmt: TurnFormat, strip_prefix: str = "") -> str:
    """An Ollama TEMPLATE (Go template over .Messages) rendering what `fmt` renders.

    One line of actions with the literal text between them, and no `{{-` trimming, so the
    template's own newlines and spaces come out exactly. `strip_prefix` (a BOS the runtime adds
    itself) is dropped from the start of the system prefix.
    """
    sys_prefix = fmt.system[0].removeprefix(strip_prefix)
    parts = [
        "{{ range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}",
        f'{{{{ if eq $m.Role "system" }}}}{_literal(sys_prefix)}{{{{ $m.Content }}}}{_literal(fmt.system[1])}',
        f'{{{{ else if eq $m.Role "user" }}}}{_literal(fmt.user[0])}{{{{ $m.Content }}}}{_literal(fmt.user[1])}',
        f"{{{{ if $last }}}}{_literal(fmt.generation)}{{{{ end }}}}",
        f'{{{{ else if eq $m.Role "assistant" }}}}{_literal(fmt.assistant[0])}{{{{ $m.Content }}}}',
        f"{{{{ if not $last }}}}{_literal(fmt.assistant[1])}{{{{ end }}}}",
        "{{ end }}{{ end }}",
    ]
    return "".join(parts)


def stop_tokens(fmt: TurnFormat, specials: Iterable[str], eos: str | None) -> list[str]:
    """The special tokens that end an assistant turn or open the next one (in that order), and EOS."""
    text = fmt.assistant[1] + fmt.user[0]
    found = sorted({t for t in specials if t and t in text}, key=text.find)
    if eos and eos not in found:
        found.append(eos)
    return found


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ModelError(f'the {what} contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, system_prompt: str, fmt: TurnFormat, chat: Any, stops: list[str],
                   strip_prefix: str = "") -> str:
    """The Modelfile: FROM the GGUF beside it, SYSTEM, TEMPLATE, stop tokens, sampling from [chat]."""
    lines = [
        "# Ollama Modelfile written by `mlx-partner fuse --gguf`: the partner's system prompt, the model's",
        "# chat template as an Ollama template, and the sampling settings of [chat] in partner.toml.",
        "#   ollama create <name> -f Modelfile   (in this folder), then: ollama run <name>",
        f"FROM ./{gguf_name}",
        "",
        f"SYSTEM {_quoted(system_prompt, 'system prompt')}" if system_prompt else "",
        "",
        f"TEMPLATE {_quoted(go_template(fmt, strip_prefix), 'chat template')}",
        "",
        *(f'PARAMETER stop "{s}"' for s in stops),
        f"PARAMETER temperature {chat.temperature:g}",
        f"PARAMETER top_p {chat.top_p:g}",
        f"PARAMETER num_predict {chat.max_tokens}",
        f"PARAMETER repeat_penalty {chat.repetition_penalty:g}",
    ]
    if chat.max_kv_size:
        lines.append(f"PARAMETER num_ctx {chat.max_kv_size}")
    return "\n".join(line for i, line in enumerate(lines) if line or lines[i - 1]) + "\n"
