"""The `sources` stage: the author's documents -> themes -> thematic batches, and what was used.

    docs, skipped = load_documents(ws.sources_dir)
    batches = plan_batches(docs, token_budget=12000, seed=0)
    report = survey(ws, token_budget=12000)        # what `mlx-partner sources` prints

Modules, each importing only those above it in this list:

  decoding.py   bytes -> text (BOMs, UTF-16 without one, cp1252), newline normalisation
  documents.py  Document, Chunk, Skipped, Batch; reading files and front matter
  chunking.py   long documents -> chunks at paragraph, then sentence, breaks
  themes.py     automatic themes: TF-IDF, clustering, names
  batches.py    thematic batches within a per-request token budget
  records.py    data/sources.json: the document hashes the pairs were generated from
  profile.py    profile.md, refused while missing, empty or the unedited template
  survey.py     the `sources` report and its tables

The names below are the stage's public API; code and tests inside the project import them from
the module that defines them.
"""

from __future__ import annotations

from .batches import MIN_TOKEN_BUDGET, plan_batches
from .chunking import chunk_document
from .decoding import decode_text, normalise_newlines
from .documents import (
    Batch,
    Chunk,
    Document,
    Skipped,
    content_hash,
    estimate_tokens,
    load_document,
    load_documents,
    split_front_matter,
)
from .profile import load_profile
from .records import SOURCES_RECORD, document_status, recorded_source_hashes, write_source_hashes
from .survey import SourcesReport, format_report, survey
from .themes import assign_themes, slug

__all__ = [
    "MIN_TOKEN_BUDGET",
    "SOURCES_RECORD",
    "Batch",
    "Chunk",
    "Document",
    "Skipped",
    "SourcesReport",
    "assign_themes",
    "chunk_document",
    "content_hash",
    "decode_text",
    "document_status",
    "estimate_tokens",
    "format_report",
    "load_document",
    "load_documents",
    "load_profile",
    "normalise_newlines",
    "plan_batches",
    "recorded_source_hashes",
    "slug",
    "split_front_matter",
    "survey",
    "write_source_hashes",
]
