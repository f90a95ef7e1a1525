"""Scoring one model on the held-out examples: loss on the author's answers, generated answers.

    record = score_model(loaded, loss_examples, gen_examples, probes, system_prompt, style,
                         max_tokens=96, max_seq_length=2048, label="base", cached=earlier,
                         near_probes=near_questions)

Loss is measured on the author's answers only, the prompt masked exactly as in training
(mlx-lm's ChatDataset offsets); answers are decoded greedily, so the same model and prompt give
the same answer. Every item is one record in metrics.json, and `cached_records` reads those back
so a later eval of the same model under the same settings (its `fingerprint`) reuses them.
`mlx` and `mlx_lm` are imported inside the functions that use them, so `--help` stays instant.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..decline import is_decline
from ..prompts import chat_messages, encode_prompt, render_prompt, training_tokens
from ..runs import ADAPTER_WEIGHTS
from ..textfmt import stderr
from .examples import EvalExample, plain_question
from .metrics import StyleModel, rouge_l, word_f1

__all__ = [
    "GENERATION_BATCH", "LOSS_TOKENS_PER_BATCH", "Progress", "adapter_hash", "answer_loss", "answer_losses",
    "cached_records", "fingerprint", "generate_answers", "probe_messages", "prompt_tokens", "score_model",
]

LOSS_TOKENS_PER_BATCH = 2048  # tokens in one batched forward pass (bounds the logits' memory)
GENERATION_BATCH = 8  # answers decoded together: one pass over the weights serves all of them


def _loss_batches(lengths: Sequence[int]) -> list[list[int]]:
    """Indices grouped shortest first, each group's padded size (longest x count) within budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, start = [], 0
    while start < len(order):
        longest = max(2, lengths[order[start]])
        size = 1
        while start + size < len(order):
            longest_next = max(longest, lengths[order[start + size]])
            if longest_next * (size + 1) > LOSS_TOKENS_PER_BATCH:
                break
            longest, size = longest_next, size + 1
        batches.append(order[start : start + size])
        start += size
    return batches


def answer_losses(model: Any, tokenizer: Any, conversations: Sequence[Sequence[dict[str, str]]],
                  max_seq_length: int = 2048) -> list[tuple[float, int]]:
    """For each conversation, the summed cross-entropy of its final answer's tokens and their count.

    Tokens and the mask offset come from `prompts.training_tokens` (mlx-lm's ChatDataset, as the
    trainer makes them); only the answer's tokens count, as in training with prompt masking. Unlike
    mlx-lm's default_loss, the padding position just past the end is not counted. Conversations of
    similar length are scored together in right-padded batches: causal attention means the padding
    never changes a real token's logits.
    """
    import mlx.core as mx
    import mlx.nn as nn

    items = []
    for messages in conversations:
        tokens, offset = training_tokens(tokenizer, {"messages": list(messages)}, mask_prompt=True)
        items.append((list(tokens)[:max_seq_length], offset))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(items)
    for chunk in _loss_batches([len(tokens) for tokens, _ in items]):
        longest = max(2, *(len(items[i][0]) for i in chunk))
        batch = np.zeros((len(chunk), longest), dtype=np.int32)
        for row, i in enumerate(chunk):
            batch[row, : len(items[i][0])] = items[i][0]
        lengths = mx.array([len(items[i][0]) for i in chunk])[:, None]
        offsets = mx.array([items[i][1] for i in chunk])[:, None]
        arr = mx.array(batch)
        logits = model(arr[:, :-1]).astype(mx.float32)
        steps = mx.arange(1, longest)[None, :]  # step j predicts token j
        mask = ((steps >= offsets) & (steps < lengths)).astype(mx.float32)
        ce = (nn.losses.cross_entropy(logits, arr[:, 1:]) * mask).sum(axis=1)
        counts = mask.sum(axis=1)
        mx.eval(ce, counts)
        for row, i in enumerate(chunk):
            results[i] = (float(ce[row].item()), int(counts[row].item()))
    return results


def answer_loss(model: Any, tokenizer: Any, messages: Sequence[dict[str, str]],
                max_seq_length: int = 2048) -> tuple[float, int]:
    """`answer_losses` for one conversation."""
    return answer_losses(model, tokenizer, [messages], max_seq_length)[0]


def prompt_tokens(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """The generation prompt for a conversation up to the answer, rendered as training and chat do."""
    return encode_prompt(tokenizer, render_prompt(tokenizer, list(messages), True))


def probe_messages(tokenizer: Any, system_prompt: str, question: str) -> list[dict[str, str]]:
    """A fresh one-question conversation, built with the same system prompt handling as training."""
    return chat_messages(system_prompt, [{"role": "user", "content": question}], tokenizer)


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[list[int]], max_tokens: int) -> list[str]:
    """Greedy answers to several prompts decoded together (mlx-lm's batch_generate): the same
    prompts give the same answers, several times faster than one by one on a CPU."""
    from mlx_lm.generate import batch_generate

    if not prompts:
        return []
    response = batch_generate(model, tokenizer, [list(p) for p in prompts], max_tokens=max_tokens,
                              completion_batch_size=GENERATION_BATCH, prefill_batch_size=GENERATION_BATCH)
    return [text.strip() for text in response.texts]


class Progress:
    """A live line on stderr: what is being scored, counts, seconds per item and an ETA."""

    def __init__(self, label: str, total: int, enabled: bool = True) -> None:
        self.label, self.total, self.done, self.enabled = label, total, 0, enabled
        self.start = time.monotonic()
        self.live = enabled and sys.stderr.isatty()
        self._show()

    def step(self, what: str = "") -> None:
        self.done += 1
        self._show(what)

    def _show(self, what: str = "") -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        rate = elapsed / self.done if self.done else 0.0
        eta = rate * (self.total - self.done)
        line = f"  {self.label}: {self.done}/{self.total}"
        if self.done:
            line += f", {rate:.1f}s each, ETA {eta:.0f}s"
        if what:
            line += f" ({what})"
        if self.live:
            stderr("\r\x1b[2K" + line, nl=self.done >= self.total)
        elif self.done >= self.total and self.total:  # not a terminal: only the finished line
            stderr(line)


def score_model(loaded: Any, loss_examples: Sequence[EvalExample], gen_examples: Sequence[EvalExample],
                probes: Sequence[str], system_prompt: str, style: StyleModel, *, max_tokens: int,
                max_seq_length: int, label: str, progress: bool = True,
                cached: dict[str, dict[str, Any]] | None = None,
                near_probes: Sequence[str] = (), ask: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Loss on `loss_examples`, answers to `gen_examples`, the far `probes` and the `near_probes`:
    one record per item.

    `cached` maps "loss:KEY", "answer:KEY" or "probe:QUESTION" to an earlier record for this same
    model and settings; those are reused instead of recomputed (retrain scores the old run once,
    and the base model once for all runs). `ask` turns a question into the user turn that asks it
    (a run trained with passages: the passages `chat --rag` would put before it); with it, every
    question, held-out or probe, is asked in a fresh conversation through it.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    cached = dict(cached or {})

    todo = [ex for ex in loss_examples if f"loss:{ex.key}" not in cached]
    bar = Progress(f"{label}: loss on held-out answers", len(todo), progress and bool(todo))
    for start in range(0, len(todo), GENERATION_BATCH):
        chunk = todo[start : start + GENERATION_BATCH]
        losses = answer_losses(model, tokenizer, [e.messages for e in chunk], max_seq_length)
        for ex, (total, count) in zip(chunk, losses, strict=True):
            cached[f"loss:{ex.key}"] = {"loss_sum": total, "tokens": count}
            bar.step()

    # Held-out questions are asked with their own turns up to the answer (exactly the prompt they
    # were trained against); probes in a fresh conversation with the run's system prompt. With
    # `ask`, held-out questions too, so their passages are the ones retrieval finds, as in chat,
    # not the ones the dataset chose for training (which always hold the pair's own).
    if ask is None:
        asks = [(f"answer:{ex.key}", list(ex.messages[:-1])) for ex in gen_examples]
    else:
        asks = [(f"answer:{ex.key}", probe_messages(tokenizer, system_prompt, ask(plain_question(ex.question))))
                for ex in gen_examples]
    asks += [(f"probe:{q}", probe_messages(tokenizer, system_prompt, ask(q) if ask else q))
             for q in dict.fromkeys([*probes, *near_probes])]
    asks = [(key, messages) for key, messages in asks if key not in cached]
    bar = Progress(f"{label}: answers", len(asks), progress and bool(asks))
    for start in range(0, len(asks), GENERATION_BATCH):
        chunk = asks[start : start + GENERATION_BATCH]
        prompts = [prompt_tokens(tokenizer, messages) for _, messages in chunk]
        for (key, _), answer in zip(chunk, generate_answers(model, tokenizer, prompts, max_tokens), strict=True):
            cached[key] = {"answer": answer}
            bar.step()
    return _records(cached, loss_examples, gen_examples, probes, near_probes, style)


def _records(cached: dict[str, dict[str, Any]], loss_examples: Sequence[EvalExample],
             gen_examples: Sequence[EvalExample], probes: Sequence[str], near_probes: Sequence[str],
             style: StyleModel) -> dict[str, Any]:
    """The per-item records of metrics.json, each answer scored against its reference.

    `expects_decline` marks a held-out boundary pair (the author's answer declines): declining it
    is right, so it is left out of the false declines."""
    losses = {ex.key: {**cached[f"loss:{ex.key}"], "split": ex.split} for ex in loss_examples}
    answers = {}
    for ex in gen_examples:
        answer = cached[f"answer:{ex.key}"]["answer"]
        answers[ex.key] = {"answer": answer, "f1": word_f1(answer, ex.reference), "rouge_l": rouge_l(answer, ex.reference),
                           "style": style.similarity(answer), "abstained": is_decline(answer),
                           "expects_decline": ex.expects_decline}

    def probe_records(questions: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {q: {"answer": (a := cached[f"probe:{q}"]["answer"]), "abstained": is_decline(a)} for q in questions}

    return {"loss": losses, "answers": answers, "probes": probe_records(probes), "near_probes": probe_records(near_probes)}


# --- the cache: earlier records of the same model under the same settings ----------------------


def fingerprint(**parts: Any) -> str:
    """A short hash of what decides a model's answers (model, adapters, prompt, token limits)."""
    return hashlib.sha256(repr(sorted(parts.items())).encode("utf-8")).hexdigest()[:16]


def adapter_hash(run_dir: Path) -> str:
    """Identity of a run's trained weights, so a re-trained run of the same name is not reused."""
    path = run_dir / ADAPTER_WEIGHTS
    try:
        stat = path.stat()
    except OSError:
        return ""
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def cached_records(metrics: dict[str, Any], label: str, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Earlier records of one model in a metrics.json, if they were made under the same settings."""
    entry = (metrics.get("scores") or {}).get(label) or {}
    if entry.get("fingerprint") != fingerprint:
        return {}
    out = {}
    for key, rec in (entry.get("loss") or {}).items():
        out[f"loss:{key}"] = {"loss_sum": rec["loss_sum"], "tokens": rec["tokens"]}
    for key, rec in (entry.get("answers") or {}).items():
        out[f"answer:{key}"] = {"answer": rec["answer"]}
    for group in ("probes", "near_probes"):  # one question, one prompt: the same answer in either group
        for question, rec in (entry.get(group) or {}).items():
            out[f"probe:{question}"] = {"answer": rec["answer"]}
    for cid, rec in (entry.get("corrections") or {}).items():  # evaluate/corrections.py's answers
        out[f"correction:{cid}"] = {"answer": rec["answer"]}
    return out
