"""Preference tuning, `train --method orpo|dpo`: a loss on mlx-lm's own trainer, not a second trainer.

    data, objective = prepare(ws, loaded, data, settings, say)   # before the adapters are added
    trainer.train(..., loss=objective.loss, iterate_batches=objective.batches(offset))
    monitor = objective.monitor(run_dir, manifest, model, opt, sched, settings, offset, progress)

Each training (and validation) example becomes a preference pair: chosen = the author's answer
(a correction's, when the example is one), rejected = the partner's answer the author corrected
in chat (`/fix`) for that question, else the base model's own greedy answer, generated once and
cached in data/base_answers.jsonl keyed by base model and prompt. Pairs whose two answers are the
same are left out.

ORPO (Hong et al. 2024) needs no reference model: the chosen answer's NLL plus beta times
-log sigmoid of the log odds ratio of the two answers' per-token probabilities. DPO (Rafailov et
al. 2023) needs the reference (base) model's log probabilities of both answers: they are computed
once here, before the adapters exist, so no second model sits in memory. The reference is always
the base model, also for a run that continues another (`--continue-from`), so "SFT, then DPO" is
not the textbook recipe (whose reference is the SFT model): ORPO is the method to try first. The reward margin is
TRL's: beta times (chosen minus rejected) per-token log probability for ORPO, beta times the
difference of the log ratios to the reference for DPO. The live line and loss.png show both.

mlx-lm-lora (5.10) has ORPO and DPO trainers, but requires Python 3.11 (we support 3.10), pulls
in `datasets` and `transformers`, and replaces mlx-lm's trainer, so our callback, checkpoints and
resume would have to be rebuilt on it; the loss is ~40 lines on the trainer we already drive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..config import TrainSettings
from ..corrections import read_corrections
from ..errors import TrainingError
from ..prompts import encode_prompt, render_prompt, training_tokens
from ..textfmt import utc_now
from ..workspace import Workspace, append_jsonl, read_jsonl
from .data import Data
from .loop import Monitor
from .schedule import Schedule, plan_schedule

METHODS = ("sft", "orpo", "dpo")
BASE_ANSWERS = "base_answers.jsonl"  # in data/: the base model's answers, the rejected side
BASE_ANSWERS_VERSION = 1
REJECTED_MAX_TOKENS = 256  # a base answer is at most as long as the author's, and never longer than this
GENERATION_BATCH = 8


# --- preference pairs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One preference pair as text: the conversation up to the answer, and the two answers."""

    prompt: tuple[dict[str, str], ...]  # system, earlier turns, the question
    chosen: str
    rejected: str
    rejected_from: str  # base | correction


@dataclass(frozen=True)
class Item:
    """One pair as tokens, in mlx-lm's (tokens, loss offset) form, with the reference log probs."""

    chosen: list[int]
    chosen_offset: int
    rejected: list[int]
    rejected_offset: int
    ref: tuple[float, float] = (0.0, 0.0)  # DPO: the base model's summed log probs of both answers


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _question(prompt: Sequence[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def corrected_answers(ws: Workspace) -> dict[str, str]:
    """{question (normalized): the partner's answer the author corrected} from data/corrections.jsonl."""
    return {_norm(c.question): c.answer for c in read_corrections(ws).corrections if c.kind == "fix"}


def base_answer_key(base_model: str, prompt_text: str) -> str:
    return hashlib.sha256(json.dumps([base_model, prompt_text]).encode("utf-8")).hexdigest()[:32]


def base_answers(ws: Workspace, model: Any, tokenizer: Any, base_model: str,
                 wanted: Sequence[tuple[tuple[dict[str, str], ...], int]], say: Callable[[str], None]) -> dict[str, str]:
    """The base model's greedy answer to each (prompt, max tokens), from data/base_answers.jsonl
    where it is there, else generated now and appended (so a second run generates nothing)."""
    from mlx_lm.generate import batch_generate

    path = ws.data_dir / BASE_ANSWERS
    cached = {r["key"]: r["answer"] for r in read_jsonl(path)[0]
              if isinstance(r.get("key"), str) and isinstance(r.get("answer"), str)}
    todo: dict[str, tuple[list[int], int, str]] = {}
    for prompt, limit in wanted:
        text = render_prompt(tokenizer, list(prompt), True)
        key = base_answer_key(base_model, text)
        if key not in cached:
            todo[key] = (encode_prompt(tokenizer, text), limit, _question(prompt))
    if todo:
        say(f"Preference pairs: the base model answers {len(todo)} questions once, greedy "
            f"({len(cached)} cached in {path}).")
    keys = list(todo)
    for start in range(0, len(keys), GENERATION_BATCH):
        chunk = keys[start:start + GENERATION_BATCH]
        response = batch_generate(model, tokenizer, [todo[k][0] for k in chunk],
                                  max_tokens=[todo[k][1] for k in chunk])
        records = [{"version": BASE_ANSWERS_VERSION, "key": k, "base_model": base_model, "question": todo[k][2],
                    "answer": text.strip(), "time": utc_now()} for k, text in zip(chunk, response.texts, strict=True)]
        append_jsonl(path, records)
        cached.update({r["key"]: r["answer"] for r in records})
        say(f"  base answers {min(start + GENERATION_BATCH, len(keys))}/{len(keys)}")
    return cached


def make_pairs(records: Sequence[dict[str, Any]], corrected: dict[str, str],
               base: Callable[[tuple[dict[str, str], ...]], str]) -> list[Pair]:
    """Preference pairs from chat examples (pure but for `base`, the base model's answer to a prompt)."""
    pairs = []
    for r in records:
        messages = r["messages"]
        prompt = tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1])
        chosen = messages[-1]["content"]
        fixed = corrected.get(_norm(_question(prompt)))
        rejected, origin = (fixed, "correction") if fixed else (base(prompt), "base")
        if rejected.strip() and _norm(rejected) != _norm(chosen):
            pairs.append(Pair(prompt, chosen, rejected, origin))
    return pairs


def tokenize(pairs: Sequence[Pair], tokenizer: Any, s: TrainSettings) -> list[Item]:
    """Each pair's two conversations as mlx-lm's trainer tokenizes them; pairs with an answer cut
    off entirely by --max-seq-length are left out."""
    items = []
    for p in pairs:
        chosen, c_off = training_tokens(tokenizer, {"messages": [*p.prompt, {"role": "assistant", "content": p.chosen}]})
        rejected, r_off = training_tokens(tokenizer, {"messages": [*p.prompt, {"role": "assistant", "content": p.rejected}]})
        if min(len(chosen), s.max_seq_length) > c_off and min(len(rejected), s.max_seq_length) > r_off:
            items.append(Item(chosen, c_off, rejected, r_off))
    return items


# --- batches and losses --------------------------------------------------------------------------


def collate(items: Sequence[Item], max_seq_length: int) -> tuple[mx.array, mx.array, mx.array]:
    """(tokens, lengths, ref): the chosen rows, then the rejected rows, padded alike; lengths are
    (loss offset, length) per row as mlx-lm's batches have them; ref the reference log probs."""
    rows = [(it.chosen, it.chosen_offset) for it in items] + [(it.rejected, it.rejected_offset) for it in items]
    longest = max(len(t) for t, _ in rows)
    width = min(1 + 32 * ((longest + 31) // 32), max_seq_length)
    tokens = np.zeros((len(rows), width), np.int32)
    lengths = []
    for j, (t, offset) in enumerate(rows):
        n = min(len(t), width)
        tokens[j, :n] = t[:n]
        lengths.append((offset, n))
    ref = [it.ref[0] for it in items] + [it.ref[1] for it in items]
    return mx.array(tokens), mx.array(lengths), mx.array(ref, dtype=mx.float32)


def sequence_logps(model: Any, tokens: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
    """Summed log probability of each row's answer tokens, and how many there are."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs).astype(mx.float32)
    steps = mx.arange(1, targets.shape[1] + 1)  # target i is token i + 1
    mask = mx.logical_and(steps >= lengths[:, 0:1], steps < lengths[:, 1:]).astype(mx.float32)
    logp = -nn.losses.cross_entropy(logits, targets, reduction="none") * mask
    return logp.sum(-1), mask.sum(-1)


def _log1mexp(x: mx.array) -> mx.array:
    """log(1 - exp(x)) for x < 0, stable at both ends."""
    x = mx.minimum(x, -1e-7)
    return mx.where(x > -0.6931471805599453, mx.log(-mx.expm1(x)), mx.log1p(-mx.exp(x)))


def orpo_terms(logp: mx.array, n: mx.array, beta: float) -> tuple[mx.array, mx.array]:
    """(loss, reward margin) of ORPO from the rows' summed log probs (chosen half, rejected half)."""
    b = logp.shape[0] // 2
    avg = logp / mx.maximum(n, 1.0)
    chosen, rejected = avg[:b], avg[b:]
    nll = -logp[:b].sum() / mx.maximum(n[:b].sum(), 1.0)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    return nll - beta * nn.log_sigmoid(log_odds).mean(), beta * (chosen - rejected).mean()


def dpo_terms(logp: mx.array, ref: mx.array, beta: float) -> tuple[mx.array, mx.array]:
    """(loss, reward margin) of DPO from the rows' summed log probs and the reference's."""
    b = logp.shape[0] // 2
    margin = beta * ((logp[:b] - ref[:b]) - (logp[b:] - ref[b:]))
    return -nn.log_sigmoid(margin).mean(), margin.mean()


@dataclass
class Objective:
    """What preference tuning hands mlx-lm's trainer (loss, batches) and our callback (margins)."""

    method: str
    beta: float
    seed: int
    max_seq_length: int
    train: list[Item]
    valid: list[Item]
    origins: dict[str, int]  # where the rejected answers came from: base, correction
    last_batch: tuple[mx.array, mx.array, mx.array] | None = None

    def terms(self, model: Any, tokens: mx.array, lengths: mx.array, ref: mx.array) -> tuple[mx.array, mx.array]:
        logp, n = sequence_logps(model, tokens, lengths)
        return orpo_terms(logp, n, self.beta) if self.method == "orpo" else dpo_terms(logp, ref, self.beta)

    def loss(self, model: Any, tokens: mx.array, lengths: mx.array, ref: mx.array) -> tuple[mx.array, mx.array]:
        """mlx-lm's loss contract: (loss, tokens it covers)."""
        value, _ = self.terms(model, tokens, lengths, ref)
        ntoks = (lengths[:, 1] - lengths[:, 0]).sum()
        return value, ntoks

    def margin(self, model: Any, batches: Sequence[tuple[mx.array, mx.array, mx.array]]) -> float:
        total = [self.terms(model, *b)[1] for b in batches]
        return float(mx.mean(mx.stack(total)).item()) if total else float("nan")

    def batches(self, offset: int = 0) -> Callable[..., Iterator[tuple[mx.array, mx.array, mx.array]]]:
        """mlx-lm's `iterate_batches` for pairs: batches of similar length, their order each epoch
        fixed by the seed and the epoch (a resumed run skips the `offset` batches done already);
        validation in a fixed order."""

        def iterate(dataset: Sequence[Item], batch_size: int, max_seq_length: int, loop: bool = False,
                    seed: int | None = None, comm_group: Any = None) -> Iterator[tuple[mx.array, mx.array, mx.array]]:
            rank, size = (comm_group.rank(), comm_group.size()) if comm_group is not None else (0, 1)
            if len(dataset) < batch_size:
                raise TrainingError(f"{len(dataset)} preference examples, fewer than the batch size {batch_size}.")
            order = sorted(range(len(dataset)), key=lambda i: len(dataset[i].chosen))
            groups = [order[i + rank:i + batch_size:size] for i in range(0, len(order) - batch_size + 1, batch_size)]

            def epoch(n: int | None) -> Iterator[tuple[mx.array, mx.array, mx.array]]:
                picks = range(len(groups)) if n is None else np.random.default_rng(n).permutation(len(groups))
                for g in picks:
                    batch = collate([dataset[j] for j in groups[g]], max_seq_length)
                    if loop:
                        self.last_batch = batch
                    yield batch

            if not loop:
                yield from epoch(None)
                return
            n, skip = divmod(offset, max(len(groups), 1))
            while True:
                yield from itertools.islice(epoch(self.seed * 1_000_003 + n), skip, None)
                n, skip = n + 1, 0

        return iterate

    def summary(self) -> dict[str, Any]:
        """What the manifest records of the method."""
        return {"method": self.method, "beta": self.beta, "pairs": {"train": len(self.train), "valid": len(self.valid)},
                "rejected_from": dict(self.origins)}

    def monitor(self, *args: Any, **kwargs: Any) -> PreferenceMonitor:
        return PreferenceMonitor(*args, objective=self, **kwargs)


class PreferenceMonitor(Monitor):
    """Our callback, with the reward margin beside each loss: on the latest training batch, and
    over the whole validation set at each validation."""

    def __init__(self, *args: Any, objective: Objective, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.m["preference"] = objective.summary()

    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        last = self.objective.last_batch
        margin = self.objective.margin(self.model, [last]) if last is not None else float("nan")
        super().on_train_loss_report({**info, "reward_margin": margin})

    def on_val_loss_report(self, info: dict[str, Any]) -> None:
        o = self.objective
        batches = list(o.batches()(o.valid, self.s.batch_size, o.max_seq_length))
        super().on_val_loss_report({**info, "reward_margin": o.margin(self.model, batches)})


# --- putting it together -------------------------------------------------------------------------


def _reference(model: Any, items: list[Item], batch_size: int, max_seq_length: int) -> list[Item]:
    """DPO's reference: the base model's summed log probs of both answers, batch by batch."""
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        tokens, lengths, _ = collate(chunk, max_seq_length)
        logp, _ = sequence_logps(model, tokens, lengths)
        values = logp.tolist()
        out += [dataclasses.replace(it, ref=(values[i], values[len(chunk) + i])) for i, it in enumerate(chunk)]
    return out


def setup(ws: Workspace, loaded: Any, data: Data, s: TrainSettings, sched: Schedule,
          say: Callable[[str], None]) -> tuple[Data, Schedule, Objective | None]:
    """`train`'s one call: for --method orpo|dpo the preference data, its schedule and objective;
    for sft the data and schedule as they are, and no objective."""
    if s.method == "sft":
        return data, sched, None
    data, objective = prepare(ws, loaded, data, s, say)
    return data, plan_schedule(len(data.train), s), objective


def prepare(ws: Workspace, loaded: Any, data: Data, s: TrainSettings,
            say: Callable[[str], None]) -> tuple[Data, Objective]:
    """The preference pairs of data/train.jsonl and valid.jsonl, tokenized, and the objective.

    Call it before the adapters are added: the base model answers (and, for DPO, scores) the pairs."""
    if s.method not in METHODS[1:]:
        raise TrainingError(f"Unknown training method '{s.method}'; use one of {', '.join(METHODS)}.")
    model, tokenizer = loaded.model, loaded.tokenizer
    corrected = corrected_answers(ws)
    records = {split: read_jsonl(ws.split_path(split))[0] for split in ("train", "valid")}
    wanted = []
    for r in records["train"] + records["valid"]:
        messages = r["messages"]
        if _norm(_question(messages[:-1])) not in corrected:
            answer_tokens = len(tokenizer.encode(messages[-1]["content"], add_special_tokens=False))
            wanted.append((tuple(messages[:-1]), max(8, min(REJECTED_MAX_TOKENS, answer_tokens))))
    answers = base_answers(ws, model, tokenizer, str(loaded.path), wanted, say)

    def base(prompt: tuple[dict[str, str], ...]) -> str:
        return answers.get(base_answer_key(str(loaded.path), render_prompt(tokenizer, list(prompt), True)), "")

    pairs = {split: make_pairs(records[split], corrected, base) for split in records}
    items = {split: tokenize(pairs[split], tokenizer, s) for split in pairs}
    for split, flag in (("train", "--batch-size"), ("valid", "--batch-size")):
        if len(items[split]) < s.batch_size:
            raise TrainingError(
                f"{len(items[split])} {split} preference pairs (of {len(records[split])} {split} examples; "
                f"pairs whose two answers agree are left out), fewer than the batch size {s.batch_size}: use "
                f"{flag} {max(len(items[split]), 1)} or less, or more pairs."
            )
    if s.method == "dpo":
        items = {split: _reference(model, v, s.batch_size, s.max_seq_length) for split, v in items.items()}
    origins = {k: sum(1 for p in pairs["train"] if p.rejected_from == k) for k in ("base", "correction")}
    say(f"Preference tuning ({s.method}, beta {s.preference_beta:g}): {len(items['train'])} train and "
        f"{len(items['valid'])} valid pairs; rejected answers from the base model {origins['base']}, "
        f"from corrections {origins['correction']}. Each step holds the chosen and the rejected "
        "answers: about twice the activations of the plan above.")
    objective = Objective(s.method, s.preference_beta, s.seed, s.max_seq_length, items["train"], items["valid"], origins)
    counts = {**data.counts, "preference_train": len(items["train"]), "preference_valid": len(items["valid"])}
    return dataclasses.replace(data, train=items["train"], valid=items["valid"], counts=counts), objective
