"""Proof that a fused folder is the trained model: logits, chat template, default system prompt.

The fused folder is loaded back from disk, the way `chat` loads it, and its logits on a few
held-out conversations (data/test.jsonl, else valid.jsonl, else fixed prompts, always with the
run's system prompt) are compared with the adapter on its base, the way training saw it. The
largest difference must stay within a tolerance: a fused model that lost its adapter differs from
the adapter by as much as the adapter changed the base, so it cannot pass.

Two template checks ride along: with the system prompt given, the fused template renders what the
base's did; with none given, it renders the very tokens training saw with it (the partner's
prompt is the template's default, `template.py`).

    check = verify(ws, fused_dir, base_path, run_dir, system_prompt, "float32", tolerance=None)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models import load_model
from ..prompts import chat_messages, encode_prompt, render_prompt, training_tokens
from ..workspace import Workspace, read_jsonl
from .merge import release

FIXED_PROMPTS = (
    "What do you care about most in your work?",
    "Someone says your main idea is naive. What do you answer?",
    "Explain one of your convictions to a newcomer in three sentences.",
)
MAX_CHECK_EXAMPLES = 3
MAX_CHECK_TOKENS = 160
# Largest |fused - adapter-on-base| logit difference accepted when the fused weights are stored
# in float32: the merge only reorders float32 sums (measured ~1e-5 on SmolLM2-135M), while a lost
# adapter differs by what the adapter changed, typically whole logits.
TOLERANCE_FLOAT32 = 1e-2
# In float16/bfloat16/re-quantized storage, rounding alone moves logits by a few tenths: accept up
# to this share of the adapter's own effect on the logits (and at least TOLERANCE_FLOAT32).
TOLERANCE_SHARE_OF_EFFECT = 0.1


@dataclass(frozen=True)
class FuseCheck:
    """How the fused model compares with the adapter on its base, on held-out token positions."""

    source: str  # where the prompts came from
    examples: int
    positions: int
    max_abs_diff: float
    argmax_agreement: float
    adapter_effect: float  # max |adapter-on-base - base|: what the adapter changed
    tolerance: float
    template_ok: bool  # with a system message: the fused template renders what the base's does
    default_prompt_ok: bool = True  # with none: it renders the tokens training saw

    @property
    def passed(self) -> bool:
        return self.template_ok and self.default_prompt_ok and self.max_abs_diff <= self.tolerance

    def line(self) -> str:
        return (f"max |fused - adapter| = {self.max_abs_diff:.2e} (tolerance {self.tolerance:.1e}; the adapter "
                f"itself moves logits by up to {self.adapter_effect:.2f}), next-token agreement "
                f"{self.argmax_agreement:.1%} over {self.positions} positions of {self.examples} {self.source}")


def check_conversations(ws: Workspace, system_prompt: str) -> tuple[str, list[list[dict[str, str]]]]:
    """A few held-out conversations for the check: test split, else valid, else fixed questions."""
    for split in ("test", "valid"):
        path = ws.split_path(split)
        if not path.exists():
            continue
        convs = []
        records, _bad = read_jsonl(path)
        for record in records:
            msgs = record.get("messages")
            if msgs and all(isinstance(m, dict) and "content" in m for m in msgs):
                convs.append(msgs)
            if len(convs) == MAX_CHECK_EXAMPLES:
                break
        if convs:
            return f"{split}.jsonl conversations", convs
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return "fixed prompts", [system + [{"role": "user", "content": q}] for q in FIXED_PROMPTS]


def encode(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation through the chat template (plain text if the template refuses)."""
    add_gen = messages[-1]["role"] != "assistant"
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_gen, tokenize=True)
        if isinstance(ids, dict):  # some transformers versions return a BatchEncoding
            ids = ids["input_ids"]
    except Exception:
        ids = tokenizer.encode("\n\n".join(m["content"] for m in messages))
    return list(ids)[:MAX_CHECK_TOKENS]


def template_text(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception:
        return None


def client_turns(conversation: list[dict[str, str]], system_prompt: str) -> list[dict[str, str]]:
    """The conversation as a client that sends no system message has it: the system message (or
    the system text folded into the first user turn, for templates without a system role) removed."""
    turns = [dict(m) for m in conversation if m["role"] != "system"]
    folded = f"{system_prompt}\n\n"
    if system_prompt and turns and turns[0]["role"] == "user" and turns[0]["content"].startswith(folded):
        turns[0]["content"] = turns[0]["content"][len(folded):]
    return turns


def training_view(tokenizer: Any, system_prompt: str, turns: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(prompt tokens of the first user turn, tokens of the whole exchange) as training and chat
    render them: the system prompt given explicitly (`prompts.chat_messages`)."""
    first = chat_messages(system_prompt, turns[:1], tokenizer)
    prompt = encode_prompt(tokenizer, render_prompt(tokenizer, first, add_generation_prompt=True))
    if turns[-1]["role"] != "assistant":  # fixed questions: no answer to train on
        return prompt, prompt
    whole = training_tokens(tokenizer, {"messages": chat_messages(system_prompt, turns, tokenizer)})[0]
    return prompt, whole


def default_view(tokenizer: Any, turns: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """The same two token lists with no system message at all, as another app would send them."""
    prompt = encode_prompt(tokenizer, render_prompt(tokenizer, turns[:1], add_generation_prompt=True))
    if turns[-1]["role"] != "assistant":
        return prompt, prompt
    whole = training_tokens(tokenizer, {"messages": turns})[0]
    return prompt, whole


def compare_logits(reference: list[Any], candidate: list[Any], base: list[Any]) -> dict[str, float]:
    """Max abs logit difference and argmax agreement of `candidate` against `reference` (lists of
    [1, tokens, vocab] arrays, one per conversation); `base` (logits of the base model on the
    first conversations) gives the adapter's own effect, max |reference - base|."""
    import mlx.core as mx

    diff, agree, total = 0.0, 0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        diff = max(diff, mx.max(mx.abs(ref - cand)).item())
        agree += int(mx.sum(mx.argmax(ref, -1) == mx.argmax(cand, -1)).item())
        total += ref.shape[1]
    effect = max((mx.max(mx.abs(r - b)).item() for r, b in zip(reference, base, strict=False)), default=0.0)
    return {"max_abs_diff": diff, "argmax_agreement": agree / max(total, 1), "positions": total, "effect": effect}


def _logits(model: Any, batches: list[list[int]]) -> list[Any]:
    import mlx.core as mx

    out = []
    for ids in batches:
        y = model(mx.array([ids])).astype(mx.float32)
        mx.eval(y)
        out.append(y)
    return out


def verify(ws: Workspace, fused_dir: Path, base_path: Path, run_dir: Path, system_prompt: str, dtype: str,
           tolerance: float | None) -> FuseCheck:
    """Load the fused folder as chat would and compare it with adapter-on-base (as training saw it).

    One model in memory at a time: the adapter on its base, then the fused model, then the base
    (on the first conversation only, to measure what the adapter changed).
    """
    source, convs = check_conversations(ws, system_prompt)
    probe = convs[0] if convs[0][-1]["role"] != "assistant" else convs[0][:-1]
    turns = client_turns(convs[0], system_prompt)
    loaded = load_model(str(base_path), adapter_path=run_dir)
    batches = [ids for ids in (encode(loaded.tokenizer, c) for c in convs) if ids]
    reference, ref_template = _logits(loaded.model, batches), template_text(loaded.tokenizer, probe)
    trained_view = training_view(loaded.tokenizer, system_prompt, turns) if system_prompt else None
    del loaded
    release()
    loaded = load_model(str(fused_dir))
    fused, fused_template = _logits(loaded.model, batches), template_text(loaded.tokenizer, probe)
    default_ok = trained_view is None or default_view(loaded.tokenizer, turns) == trained_view
    del loaded
    release()
    loaded = load_model(str(base_path))
    base = _logits(loaded.model, batches[:1])
    del loaded
    release()
    stats = compare_logits(reference, fused, base)
    if tolerance is None:
        tolerance = TOLERANCE_FLOAT32
        if dtype != "float32":
            tolerance = max(tolerance, TOLERANCE_SHARE_OF_EFFECT * stats["effect"])
    return FuseCheck(source, len(batches), int(stats["positions"]), stats["max_abs_diff"],
                     stats["argmax_agreement"], stats["effect"], tolerance, ref_template == fused_template,
                     default_ok)
