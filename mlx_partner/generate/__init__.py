"""The `generate` stage: thematic batches of the author's documents -> grounded Q&A pairs, via Claude.

    prep = prepare(ws, settings.generate, settings.sources)          # read-only: the plan, its cost
    result = run_generate(ws, settings.generate, settings.sources)   # takes the workspace lock
    print(format_summary(result))

Each batch is asked for pairs in rounds; later rounds list the questions already asked. Its
last round asks for boundary pairs: near-domain questions her documents do not answer, declined
in her voice; each is checked absent from the whole corpus (BM25 coverage below a threshold
calibrated on her answered questions, data/boundary.json). One more request per workspace writes
near-domain probe questions for `eval` to data/probes.jsonl, once. The modules, from the bottom
up (each imports only those above it in this list):

  requests.py  prices, round planning, the request for one round (instructions, documents, tool)
  boundary.py  the absence check: coverage against every document, the calibrated threshold
  replies.py   a reply -> pair records, checked (`parse_reply`, `review_pairs`)
  api.py       credentials, redaction, SDK errors -> one plain sentence
  ledger.py    data/ledger.jsonl and the pairs on disk -> what is left to do (`plan_generation`)
  local.py     local endpoints (llama-server, Ollama on loopback): no key, no price, the server's
               context window, one-machine defaults, the dry run's time estimate
  probes.py    the probe request, its review, data/probes.jsonl (`read_probes`: what eval reads)
  plan.py      `prepare`: settings check, what a run reads first, the dry-run estimate
  report.py    the dry-run plan, the progress line, the summary
  session.py   one run's state: each outcome -> ledger line, pairs, rejections, the next request;
               the two phases (answer rounds, then boundary rounds)
  probing.py   the probe request of a run: due?, its request, its reply -> data/probes.jsonl
  send.py      the worker pool and the Message Batches loop (the network)
  runner.py    `run_generate`: the lock, retirement, sending, dedupe, data/sources.json

Import a name from the module that defines it; the names below are the stage's public API.
"""

from .plan import Estimate, Prepared, check_settings, prepare
from .probes import PROBES_VERSION, probes_path, read_probes
from .report import GenerateResult, format_plan, format_summary
from .runner import retire, run_generate

__all__ = [
    "PROBES_VERSION",
    "Estimate",
    "GenerateResult",
    "Prepared",
    "check_settings",
    "format_plan",
    "format_summary",
    "prepare",
    "probes_path",
    "read_probes",
    "retire",
    "run_generate",
]
