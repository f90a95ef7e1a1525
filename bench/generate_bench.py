"""Benchmark `generate` against the local fake Anthropic server (tests/fake_anthropic.py).

    /work/venv/bin/python bench/generate_bench.py            # ~1 minute
    /work/venv/bin/python bench/generate_bench.py --latency 0.5 --concurrency 1 4 8

Measures, on a synthetic workspace of 8 themes x 4 documents (~2400 words a theme) asked for
40 pairs a theme in rounds of 8, i.e. 40 requests:
  1. wall time for the 40 requests with the server answering each after `--latency` seconds,
     at each concurrency, as a ratio to the ideal 40 * latency / C (target <= 1.25);
  2. the share of input tokens read from the prompt cache across the rounds of each batch
     (target >= 70%);
  3. the dry-run estimate against what the ledger recorded.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

THEMES = ["bread", "benches", "repair", "notebooks", "bicycles", "gardens", "libraries", "markets"]
NOUNS = ["kettle", "ladder", "window", "ledger", "bucket", "lantern", "hinge", "notebook", "basket", "compass", "shovel", "teapot", "anchor", "blanket", "candle", "mirror"]
VERBS = ["mended", "counted", "painted", "measured", "borrowed", "sketched", "weighed", "carried", "folded", "sorted", "polished", "labelled"]
PLACES = ["harbour", "station", "orchard", "workshop", "courtyard", "allotment", "bakery", "archive", "tramline", "footbridge"]
SYLLABLES = ["bra", "nto", "lo", "mes", "qui", "var", "del", "fen", "gor", "hul", "isk", "jab", "kem", "lun", "mor", "nib", "osk", "pra", "rud", "sel", "tam", "ulv", "vek", "wyn"]
REASONS = ["nobody else would", "the council forgot", "my grandmother asked", "the rain stopped", "a neighbour needed it", "it taught me patience"]


SERVER = """
import sys, time
from fake_anthropic import FakeAnthropic
server = FakeAnthropic(latency=float(sys.argv[1])).start()
print(server.url, flush=True)
while True:
    time.sleep(60)
"""


def write_workspace(root: Path, seed: int = 0) -> None:
    """8 themes x 4 documents of 40 equally long sentences each; every sentence distinct."""
    rng = random.Random(seed)
    (root / "sources").mkdir(parents=True)
    (root / "profile.md").write_text(
        "# Author profile\n\nI am a bench-counting essayist who writes plainly about ordinary things.\n"
        "## Voice\nWarm, direct, a little stubborn.\n"
    )
    n = 0
    for theme in THEMES:
        (root / "sources" / theme).mkdir()
        for d in range(4):
            sentences = []
            for _ in range(40):
                n += 1
                # Invented names open each sentence, so that no two questions drawn from them look alike.
                name = lambda: "".join(rng.choice(SYLLABLES) for _ in range(3))  # noqa: E731
                sentences.append(
                    f"{name().title()} and {name()} taught me that I {rng.choice(VERBS)} the {rng.choice(NOUNS)} by the "
                    f"{rng.choice(PLACES)} because {rng.choice(REASONS)}, so I wrote it down."
                )
            paragraphs = [" ".join(sentences[i : i + 5]) for i in range(0, 40, 5)]
            (root / "sources" / theme / f"{theme}-{d}.md").write_text(f"# {theme.title()} {d}\n\n" + "\n\n".join(paragraphs) + "\n")


def run(workspace: Path, concurrency: int):
    from mlx_partner.config import load_settings
    from mlx_partner.generate.runner import run_generate
    from mlx_partner.workspace import Workspace

    ws = Workspace.at(workspace)
    settings = load_settings(ws.config_path)
    settings = settings.override("generate", concurrency=concurrency, pairs_total=320, pairs_per_round=8)
    with open(os.devnull, "w") as quiet:
        start = time.perf_counter()
        result = run_generate(ws, settings.generate, settings.sources, stream=quiet, echo=lambda s: None)
        return time.perf_counter() - start, result, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=1.0, help="Seconds the server takes per reply.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    import anthropic  # noqa: F401  (imported once, up front: ~1-5 s here, not part of the 40 requests)

    from mlx_partner.generate.plan import prepare
    from mlx_partner.workspace import Workspace, read_jsonl

    # The server runs in its own process: in this one it would compete for the GIL with the
    # client being measured.
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.latency)], stdout=subprocess.PIPE, text=True, cwd=REPO / "tests"
    )
    url = server.stdout.readline().strip()
    os.environ.update(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-ant-bench", MLX_PARTNER_GENERATE_MAX_RETRIES="2")
    print(f"fake server {url} (own process), latency {args.latency:.2f} s; python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.concurrency:
            root = Path(tmp) / f"ws-c{c}"
            write_workspace(root, seed=c)  # new documents: no cache left over from the last run
            ws = Workspace.at(root)
            from mlx_partner.config import load_settings

            settings = load_settings(ws.config_path).override("generate", pairs_total=320, pairs_per_round=8)
            est = prepare(ws, settings.generate, settings.sources).estimate
            seconds, result, _ = run(root, c)
            ledger = [r for r in read_jsonl(ws.ledger_path)[0] if "key" in r]
            n = len(ledger)
            ideal = n * args.latency / c
            print(f"\nconcurrency {c}: {n} requests in {seconds:.2f} s; ideal {ideal:.2f} s; ratio {seconds / ideal:.3f} (target <= 1.25)")
            per_batch: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for r in ledger:
                total = r["input_tokens"] + r["cache_creation_input_tokens"] + r["cache_read_input_tokens"]
                per_batch[r["batch"]][0] += r["cache_read_input_tokens"]
                per_batch[r["batch"]][1] += total
            shares = {b: read / total for b, (read, total) in per_batch.items()}
            overall = sum(v[0] for v in per_batch.values()) / sum(v[1] for v in per_batch.values())
            rounds = {b: sum(1 for r in ledger if r["batch"] == b) for b in per_batch}
            print(
                f"  cache-read share of input tokens: {overall:.1%} overall, per batch min {min(shares.values()):.1%} "
                f"max {max(shares.values()):.1%} ({min(rounds.values())}-{max(rounds.values())} rounds a batch; target >= 70%)"
            )
            actual_in = sum(r["input_tokens"] + r["cache_creation_input_tokens"] + r["cache_read_input_tokens"] for r in ledger)
            actual_out = sum(r["output_tokens"] for r in ledger)
            print(
                f"  dry-run estimate vs ledger: input {est.total_input} vs {actual_in} ({est.total_input / actual_in - 1:+.1%}), "
                f"output {est.output_tokens} vs {actual_out} ({est.output_tokens / actual_out - 1:+.1%}), "
                f"cost ${est.cost:.3f} vs ${result.cost:.3f}"
            )
            print(f"  pairs accepted {result.accepted}, rejected {sum(result.rejected.values())}")
    server.terminate()


if __name__ == "__main__":
    main()
