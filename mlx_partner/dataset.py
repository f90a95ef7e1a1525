"""`dataset`: verified pairs to mlx-lm chat JSONL, with seeded splits, length stats and template hygiene.

    mlx-partner dataset                      # data/pairs/*.jsonl -> data/{train,valid,test}.jsonl
    mlx-partner dataset --pairs mine.jsonl   # add hand-written pairs ({question, answer} per line)

Each pair becomes `{"messages": [system, user, assistant]}` (for a chat template with no system
role, such as Gemma's, the system text is folded into the user turn). The system prompt is saved
as `data/system_prompt.txt`, and `chat` builds its prompts with the same two functions used here
(`chat_messages` and `render_prompt`), so the model sees in chat exactly what it saw in training.
`data/dataset.json` records the report, a hash of the split files and the pair ids of each split.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import DatasetError, ModelError
from .prompts import (  # encode_prompt and render_prompt are re-exported for `chat` and `eval`
    Check,
    chat_messages,
    encode_prompt,
    hygiene_checks,
    load_base_tokenizer,
    render_prompt,
    template_has_system_role,
    training_tokens,
)
from .workspace import Workspace, atomic_write_json, atomic_write_jsonl, atomic_write_text

__all__ = ["chat_messages", "encode_prompt", "render_prompt", "training_tokens", "run_dataset",
           "load_system_prompt", "system_prompt_from_profile", "DatasetReport"]

SPLITS = ("train", "valid", "test")
KINDS = ("genuine", "scenario", "pushback")
MANIFEST_NAME = "dataset.json"

# --- the system prompt -------------------------------------------------------------------------

_TEMPLATE_LINES = (
    "Describe yourself as the partner should sound.",
    "One or two sentences: what you study or write about",
)


def _sentences(text: str, limit: int) -> str:
    """The first one or two sentences of `text`, at most about `limit` characters."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    out = parts[0]
    if len(parts) > 1 and len(out) + 1 + len(parts[1]) <= limit:
        out += " " + parts[1]
    if len(out) > limit:
        out = out[:limit].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return out


def _profile_intro(profile_text: str) -> str:
    """The author's own first lines: the first prose paragraph that is not template filler."""
    paragraphs = re.split(r"\n\s*\n", profile_text)
    for para in paragraphs:
        lines = [ln.strip() for ln in para.strip().splitlines()]
        prose = " ".join(ln for ln in lines if ln and not ln.startswith(("#", "-", "*", ">", "|")))
        if len(prose) < 20 or any(prose.startswith(t) for t in _TEMPLATE_LINES):
            continue
        return prose
    return ""


def _author_name(intro: str) -> str:
    m = re.search(r"\b(?:I am|I'm|My name is)\s+((?:[A-Z][\w'\-]+)(?:\s+[A-Z][\w'\-]+){0,3})", intro)
    return m.group(1) if m else ""


def system_prompt_from_profile(profile_text: str) -> str:
    """A short, stable system prompt: who the partner is and how it answers.

    Drawn from the profile's first lines (who the author is, in their own words). The same text
    goes into every training example and every chat, so it is deliberately plain and fixed.
    """
    intro = _profile_intro(profile_text)
    name = _author_name(intro)
    who = f"{name}'s" if name else "the author's"
    as_whom = name or "the author"
    lines = [
        f"You are {who} thinking partner. Answer as {as_whom}: in the first person, in the author's "
        f"own voice, grounded in what the author has written."
    ]
    if intro:
        lines.append(f"In the author's words: {_sentences(intro, 320)}")
    lines.append(
        "When the author has not written about something, say so plainly (\"I haven't written about that\") "
        "instead of inventing a position."
    )
    return "\n".join(lines)


def resolve_system_prompt(ws: Workspace, settings: Settings) -> tuple[str, str]:
    """(system prompt, where it came from): the setting, else derived from profile.md."""
    configured = settings.dataset.system_prompt.strip()
    if configured:
        return configured, "settings (dataset.system_prompt)"
    if ws.profile_path.exists():
        text = ws.profile_path.read_text(encoding="utf-8", errors="replace")
        return system_prompt_from_profile(text), str(ws.profile_path)
    return system_prompt_from_profile(""), "a generic prompt (no profile.md)"


def load_system_prompt(ws: Workspace) -> str:
    """The system prompt the dataset was built with (`data/system_prompt.txt`)."""
    path = ws.system_prompt_path
    if not path.exists():
        raise DatasetError(f"{path} does not exist; run `mlx-partner dataset` first.")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DatasetError(f"{path} is empty; run `mlx-partner dataset` again.")
    return text


# --- reading pairs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One question/answer pair, from `generate` or written by hand."""

    id: str
    question: str
    answer: str
    theme: str
    kind: str
    origin: str  # file:line


def _stable_id(question: str, answer: str) -> str:
    return "hand-" + hashlib.sha1(f"{question}\n{answer}".encode()).hexdigest()[:12]


def parse_pair(record: dict, origin: str, default_theme: str) -> tuple[Pair | None, str]:
    """A Pair from one JSON object, or (None, why it cannot be used)."""
    question, answer = record.get("question"), record.get("answer")
    if not isinstance(question, str) or not question.strip():
        return None, "no question"
    if not isinstance(answer, str) or not answer.strip():
        return None, "no answer"
    kind = record.get("type", record.get("kind")) or "genuine"
    theme = record.get("theme") or record.get("batch") or default_theme
    pid = record.get("id")
    pid = str(pid) if pid not in (None, "") else _stable_id(question.strip(), answer.strip())
    return Pair(pid, question.strip(), answer.strip(), str(theme), str(kind), origin), ""


@dataclass(frozen=True)
class PairsRead:
    pairs: list[Pair]
    files: list[str]
    malformed: list[str]  # "file:line: why"
    warnings: list[str]


def read_pairs(paths: Iterable[Path]) -> PairsRead:
    """Read pair files; bad lines are named file:line and skipped, unknown kinds kept with a warning."""
    pairs: list[Pair] = []
    files: list[str] = []
    malformed: list[str] = []
    unknown: Counter[str] = Counter()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"Pairs file {path} does not exist; check the --pairs path.")
        files.append(str(path.resolve()))  # absolute: `retrain` reads the same files again later
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                malformed.append(f"{path}:{number}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                malformed.append(f"{path}:{number}: not a JSON object")
                continue
            pair, why = parse_pair(record, f"{path}:{number}", default_theme=path.stem)
            if pair is None:
                malformed.append(f"{path}:{number}: {why}")
                continue
            if pair.kind not in KINDS:
                unknown[pair.kind] += 1
            pairs.append(pair)
    warnings = [
        f"{n} pair(s) of unknown kind '{k}' kept (known kinds: {', '.join(KINDS)})." for k, n in sorted(unknown.items())
    ]
    return PairsRead(pairs, files, malformed, warnings)


# --- duplicates --------------------------------------------------------------------------------


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def near_duplicate_groups(texts: Sequence[str], threshold: float | None = None) -> list[list[int]]:
    """Indices grouped so that near-duplicate texts (transitively) share a group.

    "Near-duplicate" is `generate`'s definition (grounding.similarity: cosine of character
    4-gram counts, at grounding.DUPLICATE_THRESHOLD), but every pair above it is linked, not
    only the closest, so that no two near-duplicates can land in different splits. Candidates
    come from an inverted index on content words (a pair must share half of them), so
    thousands of texts stay fast.
    """
    from . import grounding
    from .grounding import DUPLICATE_THRESHOLD, content_words, similarity

    limit = DUPLICATE_THRESHOLD if threshold is None else threshold
    vocab = [content_words(t) or set(normalize(t).split()) for t in texts]
    # similarity() rebuilds both vectors on every call; build each once (same vectors, same cosine).
    vectors = [grounding._grams(t) for t in texts] if hasattr(grounding, "_grams") else None
    norms = [math.sqrt(sum(v * v for v in g.values())) for g in vectors] if vectors else []

    def close(i: int, j: int) -> bool:
        if vectors is None:
            return similarity(texts[i], texts[j]) >= limit
        a, b = vectors[i], vectors[j]
        if not norms[i] or not norms[j]:
            return False
        return sum(v * b.get(k, 0) for k, v in a.items()) / (norms[i] * norms[j]) >= limit
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    index: dict[str, list[int]] = defaultdict(list)
    for i, words in enumerate(vocab):
        shared: Counter[int] = Counter()
        for w in words:
            for j in index[w]:
                shared[j] += 1
        for j, common in shared.items():
            if common * 2 < min(len(words), len(vocab[j])):
                continue  # under half the content words in common: not the same question
            if find(i) != find(j) and close(i, j):
                parent[find(i)] = find(j)
        for w in words:
            index[w].append(i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(texts)):
        groups[find(i)].append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def drop_duplicates(pairs: Sequence[Pair]) -> tuple[list[Pair], list[Pair]]:
    """(kept, dropped): a pair is dropped when its id, or its question and answer, came before."""
    seen_ids: set[str] = set()
    seen_text: set[tuple[str, str]] = set()
    kept: list[Pair] = []
    dropped: list[Pair] = []
    for pair in pairs:
        key = (normalize(pair.question), normalize(pair.answer))
        if pair.id in seen_ids or key in seen_text:
            dropped.append(pair)
            continue
        seen_ids.add(pair.id)
        seen_text.add(key)
        kept.append(pair)
    return kept, dropped


# --- splits ------------------------------------------------------------------------------------


def round_shares(shares: dict[str, float], total: int, rng: random.Random,
                 priority: dict[str, float] | None = None, capacity: dict[str, int] | None = None) -> dict[str, int]:
    """Whole numbers summing to `total`, each the floor of its share or one more (largest remainder).

    `priority` (e.g. how far behind its share a key is so far) is added to the remainder when
    handing out the extra units, ties are broken at random, and no key gets more than its
    `capacity`. With shares summing to about `total`, every key stays within one of its share.
    """
    out = {k: math.floor(q) for k, q in shares.items()}
    bonus = priority or {}
    keys = sorted(shares, key=lambda k: (-(shares[k] - out[k] + bonus.get(k, 0.0)), rng.random()))
    keys = [k for k in keys if capacity is None or out[k] < capacity.get(k, 0)]
    for k in keys[: max(0, total - sum(out.values()))]:
        out[k] += 1
    return out


def apportion(total: int, weights: dict[str, float], rng: random.Random,
              priority: dict[str, float] | None = None, capacity: dict[str, int] | None = None) -> dict[str, int]:
    """Split `total` over keys in proportion to `weights` (see `round_shares`)."""
    mass = sum(weights.values())
    if total <= 0 or mass <= 0:
        return {k: 0 for k in weights}
    return round_shares({k: total * w / mass for k, w in weights.items()}, total, rng, priority, capacity)


def _round(x: float) -> int:
    return math.floor(x + 0.5)


@dataclass(frozen=True)
class SplitPlan:
    assignment: dict[str, str]  # pair id -> split
    notes: list[str] = field(default_factory=list)


def plan_splits(
    pairs: Sequence[Pair],
    groups: Sequence[Sequence[int]],
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    batch_size: int,
    pinned_test_ids: Iterable[str] = (),
) -> SplitPlan:
    """Assign every pair to train, valid or test.

    Per theme the valid and test counts are the theme's share of the total, rounded so that each
    theme is within one of its exact share; within a theme, kinds get their proportional share.
    Near-duplicate groups move as one. Pinned ids (an earlier test split) stay in test.
    """
    rng = random.Random(seed)
    n = len(pairs)
    pinned = set(pinned_test_ids)
    notes: list[str] = []
    # A group belongs to the (theme, kind) cell most of its members are in.
    cell_of: list[tuple[str, str]] = []
    for g in groups:
        cell_of.append(Counter((pairs[i].theme, pairs[i].kind) for i in g).most_common(1)[0][0])
    theme_n = Counter(pairs[i].theme for i in range(n))
    assignment: dict[int, str] = {}  # group index -> split

    def fill(split: str, fraction: float, total: int) -> None:
        free = [gi for gi in range(len(groups)) if gi not in assignment]
        if total <= 0 or not free:
            return
        taken = Counter()
        for gi, s in assignment.items():
            if s == split:
                taken[cell_of[gi][0]] += len(groups[gi])
        # Each theme gets the floor or the ceiling of its exact share, n_theme * fraction.
        per_theme = round_shares({t: theme_n[t] * fraction for t in theme_n}, total, rng)
        # Kinds are balanced within each theme and, through the running deficit, across themes.
        expected: Counter[str] = Counter()
        got: Counter[str] = Counter()
        for theme in sorted(per_theme):
            want = per_theme[theme] - taken[theme]
            if want <= 0:
                continue
            in_theme = [gi for gi in free if cell_of[gi][0] == theme]
            kind_n = Counter()
            for gi in in_theme:
                kind_n[cell_of[gi][1]] += len(groups[gi])
            deficit = {k: expected[k] - got[k] for k in kind_n}
            per_kind = apportion(want, dict(kind_n), rng, priority=deficit, capacity=dict(kind_n))
            for k, n_k in kind_n.items():
                expected[k] += want * n_k / sum(kind_n.values())
                got[k] += per_kind[k]
            leftover = 0
            for kind in sorted(per_kind):
                cell = [gi for gi in in_theme if cell_of[gi][1] == kind]
                rng.shuffle(cell)
                need = per_kind[kind] + leftover
                for gi in cell:
                    if need <= 0:
                        break
                    if len(groups[gi]) <= need:
                        assignment[gi] = split
                        need -= len(groups[gi])
                leftover = need  # a cell of large groups passes its share on

    for gi, g in enumerate(groups):
        if any(pairs[i].id in pinned for i in g):
            assignment[gi] = "test"
    if test_fraction > 0:
        fill("test", test_fraction, _round(n * test_fraction))
    elif pinned:
        for gi in [gi for gi, s in assignment.items() if s == "test"]:
            del assignment[gi]
    fill("valid", valid_fraction, _round(n * valid_fraction))

    def count(split: str) -> int:
        return sum(len(groups[gi]) for gi, s in assignment.items() if s == split)

    def train_groups() -> list[int]:
        return [gi for gi in range(len(groups)) if gi not in assignment]

    # mlx-lm validates over whole batches: give valid at least one example, and a full batch
    # when the training set can spare it.
    floor_valid = 1 if n > 1 else 0
    want_valid = max(floor_valid, min(batch_size, n - batch_size - count("test")))
    before = count("valid")
    candidates = sorted(train_groups(), key=lambda gi: (len(groups[gi]), -theme_n[cell_of[gi][0]], rng.random()))
    for gi in candidates:
        if count("valid") >= want_valid:
            break
        train_left = n - count("valid") - count("test") - len(groups[gi])
        if count("valid") >= floor_valid and train_left < batch_size:
            break
        assignment[gi] = "valid"
    if count("valid") > before:
        notes.append(
            f"valid raised from {before} to {count('valid')} example(s) so that mlx-lm can validate "
            f"(it needs a full batch of {batch_size})."
        )
    by_id = {}
    for gi, g in enumerate(groups):
        for i in g:
            by_id[pairs[i].id] = assignment.get(gi, "train")
    return SplitPlan(by_id, notes)


# --- token lengths ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthStats:
    count: int
    mean: float
    p50: int
    p95: int
    max: int
    max_seq_length: int
    too_long: list[tuple[str, int]]  # (pair id, tokens) over max_seq_length
    histogram: list[tuple[int, int, int]]  # (from, to, count)


def _percentile(sorted_values: Sequence[int], q: float) -> int:
    if not sorted_values:
        return 0
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return int(sorted_values[k])


def length_stats(lengths: dict[str, int], max_seq_length: int, bins: int = 10) -> LengthStats:
    values = sorted(lengths.values())
    if not values:
        return LengthStats(0, 0.0, 0, 0, 0, max_seq_length, [], [])
    lo, hi = values[0], values[-1]
    width = max(1, math.ceil((hi - lo + 1) / bins))
    hist = []
    for b in range(bins):
        start = lo + b * width
        if start > hi:
            break
        end = start + width - 1
        hist.append((start, end, sum(1 for v in values if start <= v <= end)))
    too_long = sorted(((i, n) for i, n in lengths.items() if n > max_seq_length), key=lambda x: -x[1])
    return LengthStats(len(values), round(sum(values) / len(values), 1), _percentile(values, 50),
                       _percentile(values, 95), hi, max_seq_length, too_long, hist)


def suggested_max_seq_length(longest: int) -> int:
    """The next multiple of 256 that fits the longest example."""
    return 256 * math.ceil(longest / 256)


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetReport:
    """What `dataset` did; `to_dict()` is what `--json` prints and what dataset.json holds."""

    files: list[str]
    pairs_read: int
    duplicates_dropped: int
    duplicates: list[str]  # "id (file:line)" of each dropped pair
    malformed: list[str]
    counts: dict[str, int]
    by_theme: dict[str, dict[str, int]]
    by_kind: dict[str, dict[str, int]]
    near_duplicate_groups: int
    system_prompt: str
    system_prompt_source: str
    system_role: bool | None  # None: not known (no tokenizer)
    base_model: str
    lengths: LengthStats | None
    hygiene: list[Check]
    warnings: list[str]
    notes: list[str]
    content_hash: str
    ids: dict[str, list[str]]

    @property
    def hygiene_ok(self) -> bool:
        return all(c.status != "fail" for c in self.hygiene)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hygiene_ok"] = self.hygiene_ok
        return d


def _split_hash(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes() if path.exists() else b"")
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def dataset_hash(ws: Workspace) -> str:
    """A content hash of data/train.jsonl, valid.jsonl and test.jsonl as they are now."""
    return _split_hash([ws.split_path(s) for s in SPLITS])


def manifest_path(ws: Workspace) -> Path:
    return ws.data_dir / MANIFEST_NAME


def load_manifest(ws: Workspace) -> dict[str, Any]:
    """data/dataset.json: the last report, the split hash and the pair ids of each split."""
    path = manifest_path(ws)
    if not path.exists():
        raise DatasetError(f"{path} does not exist; run `mlx-partner dataset` first.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} cannot be read ({exc}); run `mlx-partner dataset` again.") from None


def previous_test_ids(ws: Workspace) -> list[str]:
    """The pair ids of the last test split (empty when there is none)."""
    try:
        return list(load_manifest(ws).get("ids", {}).get("test", []))
    except DatasetError:
        return []


def pair_files(ws: Workspace, extra: Iterable[Path] = ()) -> list[Path]:
    """data/pairs/*.jsonl, then the extra files; a file named twice is read once."""
    files = sorted(ws.pairs_dir.glob("*.jsonl")) if ws.pairs_dir.is_dir() else []
    out: list[Path] = []
    seen: set[Path] = set()
    for path in [*files, *(Path(p) for p in extra)]:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def run_dataset(
    ws: Workspace,
    settings: Settings,
    extra_pairs: Iterable[Path] = (),
    base_model: str | None = None,
    pinned_test_ids: Iterable[str] | None = None,
    keep_test: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetReport:
    """Build data/{train,valid,test}.jsonl, system_prompt.txt and dataset.json from the pairs.

    `pinned_test_ids` (or `keep_test=True`, which reads them from the last dataset.json) keeps
    those pairs in the test split, so evaluations stay comparable across re-training.
    `progress(done, total)` is called while examples are tokenized.
    """
    ds, tr = settings.dataset, settings.train
    for name, value in (("valid_fraction", ds.valid_fraction), ("test_fraction", ds.test_fraction)):
        if not 0 <= value < 1:
            raise DatasetError(f"dataset.{name} is {value}; it must be at least 0 and below 1.")
    if ds.valid_fraction + ds.test_fraction >= 0.9:
        raise DatasetError(
            f"valid ({ds.valid_fraction}) and test ({ds.test_fraction}) together leave too little to train on; lower them."
        )
    files = pair_files(ws, extra_pairs)
    read = read_pairs(files)
    if not read.pairs:
        where = f"{ws.pairs_dir}" + (f" or {', '.join(str(p) for p in extra_pairs)}" if list(extra_pairs) else "")
        raise DatasetError(
            f"No pairs found in {where}; run `mlx-partner generate` first, or add your own with --pairs FILE."
        )
    pairs, dropped = drop_duplicates(read.pairs)
    warnings = list(read.warnings)
    first = {p.id: p for p in pairs}
    clashes = [d for d in dropped if d.id in first and normalize(first[d.id].question) != normalize(d.question)]
    if clashes:
        warnings.append(
            f"{len(clashes)} pair(s) reuse an id with a different question and were dropped, e.g. {clashes[0].id} at "
            f"{clashes[0].origin} (first at {first[clashes[0].id].origin}); give hand-written pairs their own ids."
        )
    if read.malformed:
        warnings.append(f"{len(read.malformed)} malformed line(s) skipped, e.g. {read.malformed[0]}")

    groups = near_duplicate_groups([p.question for p in pairs])
    pinned = list(pinned_test_ids or [])
    if keep_test:
        pinned += previous_test_ids(ws)
    plan = plan_splits(pairs, groups, ds.valid_fraction, ds.test_fraction, ds.seed, tr.batch_size, pinned)
    split_pairs = {s: [p for p in pairs if plan.assignment[p.id] == s] for s in SPLITS}
    if len(split_pairs["train"]) < tr.batch_size:
        raise DatasetError(
            f"Only {len(split_pairs['train'])} training example(s) for a batch size of {tr.batch_size}: add pairs "
            f"(mlx-partner generate, or --pairs FILE), lower batch_size in [train], or lower the valid/test fractions."
        )

    system_prompt, prompt_source = resolve_system_prompt(ws, settings)
    model_ref = base_model or tr.base_model
    tokenizer = None
    try:
        tokenizer, _ = load_base_tokenizer(model_ref, ws.root)
    except ModelError as exc:
        warnings.append(f"Length stats and template hygiene skipped: base model {model_ref}: {str(exc).rstrip('.')}.")

    def example(p: Pair) -> dict[str, Any]:
        turns = [{"role": "user", "content": p.question}, {"role": "assistant", "content": p.answer}]
        return {"messages": chat_messages(system_prompt, turns, tokenizer)}

    examples = {s: [example(p) for p in split_pairs[s]] for s in SPLITS}

    stats: LengthStats | None = None
    hygiene: list[Check] = []
    if tokenizer is not None:
        lengths: dict[str, int] = {}
        everything = [(p, e) for s in SPLITS for p, e in zip(split_pairs[s], examples[s], strict=True)]
        for done, (p, e) in enumerate(everything, 1):
            lengths[p.id] = len(training_tokens(tokenizer, e, mask_prompt=False)[0])
            if progress is not None:
                progress(done, len(everything))
        stats = length_stats(lengths, tr.max_seq_length)
        if stats.too_long:
            names = ", ".join(f"{i} ({n})" for i, n in stats.too_long[:5])
            more = f" and {len(stats.too_long) - 5} more" if len(stats.too_long) > 5 else ""
            warnings.append(
                f"{len(stats.too_long)} example(s) are longer than max_seq_length={tr.max_seq_length} tokens and would be "
                f"truncated: {names}{more}; set max_seq_length = {suggested_max_seq_length(stats.max)} in [train]."
            )
        sample = split_pairs["train"][0]
        try:
            hygiene = hygiene_checks(tokenizer, system_prompt, sample.question, sample.answer, tr.mask_prompt)
        except Exception as exc:  # a template that fails on ordinary messages is itself the finding
            hygiene = [Check("render", "fail", f"the chat template failed ({type(exc).__name__}: {exc})")]
        for c in hygiene:
            if c.status == "fail":
                warnings.append(f"Template hygiene failed: {c.name}: {c.detail}.")

    # Write: splits first, then the prompt and the manifest that vouch for them.
    for split in SPLITS:
        path = ws.split_path(split)
        if examples[split]:
            atomic_write_jsonl(path, examples[split])
        elif path.exists():
            path.unlink()  # mlx-lm fails on an empty split file; no file means no split
    atomic_write_text(ws.system_prompt_path, system_prompt)

    themes = sorted({p.theme for p in pairs})
    kinds = sorted({p.kind for p in pairs}, key=lambda k: (k not in KINDS, KINDS.index(k) if k in KINDS else 0, k))
    report = DatasetReport(
        files=read.files,
        pairs_read=len(read.pairs),
        duplicates_dropped=len(dropped),
        duplicates=[f"{d.id} ({d.origin})" for d in dropped],
        malformed=read.malformed,
        counts={s: len(split_pairs[s]) for s in SPLITS},
        by_theme={t: {s: sum(1 for p in split_pairs[s] if p.theme == t) for s in SPLITS} for t in themes},
        by_kind={k: {s: sum(1 for p in split_pairs[s] if p.kind == k) for s in SPLITS} for k in kinds},
        near_duplicate_groups=sum(1 for g in groups if len(g) > 1),
        system_prompt=system_prompt,
        system_prompt_source=prompt_source,
        system_role=None if tokenizer is None else template_has_system_role(tokenizer),
        base_model=model_ref,
        lengths=stats,
        hygiene=hygiene,
        warnings=warnings,
        notes=plan.notes,
        content_hash=dataset_hash(ws),
        ids={s: [p.id for p in split_pairs[s]] for s in SPLITS},
    )
    manifest = report.to_dict()
    manifest["hash"] = report.content_hash  # what `train` records with each run
    manifest["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["settings"] = asdict(ds)
    manifest["examples"] = {s: [{"id": p.id, "theme": p.theme, "kind": p.kind} for p in split_pairs[s]] for s in SPLITS}
    atomic_write_json(manifest_path(ws), manifest)
    return report


# --- the report as text ------------------------------------------------------------------------


def _table(title: str, rows: dict[str, dict[str, int]]) -> list[str]:
    width = max([len(title)] + [len(k) for k in rows])
    lines = [f"  {title:<{width}}  {'train':>6} {'valid':>6} {'test':>6}"]
    for key, c in rows.items():
        lines.append(f"  {key:<{width}}  {c['train']:>6} {c['valid']:>6} {c['test']:>6}")
    return lines


def format_report(report: DatasetReport, ws: Workspace) -> str:
    c = report.counts
    total = sum(c.values())
    out = [
        f"Pairs: {report.pairs_read} read from {len(report.files)} file(s), {report.duplicates_dropped} duplicate(s) dropped, "
        f"{len(report.malformed)} malformed line(s) skipped, {report.near_duplicate_groups} near-duplicate group(s) kept together.",
        f"Examples: {total} = train {c['train']} / valid {c['valid']} / test {c['test']}",
        "",
        *_table("theme", report.by_theme),
        "",
        *_table("kind", report.by_kind),
        "",
    ]
    s = report.lengths
    if s is not None:
        out.append(f"Tokens per example ({report.base_model}): mean {s.mean}, median {s.p50}, p95 {s.p95}, max {s.max} "
                   f"(max_seq_length {s.max_seq_length})")
        peak = max((n for _, _, n in s.histogram), default=1) or 1
        for lo, hi, n in s.histogram:
            out.append(f"  {lo:>6}-{hi:<6} {'#' * max(1 if n else 0, round(30 * n / peak)):<30} {n}")
        out.append("")
        out.append("Template hygiene (one training example vs one chat turn):")
        for check in report.hygiene:
            out.append(f"  [{check.status:^4}] {check.name}: {check.detail}")
        out.append("")
    for note in report.notes:
        out.append(f"Note: {note}")
    out.append(f"System prompt (from {report.system_prompt_source}):")
    out += [f"  | {line}" for line in report.system_prompt.splitlines()]
    out.append("")
    written = [str(ws.split_path(s).relative_to(ws.root)) for s in SPLITS if c[s]]
    out.append(f"Wrote {', '.join(written)}, data/system_prompt.txt and data/{MANIFEST_NAME} ({report.content_hash[:19]}).")
    return "\n".join(out)
