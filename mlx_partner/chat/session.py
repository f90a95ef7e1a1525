"""A conversation with one loaded model that reuses its KV cache across turns; no terminal I/O.

    session, loaded = open_session(target, temperature=0.7, top_p=0.9, max_tokens=512)
    for piece in session.ask("What makes a good loaf?"):   # streamed text pieces
        print(piece, end="")

`ChatSession.ask(text)` streams the reply's text pieces and keeps the history; `ask(text, passages)`
(chat --rag) shows the model passages of her writing before the question, rendered by
`prompts.with_passages` as training renders them, while the history keeps the question alone. A
message too long for the window is cut to the part that fits (said once). Across turns it
keeps one KV cache: each turn renders the whole conversation through the same chat template as
training, keeps the cached tokens that are a prefix of it, and prefills only the rest. When the
conversation outgrows the context window the oldest turns are dropped (the system prompt always
stays). `mlx` and `mlx_lm` are imported where they are used, so importing this module is cheap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PartnerError
from ..models import load_model
from ..prompts import PassageLike, chat_messages, encode_prompt, render_prompt, with_passages
from .target import ChatTarget


def context_window(config: dict[str, Any], max_kv_size: int = 0) -> int:
    """Tokens the session may keep: the setting if given, else the model's trained window."""
    if max_kv_size and max_kv_size > 0:
        return max_kv_size
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = config.get(key) or (config.get("text_config") or {}).get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 4096


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class TurnStats:
    """Numbers about the last reply: what was prefilled, how fast, and why it stopped."""

    prompt_tokens: int = 0  # the whole rendered conversation
    prefill_tokens: int = 0  # of those, the ones actually run through the model this turn
    reused_tokens: int = 0  # taken from the KV cache
    generated_tokens: int = 0
    time_to_first_token: float = 0.0  # seconds from ask() to the first generated token
    generation_tps: float = 0.0
    finish_reason: str | None = None  # "stop", "length" or "interrupted"


@dataclass
class ChatSession:
    """A conversation with one loaded model: history, a reusable KV cache, sampling settings."""

    model: Any
    tokenizer: Any  # mlx_lm TokenizerWrapper
    system_prompt: str
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512
    window: int = 4096  # context tokens kept; see context_window()
    seed: int = 0
    repetition_penalty: float = 1.0  # > 1 discourages repeating the last 20 tokens (1 = off)
    history: list[tuple[str, str]] = field(default_factory=list)  # (question, answer)
    stats: TurnStats = field(default_factory=TurnStats)
    total_prefill_tokens: int = 0
    trimmed_turns: int = 0  # oldest turns dropped to fit the window, in all
    shown: dict[int, Any] = field(default_factory=dict)  # {turn number: its citation}, see annotate()
    _cache: list[Any] | None = None
    _cached: list[int] = field(default_factory=list)  # the tokens whose keys/values are in _cache
    _notices: list[str] = field(default_factory=list)
    _trim_told: bool = False

    def __post_init__(self) -> None:
        import mlx.core as mx

        mx.random.seed(self.seed)
        if self.max_tokens >= self.window:
            raise PartnerError(
                f"max_tokens ({self.max_tokens}) must be smaller than the context window ({self.window}); "
                f"lower --max-tokens or raise max_kv_size."
            )

    # -- rendering

    def messages(self, turns: list[tuple[str, str]], question: str | None) -> list[dict[str, str]]:
        """The conversation as chat messages, built exactly as the training examples are."""
        dialog: list[dict[str, str]] = []
        for q, a in turns:
            dialog += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if question is not None:
            dialog.append({"role": "user", "content": question})
        return chat_messages(self.system_prompt, dialog, self.tokenizer)

    def encode(self, turns: list[tuple[str, str]], question: str) -> list[int]:
        """Token ids of the conversation plus `question`, rendered and tokenized as in training."""
        return encode_prompt(self.tokenizer, render_prompt(self.tokenizer, self.messages(turns, question), True))

    def _fit(self, question: str, passages: Sequence[PassageLike] = ()) -> tuple[list[int], str]:
        """Tokens of the conversation plus `question`, dropping the oldest turns to fit the window;
        returns them with the question as it was kept (cut when it alone is too long).

        Once turns must go, it drops down to 3/4 of the room rather than just under it: every drop
        changes the start of the conversation, so the cache must be prefilled again, and some slack
        lets the next few turns reuse it instead of paying that on every turn.
        """
        budget = self.window - self.max_tokens
        limit = budget
        while True:
            tokens = self.encode(self.history, with_passages(question, passages))
            if len(tokens) <= limit:
                return tokens, question
            limit = min(limit, max(budget * 3 // 4, 1))
            if len(tokens) <= budget and not self.history:
                return tokens, question
            if not self.history:
                return self._cut(question, passages, budget, len(tokens))
            self.history.pop(0)
            self.shown.pop(self.trimmed_turns, None)
            self.trimmed_turns += 1
            if not self._trim_told:
                self._trim_told = True
                self._notices.append(
                    f"(The conversation is longer than the context window of {self.window} tokens; "
                    f"the oldest turns are being dropped from now on.)"
                )

    def _cut(self, question: str, passages: Sequence[PassageLike], budget: int, total: int) -> tuple[list[int], str]:
        """The longest start of `question` (cut at a space) that fits `budget` with the system prompt
        and the passages: a 50 KB paste is answered from its first part, not refused."""

        def fits(n: int) -> list[int] | None:
            tokens = self.encode([], with_passages(question[:n].rstrip(), passages))
            return tokens if len(tokens) <= budget else None

        if fits(0) is None:
            if passages:  # no room for the passages: answer without them
                return self._cut(question, (), budget, total)
            raise PartnerError(
                f"The system prompt alone is more than the {budget} tokens the context window leaves after "
                f"max_tokens={self.max_tokens}; lower --max-tokens or raise max_kv_size."
            )
        lo, hi = 0, len(question)
        while lo < hi:  # the largest n that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) is not None else (lo, mid - 1)
        space = question.rfind(" ", 0, lo + 1)
        n = space if space > lo - 40 and space > 0 else lo
        kept = question[:n].rstrip()
        self._notices.append(
            f"(Your message was {total} tokens with the system prompt, more than the {budget} the context window "
            f"leaves for it; only its first {len(kept)} of {len(question)} characters were used.)"
        )
        return fits(len(kept)) or self.encode([], with_passages(kept, passages)), kept

    def annotate(self, note: Any) -> None:
        """Keep `note` (what chat showed under the last answer: a `citations.Citation`) with that
        turn, for /save. Turns are numbered from the first ever asked, so dropping old turns to fit
        the window moves no note to another turn."""
        if self.history and note is not None:
            self.shown[self.trimmed_turns + len(self.history) - 1] = note

    def turns(self) -> list[tuple[str, str, Any]]:
        """The kept turns as (question, answer, its note or None)."""
        return [(q, a, self.shown.get(self.trimmed_turns + i)) for i, (q, a) in enumerate(self.history)]

    def pop_notices(self) -> list[str]:
        """Messages for the user (e.g. that old turns are being dropped), each given once."""
        out, self._notices = self._notices, []
        return out

    # -- generation

    def sampler(self) -> Callable[..., Any]:
        from mlx_lm.sample_utils import make_sampler

        return make_sampler(temp=self.temperature, top_p=self.top_p if self.temperature > 0 else 0.0)

    def logits_processors(self) -> list[Callable[..., Any]] | None:
        from mlx_lm.sample_utils import make_logits_processors

        if self.repetition_penalty == 1.0:
            return None
        return make_logits_processors(repetition_penalty=self.repetition_penalty)

    def _prepare_cache(self, tokens: list[int]) -> list[int]:
        """Reuse the cached prefix of `tokens`; return the suffix that must still be prefilled."""
        from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

        keep = common_prefix(self._cached, tokens) if self._cache is not None else 0
        keep = min(keep, len(tokens) - 1)  # at least one token must go through the model
        if self._cache is not None and keep > 0:
            extra = len(self._cached) - keep
            if extra and trim_prompt_cache(self._cache, extra) != extra:
                keep = 0  # this cache cannot be cut back: start over
        if self._cache is None or keep == 0:
            self._cache = make_prompt_cache(self.model)
            keep = 0
        self._cached = tokens[:keep]
        return tokens[keep:]

    def _cache_offset(self) -> int | None:
        if not self._cache:
            return None
        offset = getattr(self._cache[0], "offset", None)
        return offset if isinstance(offset, int) else None

    def _settle_cache(self) -> None:
        """Make the bookkeeping match what the cache really holds (after an interrupt, say)."""
        from mlx_lm.models.cache import trim_prompt_cache

        offsets = {getattr(c, "offset", None) for c in self._cache or []}
        if len(offsets) > 1:  # stopped between layers: the layers disagree, so start over
            self._cache, self._cached = None, []
            return
        offset = self._cache_offset()
        if offset is None or offset == len(self._cached):
            return
        if offset < len(self._cached):
            self._cached = self._cached[:offset]
        elif trim_prompt_cache(self._cache, offset - len(self._cached)) != offset - len(self._cached):
            self._cache, self._cached = None, []

    def ask(self, question: str, passages: Sequence[PassageLike] = ()) -> Iterator[str]:
        """Stream the reply to `question` as text pieces; the turn joins the history when done.

        `passages` go before the question in this turn's prompt only (`chat --rag`). Closing the
        iterator early (Ctrl-C in the REPL) keeps the partial reply in the history and the cache
        consistent, so the conversation goes on.
        """
        from mlx_lm.generate import stream_generate

        start = time.perf_counter()
        tokens, question = self._fit(question, passages)
        suffix = self._prepare_cache(tokens)
        self.stats = TurnStats(prompt_tokens=len(tokens), prefill_tokens=len(suffix),
                               reused_tokens=len(tokens) - len(suffix))
        self.total_prefill_tokens += len(suffix)
        self._cached = list(tokens)
        pieces: list[str] = []
        finish = "interrupted"
        try:
            for response in stream_generate(
                self.model, self.tokenizer, suffix, max_tokens=self.max_tokens,
                sampler=self.sampler(), logits_processors=self.logits_processors(), prompt_cache=self._cache,
            ):
                if not self.stats.generated_tokens:
                    self.stats.time_to_first_token = time.perf_counter() - start
                self._cached.append(int(response.token))
                self.stats.generated_tokens = response.generation_tokens
                self.stats.generation_tps = response.generation_tps
                if response.finish_reason is not None:
                    finish = response.finish_reason
                if response.text:
                    pieces.append(response.text)
                    yield response.text
        finally:
            self.stats.finish_reason = finish
            self._settle_cache()
            self.history.append((question, "".join(pieces).strip()))

    def reply(self, question: str, passages: Sequence[PassageLike] = ()) -> str:
        """The whole reply at once."""
        return "".join(self.ask(question, passages))

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays) and empty the cache."""
        self.history.clear()
        self.shown.clear()
        self._cache, self._cached = None, []
        self._trim_told = False


def open_session(target: ChatTarget, *, temperature: float, top_p: float, max_tokens: int,
                 max_kv_size: int = 0, seed: int = 0, repetition_penalty: float = 1.0,
                 workspace_root: Path | None = None) -> tuple[ChatSession, Any]:
    """Load the target's model and start a session; returns (session, LoadedModel)."""
    loaded = load_model(target.model, adapter_path=target.adapter_path, workspace_root=workspace_root)
    session = ChatSession(
        loaded.model, loaded.tokenizer, target.system_prompt, temperature=temperature, top_p=top_p,
        max_tokens=max_tokens, window=context_window(loaded.config, max_kv_size), seed=seed,
        repetition_penalty=repetition_penalty,
    )
    return session, loaded
