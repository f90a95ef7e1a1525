"""The memory plan: will this training run fit, and if not, which settings would.

Peak memory is estimated from the model's config.json alone (no weights are loaded, so
`train --plan` is instant even for a 3B model): the weights as they will compute (float32 on a
CPU backend, as stored on Metal), the trainable parameters with their gradients and Adam's two
moments, and the activations the backward pass keeps, which grow with batch x sequence length x
hidden size x layers (plus batch x heads x length^2 for attention scores, and batch x length x
vocabulary for the logits). Gradient checkpointing keeps only each layer's input and recomputes
the rest. The budget is the machine's available RAM, or `--memory-gb` to plan for a smaller Mac
(where Metal may use about 75% of unified memory).

The constants are rough by design: the plan is printed beside the measured peak after every run
so it can be checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any

GB = 1024**3
# Share of a Mac's unified memory Metal lets one process wire (macOS default working set).
MAC_USABLE_SHARE = 0.75
# Hidden-sized and intermediate-sized float tensors a llama block keeps per token for backward.
K_HIDDEN = 12
K_INTERMEDIATE = 4
# MLX runtime, tokenizer, Python and allocator slack.
OVERHEAD_BYTES = 0.35 * GB


@dataclass(frozen=True)
class Arch:
    """The shape of a llama-like model, read from its config.json."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    bits: int | None  # quantization bits as stored, None for float weights
    stored_bytes: int  # bytes per float weight as stored (2 for float16/bfloat16, 4 for float32)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Arch:
        text = config.get("text_config", config)  # multimodal configs nest the language model
        hidden = int(text.get("hidden_size", 0) or 0)
        heads = int(text.get("num_attention_heads", 0) or 1)
        quant = config.get("quantization") or config.get("quantization_config") or {}
        dtype = str(config.get("torch_dtype", text.get("torch_dtype", "float16")))
        return cls(
            hidden=hidden,
            layers=int(text.get("num_hidden_layers", 0) or 0),
            intermediate=int(text.get("intermediate_size", 4 * hidden) or 4 * hidden),
            vocab=int(text.get("vocab_size", 32000) or 32000),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads", heads) or heads),
            head_dim=int(text.get("head_dim", 0) or (hidden // heads if heads else 0)),
            tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            bits=int(quant["bits"]) if isinstance(quant, dict) and quant.get("bits") else None,
            stored_bytes=4 if "32" in dtype else 2,
        )

    @property
    def layer_linears(self) -> list[tuple[int, int]]:
        """(in, out) of the linear layers in one block: q, k, v, o, gate, up, down."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        q = self.heads * self.head_dim
        i = self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def params(self) -> int:
        per_layer = sum(a * b for a, b in self.layer_linears) + 2 * self.hidden
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * per_layer + embed + self.hidden


@dataclass(frozen=True)
class Knobs:
    """The settings that move peak memory."""

    batch_size: int
    grad_accumulation: int
    max_seq_length: int
    num_layers: int
    fine_tune_type: str
    lora_rank: int
    grad_checkpoint: bool
    rows_per_example: int = 1  # sequences each example puts through the model: 2 for orpo/dpo (chosen, rejected)

    def flags(self, before: Knobs) -> list[str]:
        """The CLI flags that turn `before` into these knobs."""
        out = []
        if self.batch_size != before.batch_size:
            out.append(f"--batch-size {self.batch_size}")
        if self.grad_accumulation != before.grad_accumulation:
            out.append(f"--grad-accumulation {self.grad_accumulation}")
        if self.max_seq_length != before.max_seq_length:
            out.append(f"--max-seq-length {self.max_seq_length}")
        if self.num_layers != before.num_layers:
            out.append(f"--num-layers {self.num_layers}")
        if self.grad_checkpoint and not before.grad_checkpoint:
            out.append("--grad-checkpoint")
        return out


@dataclass(frozen=True)
class Estimate:
    weights: float
    trainable_params: int
    trainable: float  # parameters + gradients + Adam moments
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.trainable + self.activations + self.overhead


@dataclass(frozen=True)
class Suggestion:
    knobs: Knobs
    estimate: Estimate
    flags: list[str]
    why: str


@dataclass(frozen=True)
class MemoryPlan:
    arch: Arch
    knobs: Knobs
    seq_len: int  # the longest padded batch the data will produce (<= max_seq_length)
    on_cpu: bool
    estimate: Estimate
    budget: float
    budget_source: str
    suggestion: Suggestion | None

    @property
    def fits(self) -> bool:
        return self.estimate.total <= self.budget

    def lines(self) -> list[str]:
        e, gb = self.estimate, GB
        k = self.knobs
        compute = "float32 (CPU)" if self.on_cpu else (f"{self.arch.bits}-bit" if self.arch.bits else "16-bit")
        out = [
            f"Memory plan ({compute}, batch {k.batch_size}{' pairs (chosen + rejected)' if k.rows_per_example == 2 else ''}"
            f" x {self.seq_len} tokens, {k.fine_tune_type} on "
            f"{k.num_layers} layers{', gradient checkpointing' if k.grad_checkpoint else ''}):",
            f"  weights      {e.weights / gb:6.2f} GB  ({self.arch.params / 1e6:,.0f}M parameters)",
            f"  trainable    {e.trainable / gb:6.2f} GB  ({e.trainable_params / 1e6:,.2f}M parameters, gradients, Adam state)",
            f"  activations  {e.activations / gb:6.2f} GB",
            f"  overhead     {e.overhead / gb:6.2f} GB",
            f"  peak (est.)  {e.total / gb:6.2f} GB of {self.budget / gb:.1f} GB {self.budget_source}: "
            + ("fits." if self.fits else "does NOT fit."),
        ]
        s = self.suggestion
        if s is not None:
            verb = "To fit" if not self.fits else "To save memory"
            out.append(f"  {verb}: {' '.join(s.flags)}  ({s.why}; est. {s.estimate.total / gb:.2f} GB).")
        elif not self.fits:
            out.append("  No setting here makes it fit: choose a smaller base model (--base-model).")
        return out


def estimate(arch: Arch, k: Knobs, seq_len: int, on_cpu: bool) -> Estimate:
    """Peak bytes for one training step with these knobs (pure)."""
    if on_cpu:
        weights = arch.params * 4.0
        act_bytes = 4
    else:
        per = (arch.bits / 8 + 4 / 64) if arch.bits else arch.stored_bytes
        weights = arch.params * per
        act_bytes = 2
    layers = arch.layers if k.num_layers < 0 else min(k.num_layers, arch.layers)
    if k.fine_tune_type == "full":
        trainable_params = layers * (sum(a * b for a, b in arch.layer_linears) + 2 * arch.hidden)
    else:
        per_linear = [k.lora_rank * (a + b) + (b if k.fine_tune_type == "dora" else 0) for a, b in arch.layer_linears]
        trainable_params = layers * sum(per_linear)
    # float32 parameter copy (full) or LoRA weights, + gradient + two Adam moments
    trainable = trainable_params * 4.0 * (3 if k.fine_tune_type == "full" else 4)
    rows = k.batch_size * k.rows_per_example
    tokens = rows * seq_len
    per_layer = tokens * (K_HIDDEN * arch.hidden + K_INTERMEDIATE * arch.intermediate) * act_bytes
    per_layer += rows * arch.heads * seq_len * seq_len * 2 * act_bytes
    # Gradients flow down only to the lowest adapted layer, so only those layers keep activations.
    kept_layers = layers
    if k.grad_checkpoint:
        stored = kept_layers * tokens * arch.hidden * act_bytes + 2 * per_layer
    else:
        stored = kept_layers * per_layer + per_layer
    logits = tokens * arch.vocab * act_bytes * 3  # logits, log-softmax and their gradient
    return Estimate(weights, trainable_params, trainable, stored + logits, OVERHEAD_BYTES)


def padded_length(longest: int, max_seq_length: int) -> int:
    """mlx-lm pads each batch to one plus a multiple of 32, capped at max_seq_length."""
    return min(1 + 32 * ((longest + 31) // 32), max_seq_length)


def suggest(arch: Arch, k: Knobs, lengths: list[int], budget: float, on_cpu: bool) -> Suggestion | None:
    """The first cumulative change that fits the budget: checkpointing, batch 1 with accumulation,
    a shorter max length (the 95th percentile of the data), fewer layers."""
    longest = max(lengths) if lengths else k.max_seq_length
    steps: list[tuple[str, Knobs]] = []
    cur = k
    if not cur.grad_checkpoint:
        cur = replace(cur, grad_checkpoint=True)
        steps.append(("gradient checkpointing", cur))
    if cur.batch_size > 1:
        cur = replace(cur, grad_accumulation=cur.batch_size * cur.grad_accumulation, batch_size=1)
        steps.append(("batch 1 with gradient accumulation, the same effective batch", cur))
    if lengths:
        p95 = sorted(lengths)[int(0.95 * (len(lengths) - 1))]
        shorter = max(256, 64 * ((p95 + 63) // 64))
        if shorter < min(cur.max_seq_length, longest):
            cur = replace(cur, max_seq_length=shorter)
            steps.append((f"max length {shorter} tokens (95% of examples fit)", cur))
    for n in (8, 4, 2):
        if cur.num_layers < 0 or cur.num_layers > n:
            cur = replace(cur, num_layers=n)
            steps.append((f"adapt the top {n} layers", cur))
    whys: list[str] = []
    for why, knobs in steps:
        whys.append(why)
        seq = padded_length(min(longest, knobs.max_seq_length), knobs.max_seq_length)
        est = estimate(arch, knobs, seq, on_cpu)
        if est.total <= budget:
            return Suggestion(knobs, est, knobs.flags(k), ", ".join(whys))
    return None


def available_memory(memory_gb: float | None = None) -> tuple[float, str]:
    """(bytes training may use, where that number comes from)."""
    if memory_gb:
        return memory_gb * GB * MAC_USABLE_SHARE, f"(75% of the {memory_gb:g} GB you asked to plan for)"
    if sys.platform == "darwin":
        try:
            total = int(subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, check=True).stdout)
            return total * MAC_USABLE_SHARE, f"(75% of this Mac's {total / GB:.0f} GB)"
        except (OSError, ValueError, subprocess.CalledProcessError):
            pass
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        if "MemAvailable" in info:
            return float(info["MemAvailable"]), "available on this machine"
    except (OSError, ValueError, IndexError):
        pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return float(total), "of RAM on this machine"
    except (OSError, ValueError, AttributeError):  # pragma: no cover
        return 16.0 * GB, "(assumed; could not read this machine's RAM)"


def make_plan(config: dict[str, Any], k: Knobs, lengths: list[int], on_cpu: bool,
              memory_gb: float | None = None) -> MemoryPlan:
    """The plan for these knobs on this data, with a suggestion when it does not fit (or is tight)."""
    arch = Arch.from_config(config)
    longest = max(lengths) if lengths else k.max_seq_length
    seq = padded_length(min(longest, k.max_seq_length), k.max_seq_length)
    est = estimate(arch, k, seq, on_cpu)
    budget, source = available_memory(memory_gb)
    suggestion = suggest(arch, k, lengths, budget * 0.8, on_cpu) if est.total > budget * 0.8 else None
    return MemoryPlan(arch, k, seq, on_cpu, est, budget, source, suggestion)
