"""`fuse` on the tiny model: the merged model matches the adapter on its base, a fuse that lost
its adapter is caught, a quantized base is dequantized first, and the CLI's paths and errors.

Runs are written by hand the way mlx-lm writes them (LoRA layers from
`mlx_lm.tuner.utils.linear_to_lora_layers`, `adapters.safetensors` + `adapter_config.json`) plus
our manifest, with a non-zero `lora_b` so the adapter visibly changes the logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.errors import ModelError
from mlx_partner.workspace import Workspace

SYSTEM = "You are Ada's thinking partner. Answer as Ada would, from her notes."


def quantized_workspace(tmp_path: Path, tiny_model: Path) -> tuple[Path, Path]:
    """An empty workspace folder and a 4-bit copy of the tiny model to fuse onto."""
    from mlx_lm.utils import load, quantize_model, save

    model, tokenizer, config = load(str(tiny_model), return_config=True)
    model, config = quantize_model(model, config, group_size=32, bits=4)
    qbase = tmp_path / "tiny-4bit"
    save(qbase, str(tiny_model), model, tokenizer, config, donate_model=False)
    root = tmp_path / "ws"
    root.mkdir()
    return root, qbase


def make_run(ws_root: Path, base: Path, name: str = "r1", seed: int = 1, dora: bool = False) -> Path:
    """adapters/<name>/ as `mlx-partner train` leaves it, with random (non-zero) LoRA weights."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    model, _ = load(str(base))
    model.freeze()
    params = {"rank": 4, "scale": 10.0, "dropout": 0.0}
    linear_to_lora_layers(model, 2, params, use_dora=dora)
    mx.random.seed(seed)
    adapters = {}
    for key, value in tree_flatten(model.trainable_parameters()):
        adapters[key] = mx.random.normal(value.shape) * 0.05 if key.endswith("lora_b") else value
    run = ws_root / "adapters" / name
    run.mkdir(parents=True)
    mx.save_safetensors(str(run / "adapters.safetensors"), adapters)
    config = {"model": str(base), "fine_tune_type": "dora" if dora else "lora", "num_layers": 2,
              "lora_parameters": params}
    (run / "adapter_config.json").write_text(json.dumps(config))
    (run / "system_prompt.txt").write_text(SYSTEM)
    manifest = {"run": name, "status": "finished", "base_model": str(base), "base_model_path": str(base),
                "system_prompt": SYSTEM, "settings": {"fine_tune_type": config["fine_tune_type"]}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (ws_root / "adapters" / "LATEST").write_text(name + "\n")
    return run


def write_test_split(ws_root: Path) -> None:
    data = ws_root / "data"
    data.mkdir(parents=True, exist_ok=True)
    lines = []
    for q, a in (("What is slow work?", "Honest work, done with attention."),
                 ("Why repair things?", "Because a city that repairs is a city that remembers.")):
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]
        lines.append(json.dumps({"messages": msgs}))
    (data / "test.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def ws(tmp_path, tiny_model) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    write_test_split(root)
    make_run(root, tiny_model)
    return Workspace.at(root)


def logits(model_dir: Path, ids: list[int], adapter: Path | None = None):
    import mlx.core as mx

    from mlx_partner.models import load_model

    loaded = load_model(str(model_dir), adapter_path=adapter)
    return loaded.model(mx.array([ids])).astype(mx.float32)


def test_fused_model_matches_adapter_on_base(ws, tiny_model):
    import mlx.core as mx

    from mlx_partner.fuse import run_fuse

    result = run_fuse(ws, log=lambda s: None)
    out = ws.models_dir / "r1"
    assert result.model_dir == out and result.run == "r1" and result.dtype == "float32"
    assert (out / "config.json").exists() and (out / "system_prompt.txt").read_text() == SYSTEM
    record = json.loads((out / "mlx_partner.json").read_text())
    assert record["kind"] == "fuse" and record["check"]["passed"] and record["base_model_path"] == str(tiny_model)
    # The check ran on the test split and the numbers are real.
    check = result.check
    assert check.source == "test.jsonl conversations" and check.examples == 2 and check.positions > 20
    assert check.max_abs_diff < 1e-3 and check.argmax_agreement == 1.0
    assert check.adapter_effect > 0.1  # the adapter really changes the model, so a lost one would show
    # Independently of the check: fused == adapter-on-base, and != base.
    ids = list(range(3, 40))
    fused, adapted, base = logits(out, ids), logits(tiny_model, ids, ws.adapters_dir / "r1"), logits(tiny_model, ids)
    assert mx.max(mx.abs(fused - adapted)).item() < 1e-3
    assert mx.max(mx.abs(fused - base)).item() > 0.1
    # And no leftovers from the atomic write.
    assert [p.name for p in ws.models_dir.iterdir()] == ["r1"]


def test_a_fuse_that_loses_the_adapter_is_caught(ws, monkeypatch):
    """mlx-lm #1172: the saved model silently lost the adapter. Simulate it: skip the merge."""
    from mlx_partner.fuse import run as fuse_mod

    def lossy(base_path, run_dir, dtype):
        from mlx_lm.utils import load

        model, tokenizer, config = load(str(base_path), return_config=True)
        return model, tokenizer, config  # the adapters never made it in

    monkeypatch.setattr(fuse_mod, "fuse_model", lossy)
    with pytest.raises(ModelError, match="does not match its adapter") as err:
        fuse_mod.run_fuse(ws, log=lambda s: None)
    assert "chat --run r1" in str(err.value)
    # Nothing half-written, nothing wrong left behind: models/ holds the hidden folder the fuse was
    # written to while it was checked, and that is removed, so models/ is there and empty.
    assert ws.models_dir.is_dir() and list(ws.models_dir.iterdir()) == []


def test_a_corrupted_merge_is_caught_too(ws, monkeypatch):
    """A merge that adds the delta with the wrong scale (a plausible bug) fails the check."""
    from mlx_partner.fuse import run as fuse_mod

    real = fuse_mod.fuse_model

    def off_by_scale(base_path, run_dir, dtype):
        model, tokenizer, config = real(base_path, run_dir, dtype)
        layer = model.model.layers[0].self_attn.q_proj
        layer.weight = layer.weight * 1.01
        return model, tokenizer, config

    monkeypatch.setattr(fuse_mod, "fuse_model", off_by_scale)
    with pytest.raises(ModelError, match="differ from the adapter on the base by up to"):
        fuse_mod.run_fuse(ws, log=lambda s: None)


def test_dora_and_output_dir_and_replace(ws, tiny_model, tmp_path):
    from mlx_partner.fuse import run_fuse

    make_run(ws.root, tiny_model, name="d1", seed=2, dora=True)
    out = tmp_path / "elsewhere"
    result = run_fuse(ws, "d1", output=out, log=lambda s: None)
    assert result.model_dir == out.resolve() and result.check.passed and result.check.max_abs_diff < 1e-3
    # Fusing again replaces the folder whole.
    (out / "stale.txt").write_text("old")
    run_fuse(ws, "d1", output=out, log=lambda s: None)
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()


def test_quantized_base_is_dequantized_before_the_merge(tmp_path, tiny_model):
    """A 4-bit base: the merge adds the adapter to dequantized weights, and the check passes."""

    from mlx_partner.fuse import run_fuse

    root, qbase = quantized_workspace(tmp_path, tiny_model)
    write_test_split(root)
    make_run(root, qbase)
    result = run_fuse(Workspace.at(root), log=lambda s: None)
    assert result.check.passed and any("4-bit" in n for n in result.notes)
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert "quantization" not in saved  # stored in float (float32 on a CPU backend)


def test_requantize_keeps_quantized_only_when_faithful(tmp_path, tiny_model):
    """Re-quantizing rounds every fused weight anew; on the tiny random model that moves logits by
    far more than a tenth of the adapter's effect, so the float model is kept, and the note says so.
    With a tolerance that accepts it, the 4-bit model is kept and loads as one."""
    import mlx.nn as nn
    from mlx_lm.utils import load

    from mlx_partner.fuse import run_fuse

    root, qbase = quantized_workspace(tmp_path, tiny_model)
    make_run(root, qbase)
    result = run_fuse(Workspace.at(root), quantize=True, log=lambda s: None)
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert result.check.passed and result.dtype == "float32" and "quantization" not in saved
    assert any("Re-quantizing to 4-bit lost the adapter" in n for n in result.notes)
    assert result.check.source == "fixed prompts"  # no data/ split: fixed questions, run's system prompt

    result = run_fuse(Workspace.at(root), quantize=True, tolerance=100.0, log=lambda s: None)
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert result.dtype == "4-bit" and saved["quantization"]["bits"] == 4
    fused, _ = load(str(result.model_dir))
    assert isinstance(fused.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)


def test_cli_fuse(ws):
    result = CliRunner().invoke(cli, ["-w", str(ws.root), "fuse"])
    assert result.exit_code == 0, result.output
    assert "Fused r1 into" in result.stdout and "Check passed: max |fused - adapter|" in result.stdout
    assert "Checking the fused model" in result.stderr


def test_cli_fuse_errors(tmp_path, ws):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["-w", str(empty), "fuse"])
    assert result.exit_code == 1 and "No trained run yet" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["-w", str(ws.root), "fuse", "--run", "nope"])
    assert result.exit_code == 1 and "No run named 'nope'" in result.output
    # An unfinished run.
    manifest = json.loads((ws.adapters_dir / "r1" / "manifest.json").read_text())
    (ws.adapters_dir / "r1" / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    result = CliRunner().invoke(cli, ["-w", str(ws.root), "fuse"])
    assert result.exit_code == 1 and "not finished" in result.output


def test_cli_fuse_gguf_byte_level_round_trips_through_import(ws):
    """The tiny model's byte-level BPE goes through our exporter; importing the file back gives the
    fused model again (float16 weights) with the same tokenizer and chat template."""
    import mlx.core as mx
    from mlx_lm.utils import load

    from mlx_partner.gguf.header import read_header
    from mlx_partner.models import import_gguf

    result = CliRunner().invoke(cli, ["-w", str(ws.root), "fuse", "--gguf"])
    assert result.exit_code == 0, result.output
    fused = ws.models_dir / "r1"
    gguf = fused / "r1.gguf"
    assert f"GGUF: {gguf}" in result.stdout and "byte-level BPE 'gpt-2' tokenizer, with its chat template" in result.stderr
    header = read_header(gguf)
    assert header.metadata["tokenizer.ggml.model"] == "gpt2" and header.type_counts() == {"F16": 16, "F32": 5}
    back = import_gguf(gguf, name="r1-back", log=lambda s: None).path
    model_a, tok_a = load(str(fused))
    model_b, tok_b = load(str(back))
    ids = list(range(3, 60))
    diff = mx.max(mx.abs(model_a(mx.array([ids])) - model_b(mx.array([ids])))).item()
    assert diff < 0.02  # float16 rounding only
    text = "Slow work, 1987: honest. <|im_end|>"
    assert tok_a.encode(text) == tok_b.encode(text)
    msgs = [{"role": "user", "content": "Why bread?"}]
    assert tok_a.apply_chat_template(msgs, add_generation_prompt=True) == tok_b.apply_chat_template(msgs, add_generation_prompt=True)


def test_cli_fuse_gguf_says_what_it_cannot_write_and_still_fuses(tmp_path, tiny_model):
    """A byte-level tokenizer whose pre-tokenizer llama.cpp has no name for: one line naming why and
    what is supported, before any work; the MLX folder is fused all the same, and no GGUF written."""
    base = tmp_path / "odd-tokenizer"
    shutil.copytree(tiny_model, base)
    tok = json.loads((base / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, tok["pre_tokenizer"]]}
    (base / "tokenizer.json").write_text(json.dumps(tok))
    root = tmp_path / "ws"
    root.mkdir()
    make_run(root, base)
    result = CliRunner().invoke(cli, ["-w", str(root), "fuse", "--gguf"])
    assert result.exit_code == 0 and "Traceback" not in result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith("--gguf: not exporting, its tokenizer is not a byte-level BPE that llama.cpp knows")
    assert "supported: llama, qwen2" in first and "convert_hf_to_gguf.py" in first
    assert "GGUF: not written" in result.stdout
    fused = root / "models" / "r1"
    assert (fused / "config.json").exists() and not list(fused.glob("*.gguf")) and not (fused / "Modelfile").exists()


def test_cli_fuse_gguf_unsupported_architecture(tmp_path, tiny_model):
    """An architecture the exporter does not write (here 'mistral' with a byte-level tokenizer, which
    mlx-lm loads as llama): named in one line with the supported ones; the MLX model is fused."""
    base = tmp_path / "tiny-mistral"
    shutil.copytree(tiny_model, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    root = tmp_path / "ws"
    root.mkdir()
    make_run(root, base)
    result = CliRunner().invoke(cli, ["-w", str(root), "fuse", "--gguf"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("--gguf: not exporting, 'mistral' models cannot be exported to GGUF here (supported: llama, qwen2")
    assert lines[1].startswith("Fusing r1")  # said before any work
    assert (root / "models" / "r1" / "config.json").exists() and not list((root / "models" / "r1").glob("*.gguf"))


def test_fuse_gguf_qwen2_layout(tmp_path, tiny_qwen2):
    """The default base's architecture: qwen2 metadata, biases, tied embeddings (no output.weight),
    the padded vocabulary, Qwen2's pre-tokenizer, and the partner's prompt in the embedded template."""
    from mlx_partner.gguf.header import read_header

    root = tmp_path / "ws"
    root.mkdir()
    write_test_split(root)
    make_run(root, tiny_qwen2)
    result = CliRunner().invoke(cli, ["-w", str(root), "fuse", "--gguf"])
    assert result.exit_code == 0, result.output
    assert "float16 qwen2, byte-level BPE 'qwen2' tokenizer" in result.stderr
    header = read_header(root / "models" / "r1" / "r1.gguf")
    meta, names = header.metadata, {t.name for t in header.tensors}
    config = json.loads((tiny_qwen2 / "config.json").read_text())
    assert header.architecture == "qwen2" and meta["qwen2.block_count"] == 2 and meta["qwen2.rope.freq_base"] == 1e6
    assert meta["tokenizer.ggml.pre"] == "qwen2" and len(meta["tokenizer.ggml.tokens"]) == config["vocab_size"]
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert tokens[-1] == f"[PAD{config['vocab_size'] - 1}]" and types[-1] == 5
    assert types[tokens.index("<|im_end|>")] == 3 and types[tokens.index("<tool_call>")] == 4
    assert meta["tokenizer.ggml.eos_token_id"] == tokens.index("<|im_end|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert {"blk.0.attn_q.bias", "blk.1.attn_k.bias", "blk.1.attn_v.bias", "token_embd.weight"} <= names
    assert "output.weight" not in names
    # The base's template (its Qwen default included) behind the prelude that puts the partner's prompt first.
    from mlx_partner.fuse.template import jinja_string

    template = meta["tokenizer.chat_template"]
    assert jinja_string(SYSTEM) in template and template.index(jinja_string(SYSTEM)) < template.index("You are Qwen")
    assert header.type_counts() == {"F16": 15, "F32": 11}


def test_quantized_fuse_exports_gguf_from_float_weights(tmp_path, tiny_model):
    """--quantize --gguf: the MLX folder stays 4-bit, the GGUF is float16 from the float merge, and
    the note says so. Its weights are the float fused model's (imported back, to float16 rounding)."""
    import mlx.core as mx
    from mlx_lm.utils import load

    from mlx_partner.fuse import run_fuse
    from mlx_partner.models import import_gguf

    root, qbase = quantized_workspace(tmp_path, tiny_model)
    make_run(root, qbase)
    result = run_fuse(Workspace.at(root), quantize=True, tolerance=100.0, export_gguf=True, log=lambda s: None)
    assert result.dtype == "4-bit" and result.gguf_path and result.modelfile
    assert any("From the float weights, not the re-quantized MLX ones." in n for n in result.notes)
    floats = run_fuse(Workspace.at(root), output=tmp_path / "float", log=lambda s: None)
    back = import_gguf(result.gguf_path, name="q-back", log=lambda s: None).path
    ids = mx.array([list(range(3, 50))])
    a, b = load(str(floats.model_dir))[0](ids), load(str(back))[0](ids)
    assert mx.max(mx.abs(a - b)).item() < 0.02


def sentencepiece_variant(tiny_model: Path, dest: Path) -> Path:
    """The tiny model with a Llama-2-style tokenizer (byte-fallback BPE on '▁'), which mlx-lm exports right."""
    from tiny_model import training_text
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    shutil.copytree(tiny_model, dest)
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(training_text(), trainer=trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                                                         show_progress=False))
    tok.save(str(dest / "tokenizer.json"))
    config = json.loads((dest / "tokenizer_config.json").read_text())
    config.update({"eos_token": "<|im_end|>", "pad_token": "<unk>", "bos_token": "<s>", "unk_token": "<unk>"})
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    return dest


def test_cli_fuse_gguf_refuses_sentencepiece(tmp_path, tiny_model):
    """A Llama-2-style tokenizer: mlx-lm's exporter would write a GGUF llama.cpp refuses to load
    ("invalid gguf type for tokenizer.ggml.token_type"), so none is written, and the line says why."""
    base = sentencepiece_variant(tiny_model, tmp_path / "tiny-spm")
    root = tmp_path / "ws"
    root.mkdir()
    make_run(root, base)
    result = CliRunner().invoke(cli, ["-w", str(root), "fuse", "--gguf"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("--gguf: not exporting, it has a SentencePiece-style tokenizer")
    assert (root / "models" / "r1" / "config.json").exists() and not list((root / "models" / "r1").glob("*.gguf"))
    assert json.loads((root / "models" / "r1" / "mlx_partner.json").read_text())["gguf"] is None


def test_fuse_takes_the_workspace_lock(ws, hold_lock):
    hold_lock(ws.root, "train")  # another live process holds the lock, as a running `train` would
    result = CliRunner().invoke(cli, ["-w", str(ws.root), "fuse"])
    assert result.exit_code == 1 and "Another mlx-partner command (train" in result.output
    assert not (ws.models_dir / "r1").exists()


def test_missing_base_model_is_a_clear_error(tmp_path, tiny_model):
    base = tmp_path / "base-copy"
    shutil.copytree(tiny_model, base)
    root = tmp_path / "ws"
    root.mkdir()
    make_run(root, base)
    shutil.rmtree(base)
    result = CliRunner().invoke(cli, ["-w", str(root), "fuse"])
    assert result.exit_code == 1 and "not found" in result.output and "Traceback" not in result.output
