"""`mlx-partner fuse`: merge a run's LoRA/DoRA adapters into a standalone model, and prove it.

    result = run_fuse(ws, run_name=None)     # adapters/<latest>/ + its base -> models/<run>/

The merge is mlx-lm's own (`module.fuse()` on every adapted layer, as `mlx_lm fuse` does), run in
process. A quantized base is dequantized first, so the adapter is added to real weights; the
result is re-quantized only on request and only if it stays faithful, because rounding the fused
weights back to 4 bits can erase a small adapter (mlx-lm issue #1172: a fused quantized model
that silently answered like the base).

Then the fused folder is loaded back from disk, the way `chat` loads it, and its logits on a few
held-out conversations (data/test.jsonl, else valid.jsonl, else fixed prompts, always with the
run's system prompt) are compared with the adapter on its base, the way training saw it. The
largest difference must stay within a tolerance, or the fuse fails with the numbers; a fused
model that lost its adapter differs from the adapter by as much as the adapter changed the base,
so it cannot pass.

`--gguf` exports a float16 GGUF for llama.cpp/Ollama/LM Studio. mlx-lm's exporter handles
llama/mistral/mixtral with a SentencePiece tokenizer, but writes a vocabulary without merges for
byte-level BPE models (SmolLM2, Llama 3), so those go through our own exporter in gguf/ (the
inverse of `models import`); anything else is refused with what to do instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError
from .fsutil import recover_swap, swap_into_place
from .gguf import writer as gguf_writer
from .models import SIDECAR, is_cpu_backend, load_model, read_config, resolve_model
from .runs import ADAPTER_WEIGHTS, SYSTEM_PROMPT, find_run, read_manifest
from .textfmt import stderr, utc_now
from .workspace import Workspace, atomic_write_json, atomic_write_text, read_jsonl, workspace_lock

FIXED_PROMPTS = (
    "What do you care about most in your work?",
    "Someone says your main idea is naive. What do you answer?",
    "Explain one of your convictions to a newcomer in three sentences.",
)
MAX_CHECK_EXAMPLES = 3
MAX_CHECK_TOKENS = 160
# Largest |fused - adapter-on-base| logit difference accepted when the fused weights are stored
# in float32: the merge only reorders float32 sums (measured ~1e-5 on SmolLM2-135M), while a lost
# adapter differs by what the adapter changed, typically whole logits.
TOLERANCE_FLOAT32 = 1e-2
# In float16/bfloat16/re-quantized storage, rounding alone moves logits by a few tenths: accept up
# to this share of the adapter's own effect on the logits (and at least TOLERANCE_FLOAT32).
TOLERANCE_SHARE_OF_EFFECT = 0.1


@dataclass(frozen=True)
class FuseCheck:
    """How the fused model compares with the adapter on its base, on held-out token positions."""

    source: str  # where the prompts came from
    examples: int
    positions: int
    max_abs_diff: float
    argmax_agreement: float
    adapter_effect: float  # max |adapter-on-base - base|: what the adapter changed
    tolerance: float
    template_ok: bool

    @property
    def passed(self) -> bool:
        return self.template_ok and self.max_abs_diff <= self.tolerance

    def line(self) -> str:
        return (f"max |fused - adapter| = {self.max_abs_diff:.2e} (tolerance {self.tolerance:.1e}; the adapter "
                f"itself moves logits by up to {self.adapter_effect:.2f}), next-token agreement "
                f"{self.argmax_agreement:.1%} over {self.positions} positions of {self.examples} {self.source}")


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


# --- held-out prompts ----------------------------------------------------------------------------


def check_conversations(ws: Workspace, system_prompt: str) -> tuple[str, list[list[dict[str, str]]]]:
    """A few held-out conversations for the check: test split, else valid, else fixed questions."""
    for split in ("test", "valid"):
        path = ws.split_path(split)
        if not path.exists():
            continue
        convs = []
        records, _bad = read_jsonl(path)
        for record in records:
            msgs = record.get("messages")
            if msgs and all(isinstance(m, dict) and "content" in m for m in msgs):
                convs.append(msgs)
            if len(convs) == MAX_CHECK_EXAMPLES:
                break
        if convs:
            return f"{split}.jsonl conversations", convs
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return "fixed prompts", [system + [{"role": "user", "content": q}] for q in FIXED_PROMPTS]


def encode(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation through the chat template (plain text if the template refuses)."""
    add_gen = messages[-1]["role"] != "assistant"
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_gen, tokenize=True)
        if isinstance(ids, dict):  # some transformers versions return a BatchEncoding
            ids = ids["input_ids"]
    except Exception:
        ids = tokenizer.encode("\n\n".join(m["content"] for m in messages))
    return list(ids)[:MAX_CHECK_TOKENS]


def _template_text(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception:
        return None


def compare_logits(reference: list[Any], candidate: list[Any], base: list[Any]) -> dict[str, float]:
    """Max abs logit difference and argmax agreement of `candidate` against `reference` (lists of
    [1, tokens, vocab] arrays, one per conversation); `base` (logits of the base model on the
    first conversations) gives the adapter's own effect, max |reference - base|."""
    import mlx.core as mx

    diff, agree, total = 0.0, 0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        diff = max(diff, mx.max(mx.abs(ref - cand)).item())
        agree += int(mx.sum(mx.argmax(ref, -1) == mx.argmax(cand, -1)).item())
        total += ref.shape[1]
    effect = max((mx.max(mx.abs(r - b)).item() for r, b in zip(reference, base, strict=False)), default=0.0)
    return {"max_abs_diff": diff, "argmax_agreement": agree / max(total, 1), "positions": total, "effect": effect}


def _logits(model: Any, batches: list[list[int]]) -> list[Any]:
    import mlx.core as mx

    out = []
    for ids in batches:
        y = model(mx.array([ids])).astype(mx.float32)
        mx.eval(y)
        out.append(y)
    return out


def _release() -> None:
    """Give a dropped model's memory back before the next one loads (one model at a time)."""
    import gc

    import mlx.core as mx

    gc.collect()
    mx.clear_cache()


# --- the merge -----------------------------------------------------------------------------------


def fuse_model(base_path: Path, run_dir: Path, dtype: str) -> tuple[Any, Any, dict[str, Any]]:
    """Base + adapters -> a model with the adapters merged, in `dtype` ("float32", "float16",
    "bfloat16"); a quantized base is dequantized first. Returns (model, tokenizer, config)."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import dequantize_model, load

    model, tokenizer, config = load(str(base_path), return_config=True)
    if "quantization" in config or "quantization_config" in config:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    model.set_dtype(mx.float32)  # merge in float32; round once, at the end
    model = load_adapters(model, str(run_dir))
    fused = [(name, module.fuse(dequantize=True)) for name, module in model.named_modules() if hasattr(module, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    model.set_dtype(getattr(mx, dtype))
    config["torch_dtype"] = dtype
    return model, tokenizer, config


def _output_dtype(base_config: dict[str, Any], on_cpu: bool) -> str:
    """float32 on a CPU backend (what chat computes in there); else the base's own float type."""
    if on_cpu:
        return "float32"
    stored = str(base_config.get("torch_dtype") or base_config.get("dtype") or "float16")
    return stored if stored in ("float32", "float16", "bfloat16") else "float16"


def _save(path: Path, model: Any, tokenizer: Any, config: dict[str, Any]) -> None:
    from mlx_lm.utils import save_config, save_model

    save_model(path, model)
    save_config(dict(config), config_path=path / "config.json")
    tokenizer.save_pretrained(str(path))


# --- the stage -----------------------------------------------------------------------------------


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


def _job(ws: Workspace, run_name: str | None, output: Path | None) -> _Job:
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
    system_prompt = manifest.get("system_prompt") or _read(run_dir / SYSTEM_PROMPT)
    target = Path(output).expanduser().resolve() if output else ws.models_dir / run_dir.name
    recover_swap(target)
    base_config = read_config(base_path)
    return _Job(run_dir, manifest, str(base_ref), base_path, system_prompt, target,
                _output_dtype(base_config, is_cpu_backend()), base_config.get("quantization"),
                manifest.get("settings", {}).get("fine_tune_type", "lora"))


def _merge(job: _Job, requantize: bool) -> tuple[Any, Any, dict[str, Any], Any, dict[str, Any], str]:
    """(float model, tokenizer, float config, model to save, its config, its dtype)."""
    float_model, tokenizer, float_config = fuse_model(job.base_path, job.run_dir, job.float_dtype)
    if not requantize:
        return float_model, tokenizer, float_config, float_model, float_config, job.float_dtype
    from mlx_lm.utils import quantize_model

    quant = job.base_quant or {}
    # nn.quantize works in place: quantize a second copy, keeping the float one to fall back on.
    copy, _, copy_config = fuse_model(job.base_path, job.run_dir, job.float_dtype)
    model, config = quantize_model(copy, copy_config, quant.get("group_size"), quant.get("bits"),
                                   mode=quant.get("mode", "affine"))
    return float_model, tokenizer, float_config, model, config, f"{quant.get('bits')}-bit"


def _refusal(job: _Job, check: FuseCheck) -> ModelError:
    what = ("its chat template differs from the base's" if not check.template_ok else
            f"its logits differ from the adapter on the base by up to {check.max_abs_diff:.3g} "
            f"(tolerance {check.tolerance:.3g}; the adapter moves them by {check.adapter_effect:.3g})")
    name = job.run_dir.name
    return ModelError(f"The fused model of {name} does not match its adapter: {what}; nothing was "
                      f"written to {job.target} (chat with the adapter instead: `mlx-partner chat --run {name}`).")


def _record(job: _Job, dtype: str, check: FuseCheck, gguf_path: Path | None, notes: list[str]) -> dict[str, Any]:
    """What mlx_partner.json beside the fused model says: where it came from and how it checked."""
    return {
        "kind": "fuse", "run": job.run_dir.name, "adapters": str(job.run_dir),
        "base_model": job.manifest.get("base_model"), "base_model_path": str(job.base_path),
        "fine_tune_type": job.fine_tune_type,
        "dtype": dtype, "check": {**asdict(check), "passed": check.passed},
        "gguf": gguf_path.name if gguf_path else None, "notes": notes,
        "created": utc_now(),
    }


def run_fuse(ws: Workspace | Path | str, run_name: str | None = None, *, output: Path | None = None,
             export_gguf: bool = False, quantize: bool = False, tolerance: float | None = None,
             log: Callable[[str], None] = stderr) -> FuseResult:
    """Fuse a run (the latest by default) into models/<run>/ (or `output`), verified, atomically.

    quantize: re-quantize the fused weights like the base (Metal; a 4-bit base) when the check
    still passes; otherwise the fused model stays in float and a note says why. Holds the
    workspace lock throughout.
    """
    started = time.perf_counter()
    ws = ws if isinstance(ws, Workspace) else Workspace.at(ws)
    with workspace_lock(ws, "fuse"):
        job = _job(ws, run_name, output)
        return _fuse(ws, job, export_gguf, quantize, tolerance, log, started)


def _fuse(ws: Workspace, job: _Job, gguf: bool, quantize: bool, tolerance: float | None,
          log: Callable[[str], None], started: float) -> FuseResult:
    """Merge, write to a hidden folder, check it, then swap it into place (or refuse)."""
    notes: list[str] = []
    base_quant, target = job.base_quant, job.target
    if base_quant:
        notes.append(f"The base is {base_quant.get('bits')}-bit: dequantized before the merge.")
    elif quantize:
        notes.append("The base is not quantized, so there is nothing to re-quantize: the fused model stays in float.")
    requantizing = bool(quantize and base_quant)
    requant = f", re-quantized to {base_quant.get('bits')}-bit if faithful" if requantizing else ""
    log(f"Fusing {job.run_dir.name} ({job.fine_tune_type}) into "
        f"{job.base_path.name} -> {target} ({job.float_dtype}{requant})")
    float_model, tokenizer, float_config, model, config, dtype = _merge(job, requantizing)

    for stale in target.parent.glob(f".{target.name}.fusing-*"):  # left by a killed fuse
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.fusing-{os.getpid()}")
    try:
        _save(tmp, model, tokenizer, config)
        if not requantizing:  # on disk now: free it before the check loads models one by one
            del model, float_model
            _release()
        log("Checking the fused model against the adapter on its base ...")
        check = verify(ws, tmp, job.base_path, job.run_dir, job.system_prompt, dtype, tolerance)
        log(f"  {check.line()}")
        if not check.passed and requantizing:
            notes.append(f"Re-quantizing to {dtype} lost the adapter ({check.max_abs_diff:.2f} > {check.tolerance:.2f}); kept it in float.")
            log(f"  {notes[-1]}")
            shutil.rmtree(tmp, ignore_errors=True)
            model, config, dtype = float_model, float_config, job.float_dtype
            _save(tmp, model, tokenizer, config)
            check = verify(ws, tmp, job.base_path, job.run_dir, job.system_prompt, dtype, tolerance)
            log(f"  {check.line()}")
        if not check.passed:
            raise _refusal(job, check)
        gguf_path = None
        if gguf:
            gguf_path, note = export_gguf_file(tmp, float_model if requantizing else None, float_config,
                                               job.run_dir.name)
            notes.append(note)
            log(f"  {note}")
        if job.system_prompt:
            atomic_write_text(tmp / SYSTEM_PROMPT, job.system_prompt)
        from .retrieval import copy_index  # [grounded-chat] (numpy: not at --help)

        copy_index(job.run_dir, tmp)  # [grounded-chat] adapters/<run>/retrieval/ -> models/<run>/retrieval/
        atomic_write_json(tmp / SIDECAR, _record(job, dtype, check, gguf_path, notes))
        swap_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if gguf_path is not None:
        gguf_path = target / gguf_path.name
    return FuseResult(job.run_dir.name, target, job.base_ref, dtype, check, gguf_path, tuple(notes),
                      time.perf_counter() - started)


def verify(ws: Workspace, fused_dir: Path, base_path: Path, run_dir: Path, system_prompt: str, dtype: str,
           tolerance: float | None) -> FuseCheck:
    """Load the fused folder as chat would and compare it with adapter-on-base (as training saw it).

    One model in memory at a time: the adapter on its base, then the fused model, then the base
    (on the first conversation only, to measure what the adapter changed).
    """
    source, convs = check_conversations(ws, system_prompt)
    probe = convs[0] if convs[0][-1]["role"] != "assistant" else convs[0][:-1]
    loaded = load_model(str(base_path), adapter_path=run_dir)
    batches = [ids for ids in (encode(loaded.tokenizer, c) for c in convs) if ids]
    reference, ref_template = _logits(loaded.model, batches), _template_text(loaded.tokenizer, probe)
    del loaded
    _release()
    loaded = load_model(str(fused_dir))
    fused, fused_template = _logits(loaded.model, batches), _template_text(loaded.tokenizer, probe)
    del loaded
    _release()
    loaded = load_model(str(base_path))
    base = _logits(loaded.model, batches[:1])
    del loaded
    _release()
    stats = compare_logits(reference, fused, base)
    if tolerance is None:
        tolerance = TOLERANCE_FLOAT32
        if dtype != "float32":
            tolerance = max(tolerance, TOLERANCE_SHARE_OF_EFFECT * stats["effect"])
    return FuseCheck(source, len(batches), int(stats["positions"]), stats["max_abs_diff"],
                     stats["argmax_agreement"], stats["effect"], tolerance, ref_template == fused_template)


# --- GGUF export ---------------------------------------------------------------------------------


def _byte_level(model_dir: Path) -> bool:
    """True for GPT-2-style byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen)."""
    try:
        data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return "ByteLevel" in json.dumps([data.get("pre_tokenizer"), data.get("decoder")])


def export_gguf_file(model_dir: Path, model: Any | None, config: dict[str, Any], run: str) -> tuple[Path, str]:
    """Write <run>.gguf (float16) beside the fused model, for llama.cpp, Ollama and LM Studio.

    Byte-level BPE llama models (SmolLM2, Llama 3) go through our own exporter, the inverse of
    `models import` (on SmolLM2 it reproduces llama.cpp's tokenizer metadata and tensor layout
    exactly); SentencePiece llama/mistral/mixtral models through mlx-lm's. The float weights come
    from `model`, or, when None, from the (float) safetensors in model_dir.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    path = model_dir / f"{run}.gguf"
    instead = f"fuse without --gguf and convert models/{run}/ with llama.cpp's convert_hf_to_gguf.py"
    model_type = config.get("model_type")
    if model_type not in ("llama", "mistral", "mixtral"):
        raise ModelError(f"--gguf: only llama, mistral and mixtral models can be exported here, and this one is "
                         f"'{model_type}'; {instead}.")
    params = dict(tree_flatten(model.parameters())) if model is not None else None
    cfg = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    if _byte_level(model_dir):
        if model_type != "llama":
            raise ModelError(f"--gguf: a byte-level BPE '{model_type}' model cannot be exported here; {instead}.")
        try:
            meta = gguf_writer.export_gguf(model_dir, path, weights=params, config=cfg)
        except ModelError as exc:
            raise ModelError(f"--gguf: {exc} {instead[0].upper()}{instead[1:]}.") from None
        template = "with its chat template" if "tokenizer.chat_template" in meta else "without a chat template (the model has none)"
        return path, f"Wrote {path.name} (float16, byte-level BPE '{meta['tokenizer.ggml.pre']}' tokenizer, {template})."

    # SentencePiece: mlx-lm's exporter writes this vocabulary right.
    from mlx_lm.gguf import convert_to_gguf

    if params is None:
        params = {}
        for shard in sorted(model_dir.glob("model*.safetensors")):
            params.update(mx.load(str(shard)))
    weights = {k: v.astype(mx.float16) if v.ndim > 1 else v for k, v in params.items()}
    try:
        with contextlib.redirect_stdout(sys.stderr):  # it prints progress; our stdout is for results
            convert_to_gguf(model_dir, weights, cfg, str(path))
    except Exception as exc:
        raise ModelError(f"--gguf: mlx-lm's exporter failed ({type(exc).__name__}: {exc}); the fused mlx model was not written either.") from None
    return path, (f"Wrote {path.name} (float16) with mlx-lm's exporter. Caveat: it carries no chat template; "
                  f"give Ollama/LM Studio the model's template yourself.")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""
