"""Chat speed: mlx-partner's chat against `python -m mlx_lm generate`, and time to first token by turn.

Two measurements on one model, each the median of several runs:

1. Generation tokens/s of `ChatSession` (what `mlx-partner chat` streams) against
   `python -m mlx_lm generate` on the same model, prompt, system prompt and greedy sampling, with
   the same BLAS. Target: >= 0.95x.
2. Time to first token at turn 10 of a conversation against turn 1, with the KV cache reused
   across turns. Target: <= 1.5x. The same with the cache thrown away before every turn is shown
   for contrast (that is what re-prefilling the whole history costs).

    python bench/chat_bench.py                       # the tiny random model (seconds)
    python bench/chat_bench.py --model ~/.cache/mlx-partner/models/smollm2-135m-instruct
    python bench/chat_bench.py --model models/<run> --runs 5 --max-tokens 128

On Linux the script re-executes itself once under OpenBLAS, as the `mlx-partner` command does, and
the `mlx_lm generate` subprocess inherits it, so both sides use the same BLAS.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SYSTEM = (
    "You are a thinking partner who answers in the voice of the essayist Oona Vesterberg: "
    "plain, concrete, a little wry. Answer from her positions; say so when you do not know."
)
PROMPT = "Tell me, in a few paragraphs, why you think slow work is honest work."
TURNS = [
    "What is a street for?",
    "Why do you keep a notebook?",
    "What does bread teach you about patience?",
    "Is repairing things worth the time?",
    "What would you say to someone who reads only on a phone?",
    "How do you choose what to write about?",
    "What makes a neighbourhood feel alive?",
    "Do you ever disagree with yourself?",
    "What is the best advice you were given about craft?",
    "Sum up what we talked about in one sentence.",
]
GEN_RE = re.compile(r"Generation:\s*(\d+)\s*tokens,\s*([\d.]+)\s*tokens-per-sec")


def mlx_lm_generate(model: str, max_tokens: int) -> tuple[int, float]:
    """One `python -m mlx_lm generate` run: (generated tokens, generation tokens/s)."""
    cmd = [sys.executable, "-m", "mlx_lm", "generate", "--model", model, "--prompt", PROMPT,
           "--system-prompt", SYSTEM, "--max-tokens", str(max_tokens), "--temp", "0", "--seed", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    match = GEN_RE.search(out.stdout + out.stderr)
    if not match:
        raise SystemExit(f"Could not read mlx_lm's timing from:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return int(match.group(1)), float(match.group(2))


def ours(session, max_tokens: int) -> tuple[int, float]:
    """One chat reply, streamed through click.echo as the REPL does: (tokens, tokens/s)."""
    import click

    session.reset()
    session.max_tokens = max_tokens
    with open(os.devnull, "w") as sink:
        for piece in session.ask(PROMPT):
            click.echo(piece, nl=False, file=sink)
    return session.stats.generated_tokens, session.stats.generation_tps


def conversation(session, reuse: bool) -> list[float]:
    """Time to first token of each turn of a 10-turn conversation (seconds)."""
    session.reset()
    ttft = []
    for question in TURNS:
        if not reuse:
            session._cache, session._cached = None, []
        session.reply(question)
        ttft.append(session.stats.time_to_first_token)
    return ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="A model folder, or 'tiny' for the tiny random test model.")
    parser.add_argument("--runs", type=int, default=5, help="Runs per measurement (the median is reported).")
    parser.add_argument("--max-tokens", type=int, default=128, help="Tokens generated per reply.")
    parser.add_argument("--turn-tokens", type=int, default=48, help="Tokens per reply in the 10-turn conversation.")
    parser.add_argument("--only", choices=["tps", "ttft"], help="Run only one of the two measurements.")
    args = parser.parse_args()

    from mlx_partner.blas import reexec_with_fast_blas, status_line

    reexec_with_fast_blas()

    import mlx.core as mx

    from mlx_partner.chat.session import ChatSession, context_window
    from mlx_partner.models import load_model

    if args.model == "tiny":
        from tiny_model import build_tiny_model

        model_path = build_tiny_model(Path(tempfile.mkdtemp(prefix="chat-bench-")) / "tiny")
    else:
        model_path = Path(args.model).expanduser()
    loaded = load_model(model_path)
    config_dtype = loaded.config.get("torch_dtype", "?")
    quantized = "quantization" in loaded.config
    print(f"model: {model_path}")
    print(f"  on disk: {'quantized' if quantized else config_dtype}; chat computes in {loaded.dtype}")
    print(f"  {status_line() or 'BLAS: platform default'}  device: {mx.default_device()}  "
          f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if quantized or config_dtype not in ("float32", "?"):
        print("  note: mlx_lm generate computes in the stored dtype; the tokens/s ratio compares "
              "different precisions (on a CPU backend float32 is the fast one)")

    session = ChatSession(loaded.model, loaded.tokenizer, SYSTEM, temperature=0.0, top_p=1.0,
                          max_tokens=args.max_tokens, window=context_window(loaded.config))
    ours(session, 8)  # warm up

    if args.only != "ttft":
        tokens_per_second(session, str(model_path), args.runs, args.max_tokens)
    if args.only != "tps":
        first_token_by_turn(session, args.runs, args.turn_tokens)
    print(f"\n(finished {time.strftime('%H:%M:%S')}; load average {os.getloadavg()[0]:.1f})")


def tokens_per_second(session, model_path: str, runs: int, max_tokens: int) -> None:
    """1. Generation tokens/s, alternating runs so that machine load hits both sides alike."""
    theirs_tps, ours_tps, counts = [], [], set()
    for _ in range(runs):
        n, tps = mlx_lm_generate(model_path, max_tokens)
        theirs_tps.append(tps)
        m, tps2 = ours(session, max_tokens)
        ours_tps.append(tps2)
        counts.add((n, m))
    t_med, o_med = statistics.median(theirs_tps), statistics.median(ours_tps)
    print(f"\ngeneration tokens/s, median of {runs} (tokens generated mlx_lm/ours: {sorted(counts)})")
    print(f"  python -m mlx_lm generate: {t_med:8.1f}   runs: {', '.join(f'{x:.1f}' for x in theirs_tps)}")
    print(f"  mlx-partner chat:          {o_med:8.1f}   runs: {', '.join(f'{x:.1f}' for x in ours_tps)}")
    ratio = o_med / t_med
    print(f"  ratio: {ratio:.3f}x  (target >= 0.95)  {'OK' if ratio >= 0.95 else 'BELOW TARGET'}")


def first_token_by_turn(session, runs: int, turn_tokens: int) -> None:
    """2. Time to first token at each turn of a 10-turn conversation, cache reused or not."""
    session.max_tokens = turn_tokens
    with_cache = [conversation(session, reuse=True) for _ in range(runs)]
    prefill_last = session.stats.prefill_tokens, session.stats.prompt_tokens
    without = [conversation(session, reuse=False) for _ in range(runs)]
    med = [statistics.median(run[i] for run in with_cache) for i in range(len(TURNS))]
    med_no = [statistics.median(run[i] for run in without) for i in range(len(TURNS))]
    print(f"\ntime to first token by turn (ms), median of {runs}, {turn_tokens}-token replies")
    print("  turn:          " + " ".join(f"{i + 1:>6}" for i in range(len(TURNS))))
    print("  cache reused:  " + " ".join(f"{x * 1000:6.1f}" for x in med))
    print("  re-prefilled:  " + " ".join(f"{x * 1000:6.1f}" for x in med_no))
    print(f"  turn 10 prefilled {prefill_last[0]} of its {prefill_last[1]} prompt tokens with the cache")
    r10 = med[-1] / med[0]
    print(f"  turn 10 / turn 1: {r10:.2f}x with the cache (target <= 1.5)  {'OK' if r10 <= 1.5 else 'ABOVE TARGET'};"
          f" {med_no[-1] / med_no[0]:.2f}x re-prefilling")


if __name__ == "__main__":
    main()
