"""The author's documents: the data classes, and reading files under sources/ into them.

    docs, skipped = load_documents(ws.sources_dir)

A document is a `.md`/`.txt` file (or `.pdf`/`.docx` with the `docs` extra) under `sources/`; its
id is its POSIX path there. Its theme is the first subfolder or a front-matter `theme:`; documents
with neither get an automatic theme later (`themes.py`). Bad files never stop the run: they come
back as `Skipped` with a reason. `Chunk` and `Batch` live here too, beside `Document`, so every
module of the stage (and generate) takes its types from one place.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # PyYAML: mlx-lm depends on it, so it is always installed

from ..errors import SourceError
from .decoding import decode_text, normalise_newlines

TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text"}
RICH_SUFFIXES = {".pdf", ".docx"}
# Files an editor or OS leaves behind: never documents, never worth a "skipped" line.
JUNK_NAMES = {"thumbs.db", "desktop.ini", "readme.md~"}
MAX_TEXT_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class Document:
    id: str  # path under sources/, POSIX style, e.g. "ethics/attention.md" (stable id)
    path: Path
    text: str  # the body (front matter removed), newlines normalised to \n; quotes are checked against this
    title: str
    theme: str | None  # explicit theme: front matter `theme:` or first subfolder; None = automatic
    date: str | None
    words: int
    tokens: int  # estimate
    sha256: str  # hash of the normalised text
    theme_source: str | None = None  # "front matter", "folder" or None (automatic)
    encoding: str = "utf-8"  # what the file was decoded from


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    start: int  # offsets into Document.text
    end: int
    text: str
    tokens: int


@dataclass(frozen=True)
class Skipped:
    path: str  # relative to sources/
    reason: str


@dataclass(frozen=True)
class Batch:
    id: str  # filesystem-safe, stable for the same theme and documents, e.g. "ethics-1"
    theme: str
    chunks: tuple[Chunk, ...]
    tokens: int
    sha256: str  # hash over its documents' hashes and chunk offsets
    auto: bool = False  # the theme was found by clustering, not named by the author

    @property
    def doc_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.doc_id for c in self.chunks))


_WIDE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def estimate_tokens(text: str) -> int:
    """About 4 characters a token for English prose, as the Anthropic docs suggest.

    Chinese, Japanese and Korean characters count about one token each.
    """
    if not text:
        return 0
    wide = len(_WIDE.findall(text))
    return max(1, round((len(text) - wide) / 4) + wide)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(text: str) -> str:
    """Hash of the text with whitespace collapsed: re-wrapping lines does not make it 'changed'."""
    return _sha256(" ".join(text.split()))


# --- front matter ------------------------------------------------------------------------------

_FRONT = re.compile(r"\A---[ \t]*\n(.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)


def _simple_front_matter(block: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and not line.startswith((" ", "\t", "-", "#")):
            out[key.strip().lower()] = value.strip().strip("'\"")
    return out


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """'---\\ntitle: X\\n---\\nbody' -> ({'title': 'X'}, 'body'). No closing fence: no front matter."""
    match = _FRONT.match(text)
    if not match:
        return {}, text
    block = match.group(1) or ""
    meta: Any
    try:
        meta = yaml.safe_load(block) if block.strip() else {}
    except Exception:  # any YAML error: fall back to plain "key: value" lines
        meta = None
    if not isinstance(meta, dict):
        meta = _simple_front_matter(block)
    fields = {}
    for key in ("title", "theme", "date"):
        value = meta.get(key)
        if value is None or isinstance(value, (list, dict)):
            continue
        value = value.isoformat() if hasattr(value, "isoformat") else str(value)
        if value.strip():
            fields[key] = value.strip()
    return fields, text[match.end() :]


_HEADING = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.M)


def _title(meta: dict[str, str], body: str, stem: str) -> str:
    if meta.get("title"):
        return meta["title"]
    match = _HEADING.search(body)
    return match.group(1).strip() if match else stem


# --- loading -----------------------------------------------------------------------------------


def _read_pdf(path: Path) -> str:
    from pypdf import PdfReader  # the optional `docs` extra: imported only when a PDF turns up

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about damaged files would flood stderr
    reader = PdfReader(str(path))
    if reader.is_encrypted and not reader.decrypt(""):
        raise ValueError("encrypted PDF; save an unencrypted copy")
    return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()


def _read_docx(path: Path) -> str:
    import docx  # python-docx, the optional `docs` extra: imported only when a .docx turns up

    paragraphs = []
    for p in docx.Document(str(path)).paragraphs:
        text = p.text.strip()
        if not text:
            continue
        style = (p.style.name if p.style is not None else "") or ""
        level = style.removeprefix("Heading ").strip()
        if style == "Title":
            text = "# " + text
        elif style.startswith("Heading ") and level.isdigit():
            text = "#" * min(int(level), 6) + " " + text
        paragraphs.append(text)
    return "\n\n".join(paragraphs)


def _rich_text(path: Path) -> str:
    """Text of a .pdf or .docx via the optional `docs` extra; ValueError = the skip reason."""
    try:
        return _read_pdf(path) if path.suffix.lower() == ".pdf" else _read_docx(path)
    except ImportError:
        raise ValueError("install mlx-partner[docs] to read .pdf/.docx (pip install 'mlx-partner[docs]')") from None
    except ValueError:
        raise
    except Exception as exc:  # the libraries raise many kinds of errors on damaged files
        raise ValueError(f"could not read this {path.suffix.lower()[1:].upper()} file ({type(exc).__name__}: {exc})") from None


def _walk(sources_dir: Path) -> list[Path]:
    """Every file under sources/, sorted, leaving out hidden files and folders."""
    out = []
    for path in sorted(sources_dir.rglob("*")):
        rel = path.relative_to(sources_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() or (path.is_symlink() and not path.is_dir()):
            out.append(path)
    return out


def _is_junk(path: Path) -> bool:
    name = path.name.lower()
    return name in JUNK_NAMES or name.startswith("~$") or name.endswith(("~", ".swp", ".tmp", ".bak"))


def load_document(path: Path, doc_id: str) -> Document:
    """One file -> Document. Raises ValueError whose message is the reason to skip it."""
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        if size == 0:
            raise ValueError("empty file")
        if suffix in TEXT_SUFFIXES:
            if size > MAX_TEXT_BYTES:
                raise ValueError(f"too large for a text document ({size / 1e6:.0f} MB); split it into smaller files")
            raw, encoding = decode_text(path.read_bytes())
        else:
            raw, encoding = _rich_text(path), suffix[1:]
    except OSError as exc:
        raise ValueError(f"unreadable ({exc.strerror or exc})") from None
    meta, body = split_front_matter(normalise_newlines(raw))
    text = body.strip("\n").rstrip()
    if not text.strip():
        if suffix in RICH_SUFFIXES:
            raise ValueError(f"no text could be extracted from this {suffix[1:].upper()} (a scan?)")
        raise ValueError("only front matter, no text" if meta else "empty file (only whitespace)")
    parts = Path(doc_id).parts
    if meta.get("theme"):
        theme, source = meta["theme"], "front matter"
    elif len(parts) > 1:
        theme, source = parts[0], "folder"
    else:
        theme, source = None, None
    return Document(
        id=doc_id,
        path=path,
        text=text,
        title=_title(meta, text, path.stem),
        theme=theme,
        date=meta.get("date"),
        words=len(text.split()),
        tokens=estimate_tokens(text),
        sha256=content_hash(text),
        theme_source=source,
        encoding=encoding,
    )


def load_documents(sources_dir: Path) -> tuple[list[Document], list[Skipped]]:
    """Every usable document under `sources_dir`, and every file left out with its reason.

    Raises SourceError when the folder is missing or holds no usable document.
    """
    sources_dir = Path(sources_dir)
    if not sources_dir.is_dir():
        raise SourceError(
            f"There is no sources folder at {sources_dir}; run `mlx-partner init` or create it, "
            "then add your writing to it as .md or .txt files."
        )
    docs: list[Document] = []
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}
    for path in _walk(sources_dir):
        doc_id = path.relative_to(sources_dir).as_posix()
        suffix = path.suffix.lower()
        if _is_junk(path):
            continue
        if suffix not in TEXT_SUFFIXES | RICH_SUFFIXES:
            kinds = ", ".join(sorted(TEXT_SUFFIXES | RICH_SUFFIXES))
            skipped.append(Skipped(doc_id, f"unsupported file type '{suffix or path.name}' (mlx-partner reads {kinds})"))
            continue
        try:
            doc = load_document(path, doc_id)
        except ValueError as exc:
            skipped.append(Skipped(doc_id, str(exc)))
            continue
        if doc.sha256 in seen:
            # The same text twice would only give the generator the same material twice.
            skipped.append(Skipped(doc_id, f"same text as {seen[doc.sha256]}"))
            continue
        seen[doc.sha256] = doc.id
        docs.append(doc)
    if not docs:
        detail = ""
        if skipped:
            shown = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
            more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            detail = f" ({len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped: {shown}{more})"
        raise SourceError(
            f"No usable document in {sources_dir}{detail}; add your writing there as UTF-8 .md or .txt "
            "files (a subfolder per theme if you like), then run `mlx-partner sources`."
        )
    return docs, skipped
