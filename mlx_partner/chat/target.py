"""What `mlx-partner chat` talks to, and the system prompt that goes with it.

`resolve_target` turns chat's flags into a `ChatTarget`: the fused model of the latest (or a named)
run when `fuse` has made one (and it is not older than the run's adapters), else the base model
with the run's adapters, or the untuned base (`--base`) or any model folder (`--model`) to compare.
Every target carries the exact system prompt the run was trained with. Nothing is loaded here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..dataset.system_prompt import load_system_prompt, resolve_system_prompt
from ..errors import DatasetError, ModelError, TrainingError
from ..runs import SYSTEM_PROMPT, find_run, read_manifest
from ..workspace import Workspace


@dataclass(frozen=True)
class ChatTarget:
    """A model to load (plus optional adapters), the system prompt it was trained with, a label."""

    model: str  # a model folder or reference, as models.load_model takes it
    adapter_path: Path | None
    system_prompt: str
    label: str  # for the header and transcripts, e.g. "run 20261125-1712 (fused)"
    run_name: str | None = None
    note: str = ""  # something the user should know about this choice


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _run_system_prompt(run_dir: Path, manifest: dict[str, Any]) -> str:
    """The system prompt a run was trained with: its saved copy, else the manifest's."""
    text = _read_text(run_dir / SYSTEM_PROMPT)
    if text is None:
        text = manifest.get("system_prompt")
    if text is None:
        raise ModelError(
            f"Run {run_dir.name} does not record its system prompt ({run_dir / SYSTEM_PROMPT} is missing); "
            f"train it again with `mlx-partner train`."
        )
    return text


def _workspace_system_prompt(ws: Workspace, settings: Settings | None = None) -> str:
    """The dataset's system prompt; before any dataset, the one `dataset` would derive."""
    try:
        return load_system_prompt(ws)
    except DatasetError:
        return resolve_system_prompt(ws, settings or Settings())[0]


def no_run_message(ws: Workspace) -> str:
    return (
        f"There is no trained partner in {ws.root} yet; run `mlx-partner train` first "
        f"(or `mlx-partner demo` to try the built-in example)."
    )


def _find_run(ws: Workspace, name: str | None) -> tuple[Path, dict[str, Any]]:
    try:
        run_dir = find_run(ws, name)
    except TrainingError:
        if name is None:
            raise ModelError(no_run_message(ws)) from None
        raise
    return run_dir, read_manifest(run_dir)


def resolve_target(ws: Workspace, *, run: str | None = None, model: str | None = None,
                   base: bool = False, base_model: str | None = None,
                   settings: Settings | None = None) -> ChatTarget:
    """What `chat` talks to, given its flags (at most one of run/model/base matters; see cli)."""
    if model is not None:
        path = Path(model).expanduser()
        prompt = _read_text(path / SYSTEM_PROMPT) if path.is_dir() else None
        if prompt is None:
            prompt = _workspace_system_prompt(ws, settings)
        return ChatTarget(str(model), None, prompt, f"model {model}")
    if base:
        try:
            run_dir, manifest = _find_run(ws, run)
        except ModelError:
            if run is not None or base_model is None:
                raise
            # No run yet: the configured base model, with the workspace's system prompt.
            return ChatTarget(base_model, None, _workspace_system_prompt(ws, settings), f"base model {base_model}")
        ref = manifest.get("base_model_path") or manifest.get("base_model")
        if not ref:
            raise ModelError(f"The manifest of run {run_dir.name} does not name its base model.")
        label = f"base model {manifest.get('base_model') or ref} (untuned, as in run {run_dir.name})"
        return ChatTarget(str(ref), None, _run_system_prompt(run_dir, manifest), label, run_dir.name)
    run_dir, manifest = _find_run(ws, run)
    fused = ws.models_dir / run_dir.name
    if (fused / "config.json").exists() and _is_stale(fused, run_dir):
        note = (f"models/{run_dir.name}/ is older than the run's adapters, so it is not used; "
                f"run `mlx-partner fuse --run {run_dir.name}` to refresh it.")
    elif (fused / "config.json").exists():
        prompt = _read_text(fused / SYSTEM_PROMPT) or _run_system_prompt(run_dir, manifest)
        return ChatTarget(str(fused), None, prompt, f"run {run_dir.name} (fused model)", run_dir.name)
    else:
        note = ""
    ref = manifest.get("base_model_path") or manifest.get("base_model")
    if not ref:
        raise ModelError(f"The manifest of run {run_dir.name} does not name its base model.")
    return ChatTarget(str(ref), run_dir, _run_system_prompt(run_dir, manifest),
                      f"run {run_dir.name} (base + adapters)", run_dir.name, note)


def _is_stale(fused: Path, run_dir: Path) -> bool:
    """True when the run's adapters changed after the fused model was written (a resumed run)."""
    try:
        return (run_dir / "adapters.safetensors").stat().st_mtime > (fused / "config.json").stat().st_mtime + 1
    except OSError:
        return False
