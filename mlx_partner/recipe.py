"""A run's recipe: the training settings it used, where each came from, and how a retrain repeats it.

    record = train_record(ws, settings)                         # manifest["recipe"] of a `train` run
    recipe = repeat_recipe(manifest, configured, origins, flags)  # pure: what a retrain trains with
    recipe.settings, recipe.sources, recipe.lines(), recipe.record()

A run's manifest.json holds the settings it trained with ("settings", "base_model") and a "recipe"
record: the value every setting had in the workspace's configuration (defaults < partner.toml <
environment) when it trained ("configured"), and where each value it used came from ("sources":
"flag", "partner.toml", "environment", "default", or "run <name>" for a value repeated from an
earlier run). A retrain repeats the latest run's values, except where a flag says otherwise or the
configuration changed since that run (its configured value then differs from today's). A run
recorded before recipes existed has no configured values: only flags change its recipe.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .config import SECTIONS, TrainSettings, load_settings
from .errors import ConfigError
from .models import models_cache
from .workspace import Workspace

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FROM_FLAG = "flag"
SHAPE_KEYS = ("fine_tune_type", "num_layers", "lora_rank", "lora_scale", "lora_dropout")  # the adapters' shape


def from_run(name: str) -> str:
    """The source of a value repeated from an earlier run."""
    return f"run {name}"


def setting_origins(config_path: Path | None, section: str = "train",
                    environ: dict[str, str] | None = None) -> dict[str, str]:
    """Where each key of one section gets its value: 'default', 'partner.toml' or 'environment'.

    Read the way `config.load_settings` reads (the environment wins over the file); a file that
    cannot be read counts as absent here, since `load_settings` has already said why.
    """
    origins = {f.name: "default" for f in fields(SECTIONS[section])}
    if config_path is not None and config_path.exists():
        try:
            table = tomllib.loads(config_path.read_text(encoding="utf-8")).get(section) or {}
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
            table = {}
        for key in table if isinstance(table, dict) else {}:
            if key in origins:
                origins[key] = "partner.toml"
    environ = os.environ if environ is None else environ
    prefix = f"MLX_PARTNER_{section.upper()}_"
    for name in environ:
        key = name.removeprefix(prefix).lower()
        if name.startswith(prefix) and key in origins:
            origins[key] = "environment"
    return origins


def configured_train(ws: Workspace) -> tuple[TrainSettings, dict[str, str]] | None:
    """The [train] settings the workspace gives (defaults < partner.toml < environment), and where
    each comes from; None when partner.toml cannot be read (the command has said why already)."""
    try:
        configured = load_settings(ws.config_path).train
    except ConfigError:
        return None
    return configured, setting_origins(ws.config_path)


def train_record(ws: Workspace, s: TrainSettings, *, shape_from: str | None = None) -> dict[str, Any]:
    """The recipe record of a run `train` starts with settings `s` (before fitting them to the model).

    A value that differs from the workspace's configuration was given to the command (a flag), or,
    for the adapters' shape of a run continuing another (`shape_from`), taken from that run.
    """
    conf = configured_train(ws)
    if conf is None:
        return {"from_run": None, "configured": None, "sources": {}}
    configured, origins = conf
    sources = {}
    for f in fields(TrainSettings):
        given, config_value = getattr(s, f.name), getattr(configured, f.name)
        if given == config_value:
            sources[f.name] = origins[f.name]
        else:
            sources[f.name] = from_run(shape_from) if shape_from and f.name in SHAPE_KEYS else FROM_FLAG
    return {"from_run": None, "configured": dataclasses.asdict(configured), "sources": sources}


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Recipe:
    """What a retrain trains with, and why each value is what it is."""

    settings: TrainSettings
    sources: dict[str, str]  # key -> flag | partner.toml | environment | default | run <name>
    from_run: str
    configured: TrainSettings  # what the workspace's configuration gives today
    config_changed: tuple[str, ...] = ()  # keys whose configured value changed since the run
    differs_from_run: tuple[str, ...] = ()  # keys whose value is not the one the run trained with
    ran: dict[str, Any] = field(default_factory=dict)  # the run's own values
    ran_sources: dict[str, str] = field(default_factory=dict)  # where the run's own values came from

    def record(self) -> dict[str, Any]:
        """manifest["recipe"] for the new run."""
        return {"from_run": self.from_run, "configured": dataclasses.asdict(self.configured),
                "sources": dict(self.sources)}

    def lines(self) -> list[str]:
        """Which recipe the retrain uses, in a few lines for the user."""
        s, run = self.settings, self.from_run
        out = [f"Recipe: {from_run(run)}'s settings, base model {s.base_model} ({self.sources['base_model']})."]
        flagged = [k for k, v in self.sources.items() if v == FROM_FLAG]
        if flagged:
            out.append("From flags: " + ", ".join(f"{k}={_show(getattr(s, k))}" for k in flagged) + ".")
        if self.config_changed:
            out.append(f"Changed in the workspace's settings since {from_run(run)}: "
                       + ", ".join(f"{k}={_show(getattr(s, k))} ({self.sources[k]})" for k in self.config_changed) + ".")
        # A run records num_layers fitted to its model (16 on a 2-layer model is 2): only a flag's is news.
        kept = [k for k, v in self.sources.items()
                if v == from_run(run) and getattr(s, k) != getattr(self.configured, k)
                and (k != "num_layers" or self.ran_sources.get(k) == FROM_FLAG)]
        if kept:
            out.append(f"Kept from {from_run(run)}, where partner.toml or the defaults now say otherwise: "
                       + ", ".join(f"{k}={_show(getattr(s, k))} (now {_show(getattr(self.configured, k))})"
                                   for k in kept) + ".")
        return out


def repeat_recipe(manifest: dict[str, Any], configured: TrainSettings, origins: dict[str, str],
                  flags: dict[str, Any] | None = None) -> Recipe:
    """The latest run's recipe, with flags and configuration changes since that run applied (pure).

    For each setting: a flag wins; else a configured value that changed since the run (the run's
    record of its configured values says so); else the run's own value; a setting the run did not
    record takes today's configured value. `num_layers` follows the base model: the run's value was
    fitted to its own base, so a new base takes the configured number.
    """
    run = str(manifest.get("run") or "?")
    ran = dict(manifest.get("settings") or {})
    if manifest.get("base_model"):
        ran["base_model"] = manifest["base_model"]
    then = (manifest.get("recipe") or {}).get("configured")
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    values, sources, changed = {}, {}, []
    for f in fields(TrainSettings):
        k, now = f.name, getattr(configured, f.name)
        if k in given:
            values[k], sources[k] = given[k], FROM_FLAG
        elif k not in ran:
            values[k], sources[k] = now, origins.get(k, "default")
        elif isinstance(then, dict) and k in then and then[k] != now:
            values[k], sources[k] = now, origins.get(k, "default")
            changed.append(k)
        else:
            values[k], sources[k] = ran[k], from_run(run)
    if sources["base_model"] != from_run(run) and sources["num_layers"] == from_run(run):
        values["num_layers"], sources["num_layers"] = configured.num_layers, origins.get("num_layers", "default")
    settings = TrainSettings(**values)
    differs = tuple(k for k in values if k in ran and values[k] != ran[k])
    ran_sources = dict((manifest.get("recipe") or {}).get("sources") or {})
    return Recipe(settings, sources, run, configured, tuple(changed), differs, ran, ran_sources)


def runnable_base(ref: str, recorded_path: str | None, workspace_root: Path) -> str:
    """The run's base model reference, or its recorded absolute path when the reference (a folder
    relative to another working directory) no longer leads anywhere from here."""
    candidates = [Path(ref).expanduser(), workspace_root / ref, models_cache() / ref]
    if any(p.is_dir() for p in candidates) or not recorded_path or not Path(recorded_path).is_dir():
        return ref
    if "models--" in recorded_path:  # a hub id, found in the hub cache: the id says more
        return ref
    return recorded_path
