"""`run_fuse`: a run's adapters merged into models/<run>/, checked, swapped into place atomically.

    result = run_fuse(ws, run_name=None)     # adapters/<latest>/ + its base -> models/<run>/

The merge is mlx-lm's own (`merge.py`); the result is re-quantized only on request and only if it
stays faithful, because rounding the fused weights back to 4 bits can erase a small adapter
(mlx-lm issue #1172: a fused quantized model that silently answered like the base). The folder's
chat template gets the run's system prompt as its default (`template.py`), then the folder is
loaded back and checked against the adapter on its base (`check.py`). `--gguf` adds <run>.gguf
and an Ollama Modelfile (`export.py`), from float weights, after the check has passed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import ChatSettings, load_settings
from ..errors import ModelError
from ..fsutil import recover_swap, swap_into_place
from ..models import SIDECAR, is_cpu_backend, read_config, resolve_model
from ..prompts import template_has_system_role
from ..runs import ADAPTER_WEIGHTS, SYSTEM_PROMPT, find_run, read_manifest
from ..textfmt import stderr, utc_now
from ..workspace import Workspace, atomic_write_json, atomic_write_text, workspace_lock
from .check import FuseCheck, verify
from .export import (
    GGUFPlan,
    export_gguf_file,
    ollama_line,
    plan_gguf,
    refusal_line,
    write_modelfile,
)
from .merge import fuse_model, output_dtype, release, requantize, save_folder
from .template import write_partner_template


@dataclass(frozen=True)
class FuseResult:
    run: str
    model_dir: Path
    base_model: str
    dtype: str
    check: FuseCheck
    gguf_path: Path | None
    notes: tuple[str, ...]
    seconds: float
    modelfile: Path | None = None
    ollama_create: str | None = None  # the one `ollama create` line, when a Modelfile was written


@dataclass(frozen=True)
class _Job:
    """What one fuse works on, resolved and checked before anything heavy is loaded."""

    run_dir: Path
    manifest: dict[str, Any]
    base_ref: str
    base_path: Path
    system_prompt: str
    target: Path
    float_dtype: str  # what the fused weights are stored in unless re-quantized
    base_quant: dict[str, Any] | None  # the base's quantization entry, if it is quantized
    fine_tune_type: str
    gguf: GGUFPlan | None  # None: no --gguf


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _job(ws: Workspace, run_name: str | None, output: Path | None, gguf: bool) -> _Job:
    """The run to fuse (refused unless finished, with adapters and a base), its base and target."""
    run_dir = find_run(ws, run_name)
    manifest = read_manifest(run_dir)
    if manifest.get("status") not in (None, "finished"):
        raise ModelError(f"Run {run_dir.name} is '{manifest.get('status')}', not finished; resume it with "
                         f"`mlx-partner train --resume` or fuse another run with --run.")
    if not (run_dir / ADAPTER_WEIGHTS).exists():
        raise ModelError(f"{run_dir} has no {ADAPTER_WEIGHTS} yet; train the run to the end first.")
    base_ref = manifest.get("base_model_path") or manifest.get("base_model")
    if not base_ref:
        raise ModelError(f"The manifest of {run_dir.name} names no base model; it cannot be fused.")
    base_path = resolve_model(base_ref, ws.root)
    # The run's exact system prompt, as `chat` reads it: its saved copy, else the manifest's.
    system_prompt = _read(run_dir / SYSTEM_PROMPT)
    if system_prompt is None:
        system_prompt = manifest.get("system_prompt") or ""
    target = Path(output).expanduser().resolve() if output else ws.models_dir / run_dir.name
    recover_swap(target)
    base_config = read_config(base_path)
    return _Job(run_dir, manifest, str(base_ref), base_path, system_prompt, target,
                output_dtype(base_config, is_cpu_backend()), base_config.get("quantization"),
                manifest.get("settings", {}).get("fine_tune_type", "lora"),
                plan_gguf(base_path, base_config) if gguf else None)


def _refusal(job: _Job, check: FuseCheck) -> ModelError:
    if not check.template_ok:
        what = "its chat template differs from the base's"
    elif not check.default_prompt_ok:
        what = "its chat template, given no system message, does not render the tokens training saw"
    else:
        what = (f"its logits differ from the adapter on the base by up to {check.max_abs_diff:.3g} "
                f"(tolerance {check.tolerance:.3g}; the adapter moves them by {check.adapter_effect:.3g})")
    name = job.run_dir.name
    return ModelError(f"The fused model of {name} does not match its adapter: {what}; nothing was "
                      f"written to {job.target} (chat with the adapter instead: `mlx-partner chat --run {name}`).")


def _record(job: _Job, dtype: str, check: FuseCheck, exports: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """What mlx_partner.json beside the fused model says: where it came from and how it checked."""
    return {
        "kind": "fuse", "run": job.run_dir.name, "adapters": str(job.run_dir),
        "base_model": job.manifest.get("base_model"), "base_model_path": str(job.base_path),
        "fine_tune_type": job.fine_tune_type,
        "dtype": dtype, "check": {**asdict(check), "passed": check.passed},
        # The chat template starts conversations without a system message with the run's prompt.
        "default_system_prompt": exports["default_system_prompt"],
        "gguf": exports["gguf"].name if exports["gguf"] else None,
        "modelfile": exports["modelfile"].name if exports["modelfile"] else None,
        "notes": notes, "created": utc_now(),
    }


def run_fuse(ws: Workspace | Path | str, run_name: str | None = None, *, output: Path | None = None,
             export_gguf: bool = False, quantize: bool = False, tolerance: float | None = None,
             chat: ChatSettings | None = None, log: Callable[[str], None] = stderr) -> FuseResult:
    """Fuse a run (the latest by default) into models/<run>/ (or `output`), verified, atomically.

    quantize: re-quantize the fused weights like the base (Metal; a 4-bit base) when the check
    still passes; otherwise the fused model stays in float and a note says why. export_gguf: also
    <run>.gguf and a Modelfile, whose sampling defaults come from `chat` (else the workspace's
    [chat] settings). Holds the workspace lock throughout.
    """
    started = time.perf_counter()
    ws = ws if isinstance(ws, Workspace) else Workspace.at(ws)
    with workspace_lock(ws, "fuse"):
        job = _job(ws, run_name, output, export_gguf)
        notes: list[str] = []
        if job.gguf is not None and job.gguf.route is None:
            notes.append(refusal_line(job.gguf, job.run_dir.name))
            log(notes[-1])  # before any work: the MLX folder is still fused
        chat = chat or load_settings(ws.config_path).chat
        return _fuse(ws, job, quantize, tolerance, chat, log, started, notes)


def _save(tmp: Path, job: _Job, model: Any, tokenizer: Any, config: dict[str, Any]) -> bool:
    """The folder, with the partner's system prompt as its chat template's default."""
    shutil.rmtree(tmp, ignore_errors=True)
    save_folder(tmp, model, tokenizer, config)
    return write_partner_template(tmp, job.system_prompt, template_has_system_role(tokenizer)) and bool(job.system_prompt)


def _fuse(ws: Workspace, job: _Job, quantize: bool, tolerance: float | None, chat: ChatSettings,
          log: Callable[[str], None], started: float, notes: list[str]) -> FuseResult:
    """Merge, write to a hidden folder, check it, export, then swap it into place (or refuse)."""
    base_quant, target = job.base_quant, job.target
    if base_quant:
        notes.append(f"The base is {base_quant.get('bits')}-bit: dequantized before the merge.")
    elif quantize:
        notes.append("The base is not quantized, so there is nothing to re-quantize: the fused model stays in float.")
    requantizing = bool(quantize and base_quant)
    requant = f", re-quantized to {base_quant.get('bits')}-bit if faithful" if requantizing else ""
    log(f"Fusing {job.run_dir.name} ({job.fine_tune_type}) into "
        f"{job.base_path.name} -> {target} ({job.float_dtype}{requant})")
    float_model, tokenizer, float_config = fuse_model(job.base_path, job.run_dir, job.float_dtype)
    model, config, dtype = float_model, float_config, job.float_dtype
    if requantizing:
        model, config = requantize(job.base_path, job.run_dir, job.float_dtype, base_quant or {})
        dtype = f"{(base_quant or {}).get('bits')}-bit"

    for stale in target.parent.glob(f".{target.name}.fusing-*"):  # left by a killed fuse
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.fusing-{os.getpid()}")
    try:
        defaulted = _save(tmp, job, model, tokenizer, config)
        if not requantizing:  # on disk now: free it before the check loads models one by one
            del model, float_model
            float_model = None
            release()
        log("Checking the fused model against the adapter on its base ...")
        check = verify(ws, tmp, job.base_path, job.run_dir, job.system_prompt, dtype, tolerance)
        log(f"  {check.line()}")
        if not check.passed and requantizing:
            notes.append(f"Re-quantizing to {dtype} lost the adapter ({check.max_abs_diff:.2f} > {check.tolerance:.2f}); kept it in float.")
            log(f"  {notes[-1]}")
            dtype, requantizing = job.float_dtype, False
            defaulted = _save(tmp, job, float_model, tokenizer, float_config)
            float_model = None
            check = verify(ws, tmp, job.base_path, job.run_dir, job.system_prompt, dtype, tolerance)
            log(f"  {check.line()}")
        if not check.passed:
            raise _refusal(job, check)
        exports = _exports(tmp, job, float_model, float_config, tokenizer, chat, requantizing, notes, log)
        exports["default_system_prompt"] = defaulted
        if job.system_prompt:
            atomic_write_text(tmp / SYSTEM_PROMPT, job.system_prompt)
        # [grounded-chat] numpy via sources: imported here, not at --help
        from ..retrieval import copy_index

        copy_index(job.run_dir, tmp)  # [grounded-chat] adapters/<run>/retrieval/ -> models/<run>/retrieval/
        atomic_write_json(tmp / SIDECAR, _record(job, dtype, check, exports, notes))
        swap_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gguf_path = target / exports["gguf"].name if exports["gguf"] else None
    modelfile = target / exports["modelfile"].name if exports["modelfile"] else None
    return FuseResult(job.run_dir.name, target, job.base_ref, dtype, check, gguf_path, tuple(notes),
                      time.perf_counter() - started, modelfile,
                      ollama_line(target, job.run_dir.name) if modelfile else None)


def _exports(tmp: Path, job: _Job, float_model: Any | None, float_config: dict[str, Any], tokenizer: Any,
             chat: ChatSettings, requantized: bool, notes: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """<run>.gguf and the Modelfile, from float weights (the checked folder's, or the float merge
    a re-quantized folder was made from)."""
    out: dict[str, Any] = {"gguf": None, "modelfile": None}
    if job.gguf is None or job.gguf.route is None:
        return out
    if requantized:
        log("  Exporting the GGUF from the float weights (the re-quantized MLX weights are not a llama.cpp type).")
    path, note = export_gguf_file(tmp, float_model if requantized else None, float_config, job.run_dir.name, job.gguf)
    notes.append(note + (" From the float weights, not the re-quantized MLX ones." if requantized else ""))
    log(f"  {notes[-1]}")
    modelfile, note = write_modelfile(tmp, path, job.system_prompt, tokenizer, chat)
    notes.append(note)
    log(f"  {note}")
    out.update(gguf=path, modelfile=modelfile)
    return out
