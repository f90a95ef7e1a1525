"""The `mlx-partner` command line: parse, call the library, print. No pipeline logic lives here.

Every command's docstring is its --help text, with an example. Library errors (PartnerError)
become one plain sentence on stderr and exit code 1; usage errors exit 2. Set
MLX_PARTNER_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from . import __version__
from .config import Settings, load_settings
from .errors import PartnerError
from .workspace import Workspace, workspace_lock

# Commands that run MLX; the console entry re-executes them once under a fast CPU BLAS.
MLX_COMMANDS = {"dataset", "train", "fuse", "chat", "eval", "retrain", "demo", "models"}


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

    def lock(self, command: str):
        return workspace_lock(self.workspace, command)


pass_app = click.make_pass_decorator(App)


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
            import errno

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
    from .init import init_workspace

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
@click.option("--token-budget", type=click.IntRange(min=1), help="Largest batch sent in one request, in estimated tokens.")
@click.option("--themes", type=click.IntRange(min=0), help="Number of automatic themes for unthemed documents (0 = choose).")
@click.option("--seed", type=int, help="Seed for the automatic themes.")
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
    import json

    from .sources import format_report, survey

    settings = app.settings.override("sources", token_budget=token_budget, themes=themes, seed=seed).sources
    report = survey(app.workspace, settings.token_budget, seed=settings.seed, themes=settings.themes)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(format_report(report))

# --- generate ----------------------------------------------------------------------------------

# --- dataset -----------------------------------------------------------------------------------

# --- train -------------------------------------------------------------------------------------

# --- fuse / chat / models / demo ---------------------------------------------------------------

# --- eval / retrain / runs ---------------------------------------------------------------------


def main() -> None:
    """Console entry point: a fast BLAS for MLX commands on Linux, then the CLI."""
    if MLX_COMMANDS & set(sys.argv[1:]):
        from .blas import reexec_with_fast_blas

        reexec_with_fast_blas()
    cli(prog_name="mlx-partner")


if __name__ == "__main__":
    main()
