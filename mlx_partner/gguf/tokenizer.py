"""The tokenizer inside a GGUF file: rebuilt as a Hugging Face `tokenizers` one, and named back.

Import: `build_tokenizer(metadata)` makes either a byte-level BPE (`tokenizer.ggml.model`
"gpt2": tokens + merges, with the pre-tokenizer llama.cpp names, e.g. SmolLM's digit splitting)
or a SentencePiece BPE ("llama": tokens + scores, merges rebuilt from the scores, byte fallback).
Export: `pre_tokenizer_name(tokenizer.json)` is llama.cpp's name for a byte-level pre-tokenizer
(gpt-2, smollm, llama-bpe, qwen2), told from its structure.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelError

# llama.cpp's pre-tokenizer names -> the Hugging Face pre-tokenizer they stand for.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's: Llama 3's with single digits.
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
PRE_TOKENIZERS = ("gpt2", "gpt-2", "default", "smollm", "starcoder", "llama-bpe", "llama3", "qwen2")


def pre_tokenizer(pre: str) -> Any:
    """The Hugging Face pre-tokenizer llama.cpp's name `pre` stands for; ModelError if unknown."""
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in ("gpt2", "gpt-2", "default"):
        return byte_level
    if pre in ("smollm", "starcoder"):
        # SmolLM/StarCoder split every digit on its own before the GPT-2 regex.
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("llama-bpe", "llama3", "qwen2"):
        split = _QWEN2_SPLIT if pre == "qwen2" else _LLAMA3_SPLIT
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    raise ModelError(
        f"The GGUF tokenizer uses the '{pre}' pre-tokenizer, which this importer does not know "
        f"(it knows {', '.join(PRE_TOKENIZERS)})."
    )


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges for a SentencePiece vocabulary, which stores scores instead of merges.

    Every split of a normal piece into two vocabulary pieces is a merge, ranked by the score of
    the piece it makes (higher first): how Hugging Face converts SentencePiece BPE models.
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for piece, pid in vocab.items():
        if types[pid] != 1:
            continue
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                found.append((-scores[pid], vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def build_tokenizer(meta: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A `tokenizers.Tokenizer` and the tokenizer_config.json entries, from GGUF metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types = meta.get("tokenizer.ggml.token_type")
    types = [int(t) for t in (types.tolist() if hasattr(types, "tolist") else types or [1] * len(tokens))]
    vocab = {t: i for i, t in enumerate(tokens)}
    spm = meta.get("tokenizer.ggml.model") == "llama"
    if spm:
        # SentencePiece BPE (Llama 2 family): spaces are '▁', unknown bytes fall back to <0xXX>.
        scores = meta["tokenizer.ggml.scores"]
        scores = [float(x) for x in (scores.tolist() if hasattr(scores, "tolist") else scores)]
        unk_id = meta.get("tokenizer.ggml.unknown_token_id")
        unk = tokens[int(unk_id)] if unk_id is not None else None
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=spm_merges(tokens, scores, types), unk_token=unk,
                                         fuse_unk=True, byte_fallback=True))
        prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        tokenizer.normalizer = normalizers.Sequence(
            ([normalizers.Prepend("▁")] if prefix else []) + [normalizers.Replace(" ", "▁")])
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
            + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    else:
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        tokenizer.pre_tokenizer = pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")))
        tokenizer.decoder = decoders.ByteLevel()
    # Control (3) and user-defined (4) tokens are matched whole, before BPE.
    kinds = dict(zip(tokens, types, strict=False))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in kinds.items() if k == 3])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in kinds.items() if k == 4])

    from tokenizers import processors

    def token(key: str) -> str | None:
        idx = meta.get(key)
        return None if idx is None else tokens[int(idx.item() if hasattr(idx, "item") else idx)]

    bos, eos, pad, unk = (token(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding", "unknown"))
    # SentencePiece models add BOS unless told otherwise; byte-level BPE ones do not.
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", spm))
    if add_bos and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))]
        )
    elif not spm:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad or eos,
        "unk_token": unk,
        "add_bos_token": add_bos,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("llama.context_length", 2048)),
    }
    if spm:
        del tokenizer_config["add_prefix_space"]  # a byte-level option; the normalizer adds the '▁'
    if "tokenizer.chat_template" in meta:
        tokenizer_config["chat_template"] = str(meta["tokenizer.chat_template"])
    return tokenizer, tokenizer_config


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str | None:
    """llama.cpp's name for a Hugging Face byte-level pre-tokenizer, or None if it has none."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp's name (not "gpt2", which it refuses)
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        return {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}.get(regex)
    return None
