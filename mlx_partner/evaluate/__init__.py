"""The `evaluate` stage: does the tuned partner beat its base model on the author's held-out pairs?

    result = run_eval(ws, settings, run="run-3", limit=20)   # writes eval/run-3/
    print(table(["metric", "base", result.run], summary_rows(result.metrics)))

Both the base model and base + the run's adapters are scored, deterministically (greedy decoding,
a seeded selection), on:

- loss and perplexity on the author's answers in the test (and valid) split, prompt masked exactly
  as in training (mlx-lm's ChatDataset offsets);
- generated answers against the reference answers: word-overlap F1 and ROUGE-L (pure Python LCS);
- style: character n-gram TF-IDF cosine similarity of an answer to the author's sources (numpy);
- declines (`mlx_partner.decline`): on near-domain probes (data/probes.jsonl: questions in her field
  her writing does not answer, never trained on), on the built-in far probes, and false declines on
  held-out questions she did answer;
- retrieval: how often the top passage for a held-out question is from the document its pair
  cites, and how many quoted spans in the answers occur in her writing;
- contradictions: held-out answers with a sentence that turns one of hers over (her cited essays'
  and the top passages'), negation flips only: a narrow lower bound, in code, no model.

Modules, each importing only those above it in this list:

  metrics.py   pure text metrics: words, word F1, ROUGE-L, the style model
  probes.py    the probes: far ones chosen from topics absent from the sources, near ones read
               from data/probes.jsonl
  examples.py  the held-out conversations, keyed by content, with their kind and cited documents,
               and a seeded selection of them
  grounded.py  retrieval accuracy, quoted spans checked against the sources, probe coverage
  contradiction.py  answers that contradict her writing: negation flips of her sentences (a lower bound)
  summary.py   means over one model's records; two runs compared on the pairs both share
  scoring.py   one model over the examples (mlx): answer loss, greedy answers; the record cache
  report.py    the CLI's summary rows, report.md and chart.png
  run.py       run_eval (takes the workspace lock), read_metrics, metrics.json's name and version

The names below are the stage's public API; code and tests inside the project import them from
the module that defines them.
"""

from __future__ import annotations

from .contradiction import Flip, SourceSentence, her_sentences, negation_flips, split_sentences
from .examples import (
    EvalExample,
    example_key,
    load_examples,
    plain_question,
    select_examples,
    split_meta,
)
from .grounded import probe_coverage, quote_record, quoted_spans, retrieval_accuracy
from .metrics import StyleModel, fit_style, lcs_length, rouge_l, word_f1, words
from .probes import PROBES_FILE, NearProbes, install_probes, probe_questions, read_near_probes
from .report import comparison_rows, render_report, retrieval_line, summary_rows, write_chart
from .run import (
    DEFAULT_LIMIT,
    DEFAULT_LOSS_LIMIT,
    DEFAULT_MAX_TOKENS,
    DEFAULT_PROBES,
    METRICS_FILE,
    METRICS_VERSION,
    EvalResult,
    read_metrics,
    run_eval,
)
from .scoring import answer_loss, answer_losses, score_model
from .summary import compare, summarize

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_LOSS_LIMIT",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_PROBES",
    "METRICS_FILE",
    "METRICS_VERSION",
    "PROBES_FILE",
    "EvalExample",
    "EvalResult",
    "Flip",
    "NearProbes",
    "SourceSentence",
    "StyleModel",
    "answer_loss",
    "answer_losses",
    "compare",
    "comparison_rows",
    "example_key",
    "fit_style",
    "her_sentences",
    "install_probes",
    "lcs_length",
    "load_examples",
    "negation_flips",
    "plain_question",
    "probe_coverage",
    "probe_questions",
    "quote_record",
    "quoted_spans",
    "read_metrics",
    "read_near_probes",
    "render_report",
    "retrieval_accuracy",
    "retrieval_line",
    "rouge_l",
    "run_eval",
    "score_model",
    "select_examples",
    "split_sentences",
    "split_meta",
    "summarize",
    "summary_rows",
    "word_f1",
    "words",
    "write_chart",
]
