"""`mlx-partner eval`: does the tuned partner beat its base model on the author's held-out pairs?

    result = run_eval(ws, settings, run="run-3", limit=20)

Both the base model and base + the run's adapters are scored, deterministically (greedy decoding,
a seeded selection), on:

- loss and perplexity on the author's answers in the test (and valid) split, prompt masked exactly
  as in training (mlx-lm's ChatDataset offsets);
- generated answers against the reference answers: word-overlap F1 and ROUGE-L (pure Python LCS);
- style: character n-gram TF-IDF cosine similarity of an answer to the author's sources (numpy);
- groundedness: questions on topics absent from the sources, where the partner should say the
  author has not written about it; the share of answers that do.

It writes eval/<run>/metrics.json (summary plus every answer), eval/<run>/report.md and
eval/<run>/chart.png. The pure metric functions come first; `run_eval` is the one side effect.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .png import draw_text, png_bytes, text_width

# --- word overlap ------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*", re.UNICODE)


def words(text: str) -> list[str]:
    """Lowercased word tokens; apostrophes inside a word are kept ("don't" is one word)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def word_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-words F1 between two texts (1.0 when both are empty)."""
    pred, ref = words(prediction), words(reference)
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, in O(len(a) * len(b)) time and O(len(b)) space."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over word tokens (1.0 when both are empty)."""
    pred, ref = words(prediction), words(reference)
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


# --- style: character n-gram TF-IDF -----------------------------------------------------------

STYLE_NGRAMS = (3, 4, 5)
STYLE_DIM = 1 << 18  # hashed features; collisions are rare enough at this size for prose


def _char_ngram_counts(text: str, sizes: Sequence[int] = STYLE_NGRAMS, dim: int = STYLE_DIM) -> tuple[np.ndarray, np.ndarray]:
    """Sparse hashed n-gram counts: (sorted feature indices, counts). crc32, so stable across runs."""
    text = " " + re.sub(r"\s+", " ", text.lower()).strip() + " "
    grams = [text[i : i + n] for n in sizes for i in range(len(text) - n + 1)]
    if not grams:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    index = np.fromiter((zlib.crc32(g.encode("utf-8")) % dim for g in grams), dtype=np.int64, count=len(grams))
    features, counts = np.unique(index, return_counts=True)
    return features, counts.astype(np.float64)


def _passages(text: str, size: int = 1200) -> list[str]:
    """Split a document into paragraph-aligned passages of about `size` characters (for IDF)."""
    out, current = [], ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        current = f"{current}\n\n{para}" if current else para
        if len(current) >= size:
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


@dataclass(frozen=True)
class StyleModel:
    """IDF weights fitted on the author's source passages, and their normalised centroid."""

    idf: np.ndarray
    centroid: np.ndarray
    passages: int

    def vector(self, text: str) -> np.ndarray:
        features, counts = _char_ngram_counts(text, dim=len(self.idf))
        vec = np.zeros(len(self.idf))
        vec[features] = (1.0 + np.log(counts)) * self.idf[features]
        norm = np.linalg.norm(vec)
        return vec / norm if norm else vec

    def similarity(self, text: str) -> float:
        """Cosine similarity (0..1) of `text` to the author's sources as a whole."""
        return float(self.vector(text) @ self.centroid) if text.strip() else 0.0


def fit_style(texts: Iterable[str], dim: int = STYLE_DIM) -> StyleModel:
    """Fit a StyleModel on the author's documents (split into passages so IDF means something)."""
    sparse = [_char_ngram_counts(p, dim=dim) for t in texts for p in _passages(t)]
    if not sparse:
        from .errors import SourceError

        raise SourceError("There are no source documents to measure style against; add writing to sources/.")
    df = np.zeros(dim)
    for features, _ in sparse:
        df[features] += 1
    idf = np.log((1 + len(sparse)) / (1 + df)) + 1.0
    centroid = np.zeros(dim)
    for features, counts in sparse:
        weights = (1.0 + np.log(counts)) * idf[features]
        centroid[features] += weights / np.linalg.norm(weights)
    centroid /= np.linalg.norm(centroid)
    return StyleModel(idf=idf, centroid=centroid, passages=len(sparse))


# --- groundedness probe ------------------------------------------------------------------------

# What the partner is trained to say about topics the author has not written about. The system
# prompt (dataset.system_prompt_from_profile) asks for this wording; the patterns below also
# accept the usual paraphrases, so a model that abstains in its own words still counts.
ABSTAIN_PHRASE = "I haven't written about that"

ABSTAIN_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b(haven't|have not|never|hasn't|has not|didn't|did not)\s+(really\s+|actually\s+|yet\s+)?(written|thought|explored|covered|addressed|touched)\b",
        r"\bnot\s+(something|a\s+topic|a\s+subject|an\s+area|a\s+question|anything)\s+(that\s+)?(i|the\s+author)\s*('ve|\s+have|\s+has)?\s*(written|covered|explored|addressed|thought|touched|know)",
        r"\b(don't|do\s+not|doesn't|does\s+not)\s+know\b",
        r"\bno\s+idea\b",
        r"\b(can't|cannot|can\s+not|couldn't)\s+(really\s+)?(speak|say|comment|answer)\b",
        r"\b(outside|beyond)\s+(of\s+)?(what\s+i('ve|\s+have)\s+written|my\s+(writing|notes|work|sources|documents))",
        r"\b(nothing|not\s+anything)\s+(that\s+)?i('ve|\s+have)\s+(written|said)",
        r"\bmy\s+(writing|notes|documents|sources|essays?)\s+(don't|do\s+not|doesn't|does\s+not|never)\s+(cover|address|touch|discuss|mention)",
        r"\b(isn't|is\s+not|wasn't)\s+(something|a\s+topic)\s+i\b",
        r"\bnot\s+(in|covered\s+(in|by))\s+(my|the\s+author's)\s+(writing|notes|documents|sources)",
    )
)


def is_abstention(answer: str) -> bool:
    """True if the answer says the author has not written about (or does not know) the topic."""
    text = answer.replace("\u2019", "'")
    return any(p.search(text) for p in ABSTAIN_PATTERNS)


# Questions on topics a personal corpus rarely covers. Each carries the words whose presence in the
# sources disqualifies it (the author may have written about it after all).
BUILTIN_PROBES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is your position on the offside rule in football?", ("offside", "football", "soccer")),
    ("How should I structure a portfolio of index funds and bonds?", ("portfolio", "bonds", "index fund", "invest")),
    ("What do you think about the interpretation of quantum mechanics?", ("quantum", "physics")),
    ("Which programming language should I learn first, Rust or Go?", ("rust", "programming", "golang")),
    ("What is your view on cryptocurrency regulation?", ("crypto", "bitcoin", "blockchain", "regulation")),
    ("How do you feel about Wagner's operas?", ("wagner", "opera")),
    ("What have you written about deep-sea fishing quotas?", ("fishing", "quota", "deep-sea")),
    ("What would you advise about filing taxes as a freelancer?", ("tax", "taxes", "freelance")),
    ("What is your opinion on Formula 1 racing strategy?", ("formula 1", "racing", "grand prix")),
    ("How should a hospital triage patients in an emergency room?", ("hospital", "triage", "patient")),
)

# Derived probes: one template per topic, topics kept only where none of their words occur in the
# sources, so the set adapts to each author's corpus.
PROBE_TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("volcanology", ("volcano", "volcan", "lava", "magma")),
    ("professional chess openings", ("chess", "gambit")),
    ("the stock market", ("stock market", "shares", "stocks")),
    ("space exploration", ("space", "rocket", "nasa", "mars", "orbit")),
    ("cryptography", ("cryptograph", "encryption", "cipher")),
    ("competitive swimming", ("swim",)),
    ("medieval siege warfare", ("siege", "medieval", "castle")),
    ("machine translation", ("translation", "translate")),
    ("orchid cultivation", ("orchid",)),
    ("jazz improvisation", ("jazz", "improvis")),
)
PROBE_TEMPLATES = (
    "What do you think about {topic}?",
    "What have you written about {topic}?",
    "Can you give me your take on {topic}?",
    "How would you approach {topic}?",
)


def probe_questions(source_texts: Iterable[str], n: int, seed: int = 0) -> list[str]:
    """Up to `n` questions on topics absent from the sources: built-in ones first, then derived.

    The choice is a pure function of the sources and the seed, so runs compared on one corpus get
    the same probes.
    """
    corpus = " ".join(t.lower() for t in source_texts)

    def absent(keys: tuple[str, ...]) -> bool:
        return not any(re.search(r"\b" + re.escape(k), corpus) for k in keys)

    rng = random.Random(seed)
    builtin = [q for q, keys in BUILTIN_PROBES if absent(keys)]
    derived = [
        PROBE_TEMPLATES[i % len(PROBE_TEMPLATES)].format(topic=topic)
        for i, (topic, keys) in enumerate(PROBE_TOPICS)
        if absent(keys)
    ]
    rng.shuffle(builtin)
    rng.shuffle(derived)
    # Alternate built-in and derived so small n still gets both kinds.
    out: list[str] = []
    for pair in zip(builtin, derived, strict=False):
        out.extend(pair)
    longer = builtin if len(builtin) > len(derived) else derived
    out.extend(longer[min(len(builtin), len(derived)) :])
    return out[: max(0, n)]


# --- a tiny PNG bar chart (numpy + zlib; matplotlib is not a dependency) ----------------------

SERIES_COLORS = ((150, 150, 150), (46, 110, 190), (230, 130, 40), (60, 160, 90))


def bar_chart(groups: Sequence[tuple[str, Sequence[float]]], series: Sequence[str], title: str = "",
              bar_width: int = 22, height: int = 220) -> bytes:
    """Grouped bars on a 0..1 scale: one group per metric, one bar per series; returns PNG bytes."""
    n = max(1, len(series))
    group_width = n * bar_width + 28
    label_width = max((text_width(label) for label, _ in groups), default=0)
    group_width = max(group_width, label_width + 12)
    left, top, bottom = 44, 36, 40
    width = left + group_width * max(1, len(groups)) + 16
    legend_width = sum(text_width(s) + 30 for s in series)
    width = max(width, left + legend_width + 16, left + text_width(title) + 16)
    img = np.full((top + height + bottom, width, 3), 255, dtype=np.uint8)
    base_y = top + height
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):  # gridlines with labels
        y = base_y - round(tick * height)
        img[y, left:width - 8] = (225, 225, 225) if tick else (60, 60, 60)
        draw_text(img, 4, y - 5, f"{tick:.2f}".rstrip("0").rstrip(".") if tick else "0", (90, 90, 90))
    for g, (label, values) in enumerate(groups):
        x0 = left + g * group_width + 14
        for s, value in enumerate(values):
            v = 0.0 if value is None or not math.isfinite(value) else min(max(value, 0.0), 1.0)
            h = round(v * height)
            x = x0 + s * bar_width
            color = SERIES_COLORS[s % len(SERIES_COLORS)]
            img[base_y - h : base_y, x : x + bar_width - 4] = color
            text = f"{round(v * 100)}"
            draw_text(img, x + (bar_width - 4 - text_width(text, 1)) // 2, base_y - h - 8, text, (40, 40, 40), scale=1)
        draw_text(img, x0, base_y + 8, label, (40, 40, 40))
    x = left
    for s, name in enumerate(series):  # legend
        img[14:24, x : x + 10] = SERIES_COLORS[s % len(SERIES_COLORS)]
        draw_text(img, x + 14, 14, name, (40, 40, 40))
        x += text_width(name) + 30
    if title:
        draw_text(img, left, base_y + 26, title, (90, 90, 90))
    return png_bytes(img)


# --- the held-out examples ---------------------------------------------------------------------


@dataclass(frozen=True)
class EvalExample:
    """One training-format conversation from a split; the last assistant turn is the reference."""

    key: str  # content hash of its user and assistant turns: stable across dataset rebuilds
    split: str
    messages: tuple[dict[str, str], ...]

    @property
    def system(self) -> str:
        return next((m["content"] for m in self.messages if m.get("role") == "system"), "")

    @property
    def question(self) -> str:
        return next(m["content"] for m in reversed(self.messages) if m.get("role") == "user")

    @property
    def reference(self) -> str:
        return self.messages[-1]["content"]


def example_key(messages: Sequence[dict[str, str]]) -> str:
    """A stable id for a conversation: the system prompt is left out, so a new profile keeps ids."""
    turns = [[m.get("role", ""), m.get("content", "")] for m in messages if m.get("role") != "system"]
    return hashlib.sha256(repr(turns).encode("utf-8")).hexdigest()[:16]


def load_examples(path: Path, split: str) -> list[EvalExample]:
    """Conversations ending in an assistant answer, from one mlx-lm chat JSONL file."""
    from .workspace import read_jsonl

    records, _bad = read_jsonl(path)
    out = []
    for record in records:
        messages = record.get("messages")
        if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
            continue
        if not any(m.get("role") == "user" for m in messages):
            continue
        out.append(EvalExample(example_key(messages), split, tuple(messages)))
    return out


def select_examples(examples: Sequence[EvalExample], limit: int, seed: int = 0,
                    prefer: Sequence[str] = ()) -> list[EvalExample]:
    """A deterministic subset: keys in `prefer` first (to match an earlier eval), then a seeded order."""
    if limit <= 0:
        return []
    rank = {key: i for i, key in enumerate(prefer)}

    def order(ex: EvalExample) -> tuple[int, str]:
        if ex.key in rank:
            return (0, f"{rank[ex.key]:08d}")
        return (1, hashlib.sha256(f"{seed}:{ex.key}".encode()).hexdigest())

    unique = {ex.key: ex for ex in examples}
    return sorted(unique.values(), key=order)[:limit]


# --- scoring one model (mlx) -------------------------------------------------------------------


LOSS_TOKENS_PER_BATCH = 2048  # tokens in one batched forward pass (bounds the logits' memory)
GENERATION_BATCH = 8  # answers decoded together: one pass over the weights serves all of them


def answer_losses(model: Any, tokenizer: Any, conversations: Sequence[Sequence[dict[str, str]]],
                  max_seq_length: int = 2048) -> list[tuple[float, int]]:
    """For each conversation, the summed cross-entropy of its final answer's tokens and their count.

    Tokens and the mask offset come from `dataset.training_tokens` (mlx-lm's ChatDataset, as the
    trainer makes them); only the answer's tokens count, as in training with prompt masking. Unlike
    mlx-lm's default_loss, the padding position just past the end is not counted. Conversations of
    similar length are scored together in right-padded batches: causal attention means the padding
    never changes a real token's logits.
    """
    import mlx.core as mx
    import mlx.nn as nn

    from .dataset import training_tokens

    items = []
    for messages in conversations:
        tokens, offset = training_tokens(tokenizer, {"messages": list(messages)}, mask_prompt=True)
        items.append((list(tokens)[:max_seq_length], offset))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    start = 0
    while start < len(order):
        longest = max(2, len(items[order[start]][0]))
        size = 1
        while start + size < len(order):
            longest_next = max(longest, len(items[order[start + size]][0]))
            if longest_next * (size + 1) > LOSS_TOKENS_PER_BATCH:
                break
            longest, size = longest_next, size + 1
        chunk = order[start : start + size]
        start += size
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


def answer_loss(model: Any, tokenizer: Any, messages: Sequence[dict[str, str]], max_seq_length: int = 2048) -> tuple[float, int]:
    """`answer_losses` for one conversation."""
    return answer_losses(model, tokenizer, [messages], max_seq_length)[0]


def prompt_tokens(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """The generation prompt for a conversation up to the answer, rendered as training and chat do."""
    from .dataset import encode_prompt, render_prompt

    return encode_prompt(tokenizer, render_prompt(tokenizer, list(messages), True))


def probe_messages(tokenizer: Any, system_prompt: str, question: str) -> list[dict[str, str]]:
    """A fresh one-question conversation, built with the same system prompt handling as training."""
    from .dataset import chat_messages

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


def generate_answer(model: Any, tokenizer: Any, tokens: list[int], max_tokens: int) -> str:
    """Greedy decoding (temperature 0), so the same model and prompt give the same answer."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    sampler = make_sampler(temp=0.0)
    text = "".join(r.text for r in stream_generate(model, tokenizer, tokens, max_tokens=max_tokens, sampler=sampler))
    return text.strip()


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
            sys.stderr.write("\r\x1b[2K" + line)
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif self.done >= self.total and self.total:  # not a terminal: only the finished line
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


@dataclass(frozen=True)
class ModelSpec:
    """One thing to score: a label ("base", or a run's name), a model ref and optional adapters."""

    label: str
    ref: str
    adapter_path: Path | None = None


def score_model(loaded: Any, loss_examples: Sequence[EvalExample], gen_examples: Sequence[EvalExample],
                probes: Sequence[str], system_prompt: str, style: StyleModel, *, max_tokens: int,
                max_seq_length: int, label: str, progress: bool = True,
                cached: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Loss on `loss_examples`, answers to `gen_examples` and `probes`: one record per item.

    `cached` maps "loss:KEY", "answer:KEY" or "probe:QUESTION" to an earlier record for this same
    model and settings; those are reused instead of recomputed (retrain scores the old run once,
    and the base model once for all runs).
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    cached = dict(cached or {})

    todo = [ex for ex in loss_examples if f"loss:{ex.key}" not in cached]
    bar = Progress(f"{label}: loss on held-out answers", len(todo), progress and bool(todo))
    for start in range(0, len(todo), GENERATION_BATCH):
        chunk = todo[start : start + GENERATION_BATCH]
        for ex, (total, count) in zip(chunk, answer_losses(model, tokenizer, [e.messages for e in chunk], max_seq_length), strict=True):
            cached[f"loss:{ex.key}"] = {"loss_sum": total, "tokens": count}
            bar.step()
    losses = {ex.key: {**cached[f"loss:{ex.key}"], "split": ex.split} for ex in loss_examples}

    # Held-out questions are asked with their own turns up to the answer (exactly the prompt they
    # were trained against); probes in a fresh conversation with the run's system prompt.
    asks = [(f"answer:{ex.key}", list(ex.messages[:-1])) for ex in gen_examples]
    asks += [(f"probe:{q}", probe_messages(tokenizer, system_prompt, q)) for q in probes]
    asks = [(key, messages) for key, messages in asks if key not in cached]
    bar = Progress(f"{label}: answers", len(asks), progress and bool(asks))
    for start in range(0, len(asks), GENERATION_BATCH):
        chunk = asks[start : start + GENERATION_BATCH]
        prompts = [prompt_tokens(tokenizer, messages) for _, messages in chunk]
        for (key, _), answer in zip(chunk, generate_answers(model, tokenizer, prompts, max_tokens), strict=True):
            cached[key] = {"answer": answer}
            bar.step()

    answers = {}
    for ex in gen_examples:
        answer = cached[f"answer:{ex.key}"]["answer"]
        answers[ex.key] = {"answer": answer, "f1": word_f1(answer, ex.reference), "rouge_l": rouge_l(answer, ex.reference),
                           "style": style.similarity(answer), "abstained": is_abstention(answer)}
    probe_answers = {}
    for question in probes:
        answer = cached[f"probe:{question}"]["answer"]
        probe_answers[question] = {"answer": answer, "abstained": is_abstention(answer)}
    return {"loss": losses, "answers": answers, "probes": probe_answers}


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def summarize(scores: dict[str, Any], keys: set[str] | None = None) -> dict[str, Any]:
    """Means over the items (restricted to `keys` if given): loss/perplexity per split, F1, ROUGE-L,
    style, and the share of probes answered with an abstention."""
    out: dict[str, Any] = {}
    for split in ("test", "valid"):
        items = [r for k, r in scores["loss"].items() if r["split"] == split and (keys is None or k in keys)]
        tokens = sum(i["tokens"] for i in items)
        loss = sum(i["loss_sum"] for i in items) / tokens if tokens else None
        out[split] = {"loss": loss, "perplexity": math.exp(loss) if loss is not None and loss < 50 else None,
                      "examples": len(items), "tokens": tokens}
    answers = [a for k, a in scores["answers"].items() if keys is None or k in keys]
    out["answers"] = len(answers)
    for metric in ("f1", "rouge_l", "style"):
        out[metric] = _mean(a[metric] for a in answers)
    # The other side of groundedness: declining questions the author did answer.
    out["abstained_answerable"] = _mean(1.0 if a.get("abstained") else 0.0 for a in answers)
    probes = list(scores["probes"].values())
    out["probes"] = len(probes)
    out["grounded"] = _mean(1.0 if p["abstained"] else 0.0 for p in probes)
    return out


# --- the eval of one run (the side-effecting part) ---------------------------------------------

DEFAULT_LIMIT = 20
DEFAULT_PROBES = 6
DEFAULT_MAX_TOKENS = 96  # generation dominates eval time on a CPU; 96 tokens is about 70 words
DEFAULT_LOSS_LIMIT = 40  # pairs per split scored for loss: a forward pass each (a whole typical test split)


@dataclass(frozen=True)
class EvalResult:
    run: str
    out_dir: Path
    metrics: dict[str, Any]  # what metrics.json holds

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.md"


def _run_and_manifest(ws: Any, run: str | None) -> tuple[Path, dict[str, Any]]:
    from .errors import ModelError, TrainingError
    from .train import find_run, read_manifest

    try:
        run_dir = find_run(ws, run)
    except TrainingError:
        if run is None:
            raise ModelError(f"There is no trained run in {ws.root} to evaluate; run `mlx-partner train` first.") from None
        raise
    return run_dir, read_manifest(run_dir)


def _base_ref(ws: Any, run_name: str, manifest: dict[str, Any]) -> str:
    """The run's base model as a loadable reference, or a clear error if it is gone."""
    from .errors import ModelError
    from .models import resolve_model

    refs = [r for r in (manifest.get("base_model_path"), manifest.get("base_model")) if r]
    if not refs:
        raise ModelError(f"The manifest of run {run_name} does not name its base model; train it again.")
    problem = ""
    for ref in refs:
        try:
            return str(resolve_model(str(ref), ws.root))
        except ModelError as exc:
            problem = str(exc).rstrip(".")
    raise ModelError(
        f"Run {run_name} was trained on base model {manifest.get('base_model') or refs[0]}, which is not available "
        f"here ({problem}); restore or import that model, then run eval again."
    )


def _system_prompt(ws: Any, run_dir: Path, manifest: dict[str, Any]) -> str:
    if manifest.get("system_prompt"):
        return str(manifest["system_prompt"])
    path = run_dir / "system_prompt.txt"
    if path.exists():
        return path.read_text(encoding="utf-8")
    from .dataset import load_system_prompt

    return load_system_prompt(ws)


def _fingerprint(**parts: Any) -> str:
    return hashlib.sha256(repr(sorted(parts.items())).encode("utf-8")).hexdigest()[:16]


def _cache_from(metrics: dict[str, Any], label: str, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Earlier records of one model in a metrics.json, if they were made under the same settings."""
    entry = (metrics.get("scores") or {}).get(label) or {}
    if entry.get("fingerprint") != fingerprint:
        return {}
    out = {}
    for key, rec in (entry.get("loss") or {}).items():
        out[f"loss:{key}"] = {"loss_sum": rec["loss_sum"], "tokens": rec["tokens"]}
    for key, rec in (entry.get("answers") or {}).items():
        out[f"answer:{key}"] = {"answer": rec["answer"]}
    for question, rec in (entry.get("probes") or {}).items():
        out[f"probe:{question}"] = {"answer": rec["answer"]}
    return out


def read_metrics(ws: Any, run: str) -> dict[str, Any] | None:
    import json

    path = ws.eval_dir / run / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_eval(ws: Any, settings: Any, run: str | None = None, *, limit: int = DEFAULT_LIMIT,
             probes: int = DEFAULT_PROBES, max_tokens: int = DEFAULT_MAX_TOKENS, seed: int = 0,
             loss_limit: int = DEFAULT_LOSS_LIMIT, compare_with: str | None = None,
             progress: bool = True) -> EvalResult:
    """Score the base model and the run's adapters; write eval/<run>/{metrics.json,report.md,chart.png}.

    With `compare_with` (another run's name, already evaluated), the same test pairs that run was
    scored on come first, and the report gains a side-by-side table over the pairs both share.
    """
    import mlx.core as mx

    from .errors import DatasetError
    from .models import load_model
    from .sources import load_documents

    run_dir, manifest = _run_and_manifest(ws, run)
    run_name = str(manifest.get("run") or run_dir.name)
    base_ref = _base_ref(ws, run_name, manifest)
    system_prompt = _system_prompt(ws, run_dir, manifest)

    test = load_examples(ws.split_path("test"), "test")
    valid = load_examples(ws.split_path("valid"), "valid")
    if not test and not valid:
        raise DatasetError(f"There are no test or valid examples in {ws.data_dir}; run `mlx-partner dataset` first.")
    previous = read_metrics(ws, compare_with) if compare_with else None
    if compare_with and previous is None:
        raise DatasetError(f"Run {compare_with} has no evaluation to compare with; run `mlx-partner eval --run {compare_with}` first.")
    prefer = [e["key"] for e in (previous or {}).get("examples", [])]
    held_out = test or valid  # a dataset built with test_fraction = 0 has no test split
    gen_examples = select_examples(held_out, limit, seed, prefer)
    loss_examples = select_examples(test, loss_limit, seed, prefer) + select_examples(valid, loss_limit, seed, prefer)

    documents, _skipped = load_documents(ws.sources_dir)
    texts = [d.text for d in documents]
    style = fit_style(texts)
    probe_list = probe_questions(texts, probes, seed)

    max_seq_length = int(getattr(settings.train, "max_seq_length", 2048))
    common = {"max_tokens": max_tokens, "max_seq_length": max_seq_length, "system": system_prompt}
    adapters = run_dir
    specs = [
        ("base", base_ref, None, _fingerprint(model=base_ref, **common)),
        ("tuned", base_ref, adapters, _fingerprint(model=base_ref, adapters=_adapter_hash(adapters), **common)),
    ]
    # Earlier evals of the same models under the same settings are reused item by item: this run's
    # own earlier eval, and for the base model any run's eval.
    earlier = [m for m in (read_metrics(ws, p.name) for p in sorted(ws.eval_dir.glob("*")) if p.is_dir()) if m]

    scores: dict[str, Any] = {}
    for label, ref, adapter_path, fingerprint in specs:
        cached: dict[str, dict[str, Any]] = {}
        for m in earlier:
            if label == "base" or m.get("run") == run_name:
                cached.update(_cache_from(m, label, fingerprint))
        mx.random.seed(seed)
        loaded = load_model(ref, adapter_path=adapter_path, workspace_root=ws.root)
        shown = "base" if label == "base" else run_name
        record = score_model(loaded, loss_examples, gen_examples, probe_list, system_prompt, style,
                             max_tokens=max_tokens, max_seq_length=max_seq_length, label=shown,
                             progress=progress, cached=cached)
        scores[label] = {"fingerprint": fingerprint, **record}
        del loaded
        mx.clear_cache()

    metrics: dict[str, Any] = {
        "run": run_name,
        "base_model": manifest.get("base_model") or base_ref,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {"limit": limit, "probes": probes, "max_tokens": max_tokens, "seed": seed,
                     "loss_limit": loss_limit, "decoding": "greedy"},
        "dataset": manifest.get("dataset"),
        "summary": {label: summarize(scores[label]) for label in scores},
        "reference_style": _mean(style.similarity(ex.reference) for ex in gen_examples),
        # (With a template that has no system role the system text starts the question: drop it.)
        "examples": [{"key": ex.key, "split": ex.split, "question": ex.question.removeprefix(system_prompt).strip(),
                      "reference": ex.reference} for ex in gen_examples],
        "scores": scores,
    }
    if previous is not None:
        metrics["comparison"] = compare(previous, metrics)
    out_dir = ws.eval_dir / run_name
    write_outputs(out_dir, metrics)
    return EvalResult(run_name, out_dir, metrics)


def _adapter_hash(run_dir: Path) -> str:
    """Identity of a run's trained weights, so a re-trained run of the same name is not reused."""
    path = run_dir / "adapters.safetensors"
    try:
        stat = path.stat()
    except OSError:
        return ""
    return f"{stat.st_size}:{stat.st_mtime_ns}"


# --- comparing two runs on the pairs they share ------------------------------------------------

COMPARE_ROWS = (
    ("test loss", "test", "loss", "lower"),
    ("test perplexity", "test", "perplexity", "lower"),
    ("answer F1", None, "f1", "higher"),
    ("ROUGE-L", None, "rouge_l", "higher"),
    ("style similarity", None, "style", "higher"),
    ("grounded (probes)", None, "grounded", "higher"),
    ("declines held-out questions", None, "abstained_answerable", "lower"),
)


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Both runs' tuned metrics over the test pairs both were scored on (by content key)."""
    old_tuned, new_tuned = old["scores"]["tuned"], new["scores"]["tuned"]
    shared_answers = set(old_tuned["answers"]) & set(new_tuned["answers"])
    shared_loss = {k for k in set(old_tuned["loss"]) & set(new_tuned["loss"]) if new_tuned["loss"][k]["split"] == "test"}
    keys = shared_answers | shared_loss
    return {
        "old": old["run"],
        "new": new["run"],
        "shared_answers": len(shared_answers),
        "shared_test_loss": len(shared_loss),
        "old_summary": summarize(old_tuned, keys),
        "new_summary": summarize(new_tuned, keys),
        "base_summary": summarize(new["scores"]["base"], keys) if "base" in new["scores"] else None,
    }


# --- writing the report ------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, base, tuned) rows for the summary table."""
    base, tuned = metrics["summary"]["base"], metrics["summary"]["tuned"]

    def grounded(s: dict[str, Any]) -> str:
        if not s["probes"]:
            return "-"
        return f"{round(s['grounded'] * s['probes'])}/{s['probes']}"

    def declined(s: dict[str, Any]) -> str:
        if not s["answers"] or s.get("abstained_answerable") is None:
            return "-"
        return f"{round(s['abstained_answerable'] * s['answers'])}/{s['answers']}"

    return [
        (f"test loss ({base['test']['examples']} pairs)", _fmt(base["test"]["loss"]), _fmt(tuned["test"]["loss"])),
        ("test perplexity", _fmt(base["test"]["perplexity"], 2), _fmt(tuned["test"]["perplexity"], 2)),
        (f"valid loss ({base['valid']['examples']} pairs)", _fmt(base["valid"]["loss"]), _fmt(tuned["valid"]["loss"])),
        ("valid perplexity", _fmt(base["valid"]["perplexity"], 2), _fmt(tuned["valid"]["perplexity"], 2)),
        (f"answer F1 ({tuned['answers']} answers)", _fmt(base["f1"]), _fmt(tuned["f1"])),
        ("answer ROUGE-L", _fmt(base["rouge_l"]), _fmt(tuned["rouge_l"])),
        (f"style similarity (references: {_fmt(metrics.get('reference_style'))})", _fmt(base["style"]), _fmt(tuned["style"])),
        ("grounded: says it has not written on it", grounded(base), grounded(tuned)),
        ("declines held-out questions (lower is better)", declined(base), declined(tuned)),
    ]


def comparison_rows(comparison: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, old run, new run, which is better) rows."""
    rows = []
    old, new = comparison["old_summary"], comparison["new_summary"]
    for name, split, key, better in COMPARE_ROWS:
        a = old[split][key] if split else old[key]
        b = new[split][key] if split else new[key]
        verdict = ""
        if a is not None and b is not None and abs(a - b) > 1e-9:
            verdict = comparison["new"] if (b < a) == (better == "lower") else comparison["old"]
        rows.append((name, _fmt(a), _fmt(b), verdict))
    return rows


def _numeric(cell: str) -> bool:
    if re.fullmatch(r"\d+/\d+", cell):  # a count such as 3/6
        return True
    try:
        float(cell.rstrip("%"))
    except ValueError:
        return cell in ("-", "")
    return True


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table: columns of numbers right-aligned, the rest (and the first) left."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    right = [i > 0 and all(_numeric(str(r[i])) for r in rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if right[i] else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _quote(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return (text[: limit - 1] + "…") if len(text) > limit else text


def render_report(metrics: dict[str, Any]) -> str:
    run, s = metrics["run"], metrics["settings"]
    lines = [
        f"# Evaluation of run {run}",
        "",
        f"Base model: `{metrics['base_model']}`. Evaluated {metrics['created']}, greedy decoding, seed {s['seed']}, "
        f"at most {s['max_tokens']} new tokens an answer. Loss is on the author's answers only (the prompt is "
        f"masked, as in training); answers are scored against the author's reference answers; style is the "
        f"character n-gram TF-IDF cosine similarity to the author's sources; grounded counts the questions on "
        f"topics absent from the sources that were answered with \"I haven't written about that\" or the like, "
        f"and declines counts the same kind of answer to held-out questions the author did answer.",
        "",
        "![base and tuned scores](chart.png)",
        "",
        _md_table(["metric", "base", run], summary_rows(metrics)),
        "",
    ]
    comparison = metrics.get("comparison")
    if comparison:
        lines += [
            f"## {comparison['new']} against {comparison['old']}",
            "",
            f"On the same held-out pairs: {comparison['shared_answers']} answered by both, "
            f"{comparison['shared_test_loss']} test pairs scored for loss by both.",
            "",
            _md_table(["metric", comparison["old"], comparison["new"], "better"], comparison_rows(comparison)),
            "",
        ]
    base, tuned = metrics["scores"]["base"], metrics["scores"]["tuned"]
    lines += ["## Answers", ""]
    for ex in metrics["examples"]:
        key = ex["key"]
        b, t = base["answers"].get(key), tuned["answers"].get(key)
        if not b or not t:
            continue
        lines += [
            f"**Q ({ex['split']}):** {_quote(ex['question'])}",
            "",
            f"- *author:* {_quote(ex['reference'])}",
            f"- *base* (F1 {_fmt(b['f1'], 2)}): {_quote(b['answer'])}",
            f"- *{run}* (F1 {_fmt(t['f1'], 2)}): {_quote(t['answer'])}",
            "",
        ]
    if tuned["probes"]:
        lines += ["## Groundedness probe", "", "Questions on topics the author has not written about.", ""]
        rows = []
        for question, t in tuned["probes"].items():
            b = base["probes"].get(question, {})
            rows.append([_quote(question, 80), "yes" if b.get("abstained") else "no", "yes" if t["abstained"] else "no",
                         _quote(t["answer"], 160)])
        lines += [_md_table(["question", "base abstains", f"{run} abstains", f"{run} answer"], rows), ""]
    return "\n".join(lines)


def chart_png(metrics: dict[str, Any]) -> bytes:
    """Base and tuned scores; with a comparison, base, the old run and the new one on shared pairs."""
    comparison = metrics.get("comparison")
    if comparison and comparison.get("base_summary"):
        summaries = [comparison["base_summary"], comparison["old_summary"], comparison["new_summary"]]
        series = ["base", comparison["old"], comparison["new"]]
    else:
        summaries = [metrics["summary"]["base"], metrics["summary"]["tuned"]]
        series = ["base", metrics["run"]]
    groups = [(name, [s[key] or 0.0 for s in summaries])
              for name, key in (("F1", "f1"), ("ROUGE-L", "rouge_l"), ("STYLE", "style"), ("GROUNDED", "grounded"))]
    last = summaries[-1]
    title = f"{last['answers']} held-out answers, {last['probes']} probes"
    return bar_chart(groups, series, title=title)


def write_outputs(out_dir: Path, metrics: dict[str, Any]) -> None:
    from .workspace import atomic_write_bytes, atomic_write_json, atomic_write_text

    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_bytes(out_dir / "chart.png", chart_png(metrics))
    atomic_write_text(out_dir / "report.md", render_report(metrics))
