"""The `sources` command's report: every document with its theme and status, the batches, the skipped.

    report = survey(ws, token_budget=12000)
    print(format_report(report))        # or json.dumps(report.as_dict())

Status is against data/sources.json (`records.py`): new, changed or unchanged since the last
generate; documents recorded there but gone from sources/ are listed as removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..textfmt import table
from ..workspace import Workspace
from .batches import plan_batches
from .documents import Batch, Document, Skipped, load_documents
from .records import document_status, recorded_source_hashes


@dataclass(frozen=True)
class SourcesReport:
    documents: list[Document]
    skipped: list[Skipped]
    batches: list[Batch]
    status: dict[str, str]  # doc id -> new / changed / unchanged
    removed: list[str]  # recorded by generate, gone from sources/
    token_budget: int

    def theme_of(self) -> dict[str, str]:
        return {c.doc_id: b.theme for b in self.batches for c in b.chunks}

    def as_dict(self) -> dict[str, Any]:
        theme = self.theme_of()
        auto = {b.theme: b.auto for b in self.batches}
        return {
            "token_budget": self.token_budget,
            "documents": [
                {
                    "id": d.id,
                    "title": d.title,
                    "theme": theme.get(d.id),
                    "theme_source": d.theme_source or ("auto" if auto.get(theme.get(d.id)) else None),
                    "date": d.date,
                    "words": d.words,
                    "tokens": d.tokens,
                    "sha256": d.sha256,
                    "encoding": d.encoding,
                    "status": self.status[d.id],
                }
                for d in self.documents
            ],
            "batches": [
                {
                    "id": b.id,
                    "theme": b.theme,
                    "auto": b.auto,
                    "docs": list(b.doc_ids),
                    "chunks": [{"doc_id": c.doc_id, "start": c.start, "end": c.end, "tokens": c.tokens} for c in b.chunks],
                    "tokens": b.tokens,
                    "sha256": b.sha256,
                }
                for b in self.batches
            ],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "removed": self.removed,
        }


def survey(ws: Workspace, token_budget: int, seed: int = 0, themes: int = 0) -> SourcesReport:
    """Load, theme and batch the workspace's documents, with their status against the last generate."""
    docs, skipped = load_documents(ws.sources_dir)
    batches = plan_batches(docs, token_budget, seed, themes)
    recorded = recorded_source_hashes(ws)
    current = {d.id for d in docs}
    return SourcesReport(
        documents=docs,
        skipped=skipped,
        batches=batches,
        status=document_status(docs, recorded),
        removed=sorted(set(recorded) - current),
        token_budget=token_budget,
    )


def format_report(report: SourcesReport) -> str:
    """The three tables `mlx-partner sources` prints: documents, batches, skipped files."""
    theme = report.theme_of()
    auto = {b.theme for b in report.batches if b.auto}
    mark = lambda t: f"{t}*" if t in auto else t  # noqa: E731
    parts = [
        f"Documents ({len(report.documents)})",
        table(
            ["id", "theme", "words", "tokens", "status"],
            [[d.id, mark(theme[d.id]), d.words, d.tokens, report.status[d.id]] for d in report.documents],
        ),
    ]
    guessed = [d.id for d in report.documents if d.encoding == "cp1252"]
    if guessed:
        parts.append(f"Read as Windows-1252, not UTF-8 (check accents; re-save as UTF-8 to be sure): {', '.join(guessed)}")
    parts += [
        "",
        f"Batches ({len(report.batches)}, budget {report.token_budget} tokens each)",
        table(
            ["id", "theme", "docs", "tokens"],
            [[b.id, mark(b.theme), len(b.doc_ids), b.tokens] for b in report.batches],
        ),
    ]
    if auto:
        parts.append("* theme found from the documents' content (name it with a subfolder or `theme:` front matter)")
    parts += ["", f"Skipped ({len(report.skipped)})"]
    parts.append(table(["path", "reason"], [[s.path, s.reason] for s in report.skipped]) if report.skipped else "none")
    if report.removed:
        parts += ["", f"Gone since the last generate: {', '.join(report.removed)}"]
    return "\n".join(parts)
