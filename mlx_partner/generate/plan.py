"""Before a run: check the settings, read the workspace, plan what is left and estimate it.

    prep = prepare(ws, settings.generate, settings.sources)   # reads; writes nothing
    print(prep.estimate.cost)

`prepare` is the read-only half of `generate`; `--dry-run` stops after it. The estimate is
counted on the very requests that would go out: the rounds (boundary rounds among them) and the
probe request when data/probes.jsonl is to be written.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import GenerateSettings, SourcesSettings
from ..errors import ConfigError, SourceError
from ..sources.batches import plan_batches
from ..sources.documents import Batch, Document, Skipped, load_documents
from ..sources.profile import load_profile
from ..sources.records import recorded_source_hashes
from ..workspace import Workspace, read_jsonl
from .boundary import answerable_questions
from .ledger import (
    BatchPlan,
    asked_before,
    finished_requests,
    load_active_pairs,
    plan_generation,
    stale_pairs,
)
from .local import Endpoint, fit_to_endpoint, measured_rate, resolve_endpoint
from .local_mlx import mlx_endpoint, mlx_model_ref
from .probes import TOKENS_PER_PROBE, build_probe_request, candidates_for, read_probes
from .requests import (
    MIN_CACHEABLE_TOKENS,
    OUTPUT_TOKENS_PER_BOUNDARY_PAIR,
    OUTPUT_TOKENS_PER_PAIR,
    TOKENS_PER_ASKED_QUESTION,
    Price,
    build_request,
    normalise_mix,
    output_limit,
    price_for,
    request_tokens,
)

# --- estimates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Requests, tokens and cost of the rounds still to send (a dry run's numbers)."""

    requests: int
    input_tokens: int  # uncached input
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cost: float
    price: Price

    @property
    def total_input(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


def estimate(
    plans: Sequence[BatchPlan],
    docs: Mapping[str, Document],
    profile: str,
    active: Mapping[str, Sequence[Mapping[str, Any]]],
    done: Mapping[str, Any],
    settings: GenerateSettings,
    *,
    batch_api: bool = False,
    probes: int = 0,
    price: Price | None = None,
) -> Estimate:
    """Tokens and cost of the rounds still to send, counted on the very requests that will go out,
    and of the probe request when `probes` are to be written (always at the Messages API's price).

    Questions of rounds not yet answered are unknown; each is counted as a typical question. A
    local endpoint (`price` LOCAL_PRICE) caches nothing: its prefix counts as plain input.
    """
    mode = "json" if settings.output == "json" else "tool"
    caching = price is None
    price = price or price_for(settings.model)
    totals = Counter()
    placeholder = "x" * (4 * TOKENS_PER_ASKED_QUESTION - 3)
    for plan in plans:
        cached = False
        for rnd in plan.todo:
            asked = asked_before(plan, rnd, active.get(plan.batch.id, ()), done)
            missing = sum(r.n_pairs for r in plan.rounds[: rnd.index] if r.key not in done)
            params = build_request(
                rnd, plan.batch, docs, profile, asked + [placeholder] * missing,
                model=settings.model, max_tokens=settings.max_tokens, mode=mode,
            )
            prefix, rest = request_tokens(params)
            per_pair = OUTPUT_TOKENS_PER_BOUNDARY_PAIR if rnd.boundary else OUTPUT_TOKENS_PER_PAIR
            usage = {"input_tokens": rest, "output_tokens": per_pair * rnd.n_pairs}
            if prefix < MIN_CACHEABLE_TOKENS or not caching:
                usage["input_tokens"] += prefix
            elif cached:
                usage["cache_read_input_tokens"] = prefix
            else:
                usage["cache_creation_input_tokens"] = prefix
                cached = True
            totals.update(usage)
            totals["requests"] += 1
    cost = price.cost(totals, batch_api)
    if probes:
        pairs = [p for batch in active.values() for p in batch]
        pending = sum(r.n_pairs for plan in plans for r in plan.todo)
        params = build_probe_request(
            docs, profile, answerable_questions(pairs) + [placeholder] * pending, [], candidates_for(probes),
            model=settings.model, max_tokens=settings.max_tokens, mode=mode,
        )
        usage = {"input_tokens": sum(request_tokens(params)), "output_tokens": TOKENS_PER_PROBE * candidates_for(probes)}
        totals.update(usage)
        totals["requests"] += 1
        cost += price.cost(usage)
    return Estimate(
        requests=totals["requests"],
        input_tokens=totals["input_tokens"],
        cache_creation_input_tokens=totals["cache_creation_input_tokens"],
        cache_read_input_tokens=totals["cache_read_input_tokens"],
        output_tokens=totals["output_tokens"],
        cost=cost,
        price=price,
    )


# --- what a run reads first ------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """Everything read from the workspace before a run: nothing written yet."""

    docs: dict[str, Document]
    profile: str
    batches: tuple[Batch, ...]
    hashes: dict[str, str]
    plans: tuple[BatchPlan, ...]
    active: dict[str, list[dict[str, Any]]]  # batch id -> active pairs, after retirement
    stale: tuple[tuple[dict[str, Any], str], ...]  # pairs to retire, with the reason
    done: dict[str, Any]
    estimate: Estimate
    previous_hashes: dict[str, str]
    skipped: tuple[Skipped, ...] = ()  # files in sources/ left out, each with its reason
    probes_todo: int = 0  # probe questions the probe request is to write (0: none to send)
    probes_kept: int = 0  # probes already in data/probes.jsonl
    answered: int = 0  # answer-kind questions on disk: what the absence check is calibrated on
    endpoint: Endpoint | None = None  # where the requests go (None: not resolved, a cloud API)
    measured_rate: float = 0.0  # output tokens/s earlier runs measured at a local endpoint
    notes: tuple[str, ...] = ()  # what was chosen for the endpoint (defaults, context sizing)

    def skipped_lines(self, sources_dir: Path) -> list[str]:
        """One "Skipped <path>: <reason>" line per file left out, for stderr (as `dataset` names bad lines)."""
        return [f"Skipped {Path(sources_dir) / s.path}: {s.reason}" for s in self.skipped]


def check_settings(settings: GenerateSettings) -> None:
    """Settings from partner.toml or the environment that cannot work, as one plain sentence."""
    problems = [
        (settings.output not in ("auto", "tool", "json"), f"generate.output is {settings.output!r}; use auto, tool or json"),
        (settings.concurrency < 1, "generate.concurrency must be at least 1"),
        (settings.pairs_per_round < 1, "generate.pairs_per_round must be at least 1"),
        (settings.pairs_total < 0, "generate.pairs_total must be 0 (automatic) or more"),
        (settings.validation_retries < 0, "generate.validation_retries must be 0 or more"),
        (settings.max_retries < 0, "generate.max_retries must be 0 or more"),
        (settings.max_tokens < 256, "generate.max_tokens must be at least 256"),
        (not 0 <= settings.probes <= 100, "generate.probes must be from 0 to 100"),
        # The SDK refuses non-streaming requests that could run past 10 minutes (~21,333 tokens).
        (settings.max_tokens > 21000, "generate.max_tokens must be at most 21000 (one round is a few thousand)"),
        (settings.timeout <= 0 or settings.poll_interval <= 0, "generate.timeout and generate.poll_interval must be positive"),
        (not settings.model.strip(), "generate.model is empty; name a model, e.g. claude-sonnet-5-5"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(f"The setting {message} (partner.toml, MLX_PARTNER_GENERATE_*, or a flag).")
    normalise_mix(settings.mix)


def fit_to_model(settings: GenerateSettings) -> tuple[GenerateSettings, list[str]]:
    """max_tokens held to the model's output limit (requests.OUTPUT_LIMITS), which the API
    enforces with a 400 on every request; the line that says so. A model not in the table keeps
    the configured value."""
    known = output_limit(settings.model)
    if known is None or settings.max_tokens <= known[1]:
        return settings, []
    family, limit = known
    note = f"max_tokens {settings.max_tokens} is above {family}'s {limit} output limit: using {limit}"
    return dataclasses.replace(settings, max_tokens=limit), [note]


def configure_endpoint(ws: Workspace, settings: GenerateSettings, sources: SourcesSettings, environ: Mapping[str, str],
                       *, batch_api: bool = False) -> tuple[Endpoint, GenerateSettings, SourcesSettings, list[str]]:
    """The run's endpoint (a loopback server is asked what it is) and the settings fitted to it:
    max_tokens held to the model's output limit, local defaults, batches and replies sized to its
    context window (after that limit). Refuses --batch-api locally."""
    check_settings(settings)
    if mlx_model_ref(settings.generator) is not None:  # the in-process MLX generator (local_mlx.py)
        return mlx_endpoint(ws, settings, sources, batch_api=batch_api, profile=load_profile(ws))
    endpoint = resolve_endpoint(environ, settings)
    if batch_api and endpoint.local:
        raise ConfigError(f"--batch-api needs the Message Batches API, which the local endpoint {endpoint.url} does not have; run without it.")
    # A local server's model name is its own: the Claude limits are for the API's models.
    settings, limited = fit_to_model(settings) if not endpoint.local else (settings, [])
    settings, sources, notes = fit_to_endpoint(endpoint, settings, sources, load_profile(ws) if endpoint.context_tokens else "")
    return endpoint, settings, sources, limited + notes


def prepare(
    ws: Workspace,
    settings: GenerateSettings,
    sources: SourcesSettings,
    *,
    force: bool = False,
    batch_api: bool = False,
    endpoint: Endpoint | None = None,
    notes: Sequence[str] = (),
) -> Prepared:
    """Check the settings and read the workspace: what a run would send, and its estimate."""
    check_settings(settings)
    profile = load_profile(ws)
    documents, skipped = load_documents(ws.sources_dir)
    if not documents:
        raise SourceError(f"No documents to generate from in {ws.sources_dir}; add .md or .txt files there.")
    docs = {d.id: d for d in documents}
    hashes = {d.id: d.sha256 for d in documents}
    batches = tuple(plan_batches(documents, sources.token_budget, sources.seed, sources.themes))
    ledger, _ = read_jsonl(ws.ledger_path)
    done = {} if force else dict(finished_requests(ledger))
    active = load_active_pairs(ws)
    if force:
        stale = [(p, "regenerated (--force)") for pairs in active.values() for p in pairs]
    else:
        stale = stale_pairs([p for pairs in active.values() for p in pairs], hashes)
    gone = {id(p) for p, _ in stale}
    active = {b: [p for p in pairs if id(p) not in gone] for b, pairs in active.items()}
    active = {b: pairs for b, pairs in active.items() if pairs}
    plans = tuple(plan_generation(batches, active, done, settings))
    previous = recorded_source_hashes(ws)
    kept_probes = [] if force else read_probes(ws)
    probes = settings.probes if settings.probes and not kept_probes else 0
    return Prepared(
        docs=docs,
        profile=profile,
        batches=batches,
        hashes=hashes,
        plans=plans,
        active=active,
        stale=tuple(stale),
        done=done,
        estimate=estimate(plans, docs, profile, active, done, settings, batch_api=batch_api, probes=probes,
                          price=endpoint.price if endpoint else None),
        previous_hashes=previous,
        skipped=tuple(skipped),
        probes_todo=probes,
        probes_kept=len(kept_probes),
        answered=len(answerable_questions(p for pairs in active.values() for p in pairs)),
        endpoint=endpoint,
        measured_rate=measured_rate(ledger, endpoint.url) if endpoint and endpoint.local else 0.0,
        notes=tuple(notes),
    )
