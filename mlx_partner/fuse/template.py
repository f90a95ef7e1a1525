"""The partner's system prompt inside the fused model's chat template, as the default.

Anywhere but `mlx-partner chat` (LM Studio, `mlx_lm.server`, llama.cpp, an OpenAI client) a client
that sends no system message would get the base model's own default ("You are Qwen, created by
Alibaba Cloud...") or none, which is not the model that was trained. So `fuse` puts a short prelude
in front of the base's template: when the conversation does not start with a system message, it
starts it with the run's exact system prompt; a client's own system message still wins. For a
template with no system role (Gemma), the prompt is folded into the first user turn the way
training folded it (`prompts.chat_messages`), unless it is already there.

    template = with_partner_default(base_template, system_prompt, has_system_role=True)
    write_partner_template(model_dir, system_prompt, has_system_role=True)

The template is the same text in `chat_template.jinja` (what transformers 5 reads first) and in
`tokenizer_config.json` (what older readers and llama.cpp's converter read first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..workspace import atomic_write_text

TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"
_BEGIN = "{#- mlx-partner: the partner's system prompt when the client sends none #}"
_END = "{#- /mlx-partner #}"


def jinja_string(text: str) -> str:
    """`text` as a single-quoted Jinja string literal (Jinja2, llama.cpp's minja and JS Jinja read
    the same escapes), so any system prompt, quotes, backslashes, braces and newlines included, is
    inserted verbatim and never evaluated."""
    escaped = (text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f"'{escaped}'"


def without_partner_default(template: str) -> str:
    """The template without an earlier fuse's prelude (fusing a fused model again)."""
    if template.startswith(_BEGIN) and _END in template:
        return template[template.index(_END) + len(_END):]
    return template


def with_partner_default(template: str, system_prompt: str, has_system_role: bool) -> str:
    """`template` with the partner's system prompt as its default (see the module docstring)."""
    template = without_partner_default(template)
    if not system_prompt:
        return template
    s = jinja_string(system_prompt)
    if has_system_role:
        prelude = ("{%- if not messages or messages[0]['role'] != 'system' %}"
                   "{%- set messages = [{'role': 'system', 'content': " + s + "}] + messages %}"
                   "{%- endif %}")
    else:
        folded = s + " + '\\n\\n' + messages[0]['content']"
        prelude = ("{%- if messages and messages[0]['role'] == 'user' and messages[0]['content'] is string"
                   " and not messages[0]['content'].startswith(" + s + ") %}"
                   "{%- set messages = [{'role': 'user', 'content': " + folded + "}] + messages[1:] %}"
                   "{%- endif %}")
    return _BEGIN + prelude + _END + template


def read_chat_template(model_dir: Path) -> str | None:
    """The folder's chat template: chat_template.jinja, else tokenizer_config.json's (a string)."""
    path = model_dir / TEMPLATE_FILE
    if path.exists():
        return path.read_text(encoding="utf-8")
    template = _tokenizer_config(model_dir).get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def _tokenizer_config(model_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((model_dir / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def write_partner_template(model_dir: Path, system_prompt: str, has_system_role: bool) -> bool:
    """Give the model folder's chat template the partner's default system prompt, in both places.
    Returns False when the folder has no chat template (nothing to change)."""
    template = read_chat_template(model_dir)
    if template is None:
        return False
    if not isinstance(_tokenizer_config(model_dir).get("chat_template", ""), str):
        raise ModelError(f"{model_dir / TOKENIZER_CONFIG} holds several named chat templates; "
                         f"mlx-partner can give only a single template the partner's system prompt.")
    patched = with_partner_default(template, system_prompt, has_system_role)
    atomic_write_text(model_dir / TEMPLATE_FILE, patched)
    config = _tokenizer_config(model_dir)
    config["chat_template"] = patched
    atomic_write_text(model_dir / TOKENIZER_CONFIG, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return True
