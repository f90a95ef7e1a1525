"""How the partner's conversations go through a model's chat template, the same way everywhere.

`dataset` writes training examples, `chat` and `eval` build prompts, and all three use these
functions, so the model is shown in chat exactly what it saw in training:

    messages = chat_messages(system_prompt, [{"role": "user", "content": q}], tokenizer)
    ids = encode_prompt(tokenizer, render_prompt(tokenizer, messages, add_generation_prompt=True))
    tokens, offset = training_tokens(tokenizer, {"messages": [...]})   # as mlx-lm's trainer does

`with_passages(question, passages)` puts passages of her writing before a question, the same way
for training (`[dataset] passages = true`) and `chat --rag`.

`hygiene_checks` renders one training example and one chat turn and reports whether they agree:
the system prompt once, no default system prompt or date line of the template's own, the system
text folded the same way for templates with no system role (Gemma), think blocks off alike.
"""

from __future__ import annotations

import contextlib
import os
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import DatasetError, ModelError
from .models import is_model_dir, models_cache, resolve_model

# --- prompts through the chat template (shared with `chat`) ------------------------------------

_SYSTEM_MARK = "mlx-partner system marker 7f3a"
_USER_MARK = "mlx-partner user marker 9c1e"
# Keyed by the tokenizer object itself (weakly): an id() could be reused by a later tokenizer.
_system_role_cache: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def render_prompt(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    """Messages through the model's chat template, as text, with reasoning ("think") turned off.

    `enable_thinking=False` is passed to every template: those that know it (Qwen3 and kin) then
    open the reply with an empty think block, which is also what their training rendering holds.
    Encode the result with `encode_prompt`, not with extra special tokens.
    """
    if not getattr(tokenizer, "chat_template", None) and not getattr(tokenizer, "has_chat_template", False):
        raise DatasetError("The base model's tokenizer has no chat template; choose an instruct/chat model.")
    return tokenizer.apply_chat_template(
        list(messages),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=False,
    )


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt, the way training tokenizes (no special tokens added)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def template_has_system_role(tokenizer: Any) -> bool:
    """True when the chat template renders a system message (Gemma's raises or drops it)."""
    try:
        return _system_role_cache[tokenizer]
    except (KeyError, TypeError):
        pass
    probe = [{"role": "system", "content": _SYSTEM_MARK}, {"role": "user", "content": _USER_MARK}]
    try:
        has = _SYSTEM_MARK in render_prompt(tokenizer, probe, add_generation_prompt=True)
    except DatasetError:
        raise
    except Exception:  # jinja's raise_exception('System role not supported') and the like
        has = False
    with contextlib.suppress(TypeError):  # not weak-referenceable: then it is not cached
        _system_role_cache[tokenizer] = has
    return has


def chat_messages(system_prompt: str, turns: Sequence[dict], tokenizer: Any | None) -> list[dict]:
    """The messages for the model: the system prompt, then the turns.

    With a template that has no system role (Gemma), the system text is folded into the first
    user turn as "SYSTEM\\n\\nQUESTION", identically in training and in chat. With no tokenizer
    (the base model is not available) the standard [system, ...turns] form is returned.
    """
    turns = [{"role": t["role"], "content": t["content"]} for t in turns]
    if not system_prompt:
        return turns
    if tokenizer is None or template_has_system_role(tokenizer):
        return [{"role": "system", "content": system_prompt}, *turns]
    for i, turn in enumerate(turns):
        if turn["role"] == "user":
            turns[i] = {"role": "user", "content": f"{system_prompt}\n\n{turn['content']}"}
            return turns
    return [{"role": "user", "content": system_prompt}, *turns]



# --- passages of her writing before a question (`[dataset] passages = true` and `chat --rag`) ---

RAG_PASSAGES = 3  # passages put before a question, in training and in chat alike
RAG_PASSAGE_CHARS = 700  # about a paragraph; a longer passage is cut at a word
RAG_HEADER = "Passages from your writing:"
RAG_QUESTION = "\n\nQuestion: "


class PassageLike(Protocol):
    """What a passage block needs of a passage (`retrieval.Passage` has it)."""

    @property
    def doc_id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...


def passage_block(passages: Sequence[PassageLike]) -> str:
    """The passages as the model sees them: numbered, each with its title and document path."""
    lines = [RAG_HEADER]
    for i, p in enumerate(passages, 1):
        text = " ".join(p.text.split())
        if len(text) > RAG_PASSAGE_CHARS:
            text = text[:RAG_PASSAGE_CHARS].rsplit(" ", 1)[0] + " ..."
        lines.append(f"[{i}] {p.title} ({p.doc_id}): {text}")
    return "\n".join(lines)


def with_passages(question: str, passages: Sequence[PassageLike]) -> str:
    """The user turn with passages before the question: the one renderer for training examples
    (`dataset.passages`) and `chat --rag`, so both show the model the same thing."""
    if not passages:
        return question
    return f"{passage_block(passages)}{RAG_QUESTION}{question}"


def question_of(user_turn: str) -> str:
    """The question in a user turn `with_passages` built (the turn itself when it holds none):
    what eval and retrieval should read from a split written with `[dataset] passages = true`.
    A system prompt folded in front (templates with no system role) goes with the passages."""
    start = user_turn.find(RAG_HEADER)
    at = user_turn.find(RAG_QUESTION, start) if start >= 0 else -1
    return user_turn[at + len(RAG_QUESTION):] if at >= 0 else user_turn

# --- the tokenizer and what training sees ------------------------------------------------------

_TOKENIZER_FILES = ["*.json", "*.jinja", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt", "*.py"]


def load_base_tokenizer(ref: str, workspace_root: Path | None = None) -> tuple[Any, Path]:
    """The base model's tokenizer (mlx-lm's TokenizerWrapper), without loading any weights.

    A hub id is looked up in the local hub cache, and otherwise only its tokenizer files are
    fetched (when the network allows), never the weights. Raises ModelError saying why not.
    """
    ref = str(ref).strip()
    is_hub = (ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
              and not Path(ref).expanduser().exists()
              and not (workspace_root is not None and (workspace_root / ref).exists())
              and not is_model_dir(models_cache() / ref))
    if is_hub:
        from huggingface_hub import snapshot_download  # lazy, like mlx-lm: ~100 ms to import

        try:
            path = Path(snapshot_download(ref, allow_patterns=_TOKENIZER_FILES, local_files_only=True))
        except Exception:
            if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
                raise ModelError(f"{ref} is not in the local hub cache and HF_HUB_OFFLINE is set") from None
            try:
                path = Path(snapshot_download(ref, allow_patterns=_TOKENIZER_FILES))
            except Exception as exc:
                raise ModelError(f"{ref} is not in the local hub cache and could not be fetched ({type(exc).__name__})") from None
    else:
        path = resolve_model(ref, workspace_root)
    from mlx_lm.utils import load_tokenizer

    try:
        return load_tokenizer(path), path
    except Exception as exc:
        raise ModelError(f"could not load the tokenizer at {path} ({type(exc).__name__}: {exc})") from None


def training_tokens(tokenizer: Any, example: dict, mask_prompt: bool = True) -> tuple[list[int], int]:
    """(tokens, loss offset) exactly as mlx-lm's ChatDataset makes them for `mlx_lm lora`.

    It applies the template to the whole conversation with the wrapper's defaults (no
    enable_thinking given, so models with think tokens render with thinking on), and with
    prompt masking the loss starts after the template applied to all but the last message with a
    generation prompt.
    """
    from mlx_lm.tuner.datasets import ChatDataset

    tokens, offset = ChatDataset([example], tokenizer, mask_prompt=mask_prompt).process(example)
    return list(tokens), int(offset)


# --- template hygiene --------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str


_MARKUP = re.compile(r"<[^<>\s]{1,40}>|\[/?[A-Z_]{2,20}\]|<<?/?SYS>>?")
_DATE = re.compile(r"(Cutting Knowledge Date|Today Date|\b\d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\w* \d{4})")
_ROLE_WORDS = {"system", "user", "assistant", "model", "human", "bot"}


def _injected_text(rendered: str, known: Sequence[str], tokenizer: Any) -> str:
    """Text the template added of its own: what remains without our strings, markup and roles."""
    rest = rendered
    for text in sorted(known, key=len, reverse=True):
        rest = rest.replace(text, " ")
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials |= {str(getattr(t, "content", t)) for t in decoder.values()}
    for tok in sorted((s for s in specials if s), key=len, reverse=True):
        rest = rest.replace(tok, " ")
    rest = _MARKUP.sub(" ", rest)
    words = [w for w in re.split(r"\s+", rest) if w and re.search(r"\w", w)]
    words = [w for w in words if w.strip(":|_-").lower() not in _ROLE_WORDS]
    return " ".join(words)


def _first_difference(a: str, b: str) -> str:
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    return f"at character {i}: training has {a[max(0, i - 20):i + 40]!r}, chat has {b[max(0, i - 20):i + 40]!r}"


def hygiene_checks(tokenizer: Any, system_prompt: str, question: str, answer: str,
                   mask_prompt: bool = True) -> list[Check]:
    """Render one training example (as mlx-lm's trainer does) and one chat turn (as `chat` does),
    and check that the model is shown the same system prompt, the same way, in both."""
    checks: list[Check] = []
    has_system = template_has_system_role(tokenizer)
    messages = chat_messages(system_prompt, [{"role": "user", "content": question},
                                             {"role": "assistant", "content": answer}], tokenizer)
    example = {"messages": messages}
    train_text = tokenizer.apply_chat_template(messages, tools=None, tokenize=False)
    train_ids, offset = training_tokens(tokenizer, example, mask_prompt=mask_prompt)
    chat_text = render_prompt(tokenizer, messages[:-1], add_generation_prompt=True)
    chat_ids = encode_prompt(tokenizer, chat_text)

    if has_system:
        checks.append(Check("system role", "ok", "the template has a system role; the system prompt goes in it"))
    else:
        folded = messages[0]["content"] if messages and messages[0]["role"] == "user" else ""
        same = bool(folded) and folded in train_text and folded in chat_text
        checks.append(Check(
            "system role", "ok" if same else "fail",
            "no system role in this template: the system prompt is folded into the first user turn, "
            + ("identically in training and chat" if same else "but training and chat differ"),
        ))

    counts = (train_text.count(system_prompt), chat_text.count(system_prompt))
    checks.append(Check(
        "system prompt once", "ok" if counts == (1, 1) else "fail",
        f"appears {counts[0]}x in training and {counts[1]}x in chat" + ("" if counts == (1, 1) else " (should be once each)"),
    ))

    if train_text.startswith(chat_text):
        checks.append(Check("same prompt", "ok", "the chat prompt is exactly the start of the training text"))
    else:
        checks.append(Check("same prompt", "fail", "chat renders the prompt differently from training, " + _first_difference(train_text, chat_text)))
    if train_ids[: len(chat_ids)] != chat_ids:
        checks.append(Check("same tokens", "warn", "the chat prompt's tokens are not a prefix of the training tokens (a token boundary differs)"))

    injected = _injected_text(train_text, [system_prompt, question, answer, *(m["content"] for m in messages)], tokenizer)
    source = str(getattr(tokenizer, "chat_template", "") or "")
    if "strftime_now" in source and _DATE.search(train_text):
        checks.append(Check("no injected text", "fail",
                            f"the template writes today's date into every prompt ({injected[:80]!r}), so training and chat differ by day"))
    elif injected:
        dated = " (a date line)" if _DATE.search(injected) else ""
        checks.append(Check("no injected text", "warn",
                            f"the template adds text of its own{dated}: {injected[:120]!r}; it is the same in training and chat, but the model learns it"))
    else:
        checks.append(Check("no injected text", "ok", "no default system prompt or date line"))

    think = getattr(tokenizer, "think_start", None)
    if not think:
        checks.append(Check("think blocks", "ok", "the template has no reasoning blocks"))
    else:
        answer_part = train_text[len(chat_text):] if train_text.startswith(chat_text) else train_text
        if think in answer_part:
            checks.append(Check("think blocks", "fail",
                                f"training shows the reply opening a {think} block that chat does not; both should have thinking off"))
        else:
            extra = "" if not mask_prompt or offset == len(chat_ids) else f" (the loss starts {len(chat_ids) - offset} token(s) earlier, on the empty {think} block)"
            checks.append(Check("think blocks", "ok", f"thinking is off the same way in training and chat{extra}"))
    return checks
