"""The author's documents: loading, chunking, themes and thematic batches.

    docs, skipped = load_documents(ws.sources_dir)
    batches = plan_batches(docs, token_budget=12000, seed=0)

A document is a `.md`/`.txt` file (or `.pdf`/`.docx` with the `docs` extra) under `sources/`; its
id is its POSIX path there. Its theme is the first subfolder, or a front-matter `theme:`; documents
with neither are grouped by content (TF-IDF + spherical k-means, deterministic under a seed).
Each theme becomes one batch, or several when it exceeds the per-request token budget; documents
longer than the budget are cut at paragraph (then sentence) boundaries into chunks whose offsets
point into `Document.text`, so quotes can be checked against the original text later.
Bad files never stop the run: they come back as `Skipped` with a reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SourceError
from .themes import assign_themes, slug

TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text"}
RICH_SUFFIXES = {".pdf", ".docx"}
# Files an editor or OS leaves behind: never documents, never worth a "skipped" line.
JUNK_NAMES = {"thumbs.db", "desktop.ini", "readme.md~"}
MAX_TEXT_BYTES = 20 * 1024 * 1024
MIN_TOKEN_BUDGET = 200


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


# --- decoding ----------------------------------------------------------------------------------

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# Characters cp1252 produces for real Western text besides ASCII: letters, quotes, dashes, symbols.
_CP1252_TEXT = set("\u00a0’‘“”–—…•€£¥©®°±·§¶«»¿¡×÷½¼¾ªº¹²³ˆ˜‰‹›™µ")


def _looks_like_text(text: str) -> bool:
    """Mostly letters, digits, punctuation and whitespace: no stray control characters."""
    if not text:
        return False
    bad = sum(1 for ch in text if unicodedata.category(ch) in ("Cc", "Co", "Cn") and ch not in "\n\r\t\f")
    return bad <= len(text) * 0.001


def _cp1252_plausible(text: str) -> bool:
    """Western text read as cp1252: ASCII words with a few accented letters and typographic marks.

    Cyrillic or Korean bytes also decode as cp1252, but into words made wholly of accented
    letters; requiring most letters to be ASCII tells them apart.
    """
    if not _looks_like_text(text):
        return False
    non_ascii = [ch for ch in text if ord(ch) > 127]
    letters = [ch for ch in text if ch.isalpha()]
    accented = sum(1 for ch in non_ascii if ch.isalpha())
    marks = sum(1 for ch in non_ascii if ch in _CP1252_TEXT)
    return accented + marks >= 0.9 * len(non_ascii) and accented <= 0.3 * max(1, len(letters))


_OTHER_ENCODINGS = (
    ("shift_jis", "Shift-JIS (Japanese)", ("HIRAGANA", "KATAKANA", "CJK")),
    ("euc_kr", "EUC-KR (Korean)", ("HANGUL",)),
    ("gb18030", "GB18030 (Chinese)", ("CJK",)),
    ("big5", "Big5 (Chinese)", ("CJK",)),
    ("cp1251", "Windows-1251 (Cyrillic)", ("CYRILLIC",)),
    ("koi8_r", "KOI8-R (Cyrillic)", ("CYRILLIC",)),
    ("cp1253", "Windows-1253 (Greek)", ("GREEK",)),
)


def _guess_encoding_name(data: bytes) -> str:
    """A human name for what undecodable bytes probably are (for the skip message only).

    The codec whose decoding puts most non-ASCII characters into its own script wins.
    """
    best, best_score = "an unknown encoding", 0.8
    for codec, name, scripts in _OTHER_ENCODINGS:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        non_ascii = [ch for ch in text if ord(ch) > 127]
        if not non_ascii or not _looks_like_text(text):
            continue
        common = ("IDEOGRAPHIC", "FULLWIDTH", "HALFWIDTH")  # CJK punctuation
        score = sum(1 for ch in non_ascii if unicodedata.name(ch, "").startswith(scripts + common)) / len(non_ascii)
        if score > best_score:
            best, best_score = name, score
    return best


def decode_text(data: bytes) -> tuple[str, str]:
    """Bytes -> (text, encoding). Raises ValueError with the skip reason when not readable text."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec), codec.removesuffix("-sig")
            except UnicodeDecodeError:
                raise ValueError(f"starts like {codec} but does not decode; re-save it as UTF-8") from None
    if b"\x00" in data:
        # UTF-16 without a BOM puts a NUL beside every ASCII character; anything else is binary.
        for codec, offset in (("utf-16-le", 1), ("utf-16-be", 0)):
            if len(data) % 2 == 0 and data[offset::2].count(0) > 0.3 * len(data) / 2:
                try:
                    text = data.decode(codec)
                except UnicodeDecodeError:
                    continue
                if _looks_like_text(text):
                    return text, codec
        raise ValueError("binary file (contains NUL bytes), not text")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = ""
    if text and _cp1252_plausible(text):
        return text, "cp1252"
    raise ValueError(f"not UTF-8 (looks like {_guess_encoding_name(data)}); re-save it as UTF-8")


def normalise_newlines(text: str) -> str:
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.lstrip("\ufeff")


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
        import yaml  # mlx-lm depends on PyYAML, so it is always there

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
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about damaged files would flood stderr
    reader = PdfReader(str(path))
    if reader.is_encrypted and not reader.decrypt(""):
        raise ValueError("encrypted PDF; save an unencrypted copy")
    return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()


def _read_docx(path: Path) -> str:
    import docx

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


# --- chunking ----------------------------------------------------------------------------------

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")


def _spans(text: str, start: int, end: int, breaks: re.Pattern[str]) -> list[tuple[int, int]]:
    """Split text[start:end] at `breaks`, returning (start, end) spans without the separators."""
    out, pos = [], start
    for match in breaks.finditer(text, start, end):
        piece_end = match.start() if breaks is _PARAGRAPH_BREAK else match.start() + len(match.group(0).rstrip())
        if piece_end > pos:
            out.append((pos, piece_end))
        pos = match.end()
    if pos < end:
        out.append((pos, end))
    trimmed = []
    for s, e in out:  # no chunk starts or ends in whitespace
        piece = text[s:e]
        if piece.strip():
            trimmed.append((s + len(piece) - len(piece.lstrip()), e - len(piece) + len(piece.rstrip())))
    return trimmed


def _word_spans(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Last resort for a sentence longer than the budget: cut between words, or hard at max_chars."""
    out = []
    for match in re.finditer(r"\S+", text[start:end]):
        s, e = start + match.start(), start + match.end()
        while e - s > max_chars:
            out.append((s, s + max_chars))
            s += max_chars
        out.append((s, e))
    return out


def _greedy(text: str, spans: list[tuple[int, int]], cap: int) -> list[tuple[int, int]]:
    pieces: list[tuple[int, int]] = []
    for s, e in spans:
        if pieces and estimate_tokens(text[pieces[-1][0] : e]) <= cap:
            pieces[-1] = (pieces[-1][0], e)
        else:
            pieces.append((s, e))
    return pieces


def _pack(text: str, spans: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """Join consecutive spans into as few pieces of at most `limit` tokens as possible, as even
    as possible (a 1.2x-budget text gives two pieces of ~0.6x, not 1.0x + 0.2x)."""
    fewest = len(_greedy(text, spans, limit))
    lo = max((estimate_tokens(text[s:e]) for s, e in spans), default=0)
    hi = limit
    while lo < hi:  # the smallest cap that still needs no more pieces
        mid = (lo + hi) // 2
        if len(_greedy(text, spans, mid)) <= fewest:
            hi = mid
        else:
            lo = mid + 1
    return _greedy(text, spans, hi)


def chunk_document(doc: Document, max_tokens: int) -> list[Chunk]:
    """The document as chunks of at most `max_tokens`, cut at paragraph, then sentence, boundaries.

    Chunks are balanced (a 1.2x-budget document gives two chunks of ~0.6x, not 1.0x + 0.2x) and
    `doc.text[c.start:c.end] == c.text` always holds.
    """
    text = doc.text
    if doc.tokens <= max_tokens:
        return [Chunk(doc.id, 0, len(text), text, doc.tokens)]
    max_chars = max(4, max_tokens * 4)
    units: list[tuple[int, int]] = []
    for ps, pe in _spans(text, 0, len(text), _PARAGRAPH_BREAK):
        if estimate_tokens(text[ps:pe]) <= max_tokens:
            units.append((ps, pe))
            continue
        for ss, se in _spans(text, ps, pe, _SENTENCE_END):
            if estimate_tokens(text[ss:se]) <= max_tokens:
                units.append((ss, se))
            else:
                units.extend(_pack(text, _word_spans(text, ss, se, max_chars), max_tokens))
    return [Chunk(doc.id, s, e, text[s:e], estimate_tokens(text[s:e])) for s, e in _pack(text, units, max_tokens)]


# --- batches -----------------------------------------------------------------------------------


def _batch_hash(chunks: list[Chunk], hashes: dict[str, str]) -> str:
    return _sha256(json.dumps([[c.doc_id, hashes[c.doc_id], c.start, c.end] for c in chunks]))


def _bins(units: list[list[Chunk]], budget: int) -> list[list[list[Chunk]]]:
    """Spread units (a whole document, or one chunk of a long one) over as few batches as fit,
    balanced: largest first into the emptiest batch with room (worst-fit decreasing)."""
    sizes = [sum(c.tokens for c in u) for u in units]
    k = max(1, math.ceil(sum(sizes) / budget))
    order = sorted(range(len(units)), key=lambda i: (-sizes[i], units[i][0].doc_id, units[i][0].start))
    while True:
        loads, bins = [0] * k, [[] for _ in range(k)]
        for i in order:
            j = min(range(k), key=lambda b: (loads[b], b))
            if loads[j] + sizes[i] > budget:
                break
            loads[j] += sizes[i]
            bins[j].append(i)
        else:
            break
        k += 1
    ordered = [sorted(b) for b in bins if b]
    ordered.sort(key=lambda b: b[0])
    return [[units[i] for i in b] for b in ordered]


def plan_batches(documents: list[Document], token_budget: int, seed: int = 0, themes: int = 0) -> list[Batch]:
    """Thematic batches: one per theme, or several when a theme exceeds `token_budget` tokens."""
    if token_budget < MIN_TOKEN_BUDGET:
        raise SourceError(f"The token budget is {token_budget}; set sources.token_budget to at least {MIN_TOKEN_BUDGET} (12000 suits most models).")
    if not documents:
        return []
    assigned = assign_themes(documents, token_budget, seed, themes)
    # "Bread" in front matter and a bread/ folder are one theme, under its most used spelling.
    spellings: dict[str, Counter[str]] = {}
    for theme, _ in assigned.values():
        spellings.setdefault(slug(theme), Counter())[theme] += 1
    canonical = {key: min(c, key=lambda t: (-c[t], t)) for key, c in spellings.items()}
    assigned = {i: (canonical[slug(theme)], auto) for i, (theme, auto) in assigned.items()}
    hashes = {d.id: d.sha256 for d in documents}
    by_theme: dict[str, list[Document]] = {}
    for d in sorted(documents, key=lambda d: d.id):
        by_theme.setdefault(assigned[d.id][0], []).append(d)
    batches: list[Batch] = []
    used: set[str] = set()
    for theme in sorted(by_theme, key=lambda t: (slug(t), t)):
        members = by_theme[theme]
        auto = assigned[members[0].id][1]
        units: list[list[Chunk]] = []
        for d in members:
            chunks = chunk_document(d, token_budget)
            units.extend([chunks] if len(chunks) == 1 else [[c] for c in chunks])
        groups = _bins(units, token_budget)
        base = name = slug(theme)
        n = 2
        while name in used or f"{name}-1" in used:  # themes that slug alike ("Ethics", "ethics") stay apart
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        for i, group in enumerate(groups, start=1):
            chunks = [c for unit in group for c in unit]
            used.add(f"{name}-{i}")
            batches.append(
                Batch(
                    id=name if len(groups) == 1 else f"{name}-{i}",
                    theme=theme,
                    chunks=tuple(chunks),
                    tokens=sum(c.tokens for c in chunks),
                    sha256=_batch_hash(chunks, hashes),
                    auto=auto,
                )
            )
    return batches


# --- what generate recorded, and the profile ---------------------------------------------------

SOURCES_RECORD = "sources.json"  # under data/: {doc_id: sha256} of the documents generate used


def recorded_source_hashes(ws) -> dict[str, str]:
    """The {doc_id: sha256} map `generate` wrote to data/sources.json ({} before any run)."""
    path = Path(ws.data_dir) / SOURCES_RECORD
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"Could not read {path} ({exc}); delete it and the next `generate` rewrites it.") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise SourceError(f"{path} should map document ids to hashes; delete it and the next `generate` rewrites it.")
    return data


def write_source_hashes(ws, documents: list[Document]) -> None:
    """Record the documents a generate run used, in the form `recorded_source_hashes` reads."""
    from .workspace import atomic_write_json

    atomic_write_json(Path(ws.data_dir) / SOURCES_RECORD, {d.id: d.sha256 for d in sorted(documents, key=lambda d: d.id)})


def document_status(documents: list[Document], recorded_hashes: dict[str, str]) -> dict[str, str]:
    """doc id -> 'new' (never generated from), 'changed' (text differs) or 'unchanged'."""
    out = {}
    for d in documents:
        old = recorded_hashes.get(d.id)
        out[d.id] = "new" if old is None else ("unchanged" if old == d.sha256 else "changed")
    return out


def _squash(text: str) -> str:
    return " ".join(text.split())


def load_profile(ws) -> str:
    """profile.md as text (newlines normalised). SourceError when missing, empty or still the template."""
    from .init import PROFILE_TEMPLATE

    path = Path(ws.profile_path)
    if not path.exists():
        raise SourceError(f"There is no author profile at {path}; run `mlx-partner init` or write profile.md describing your voice and convictions.")
    try:
        text, _ = decode_text(path.read_bytes())
    except OSError as exc:
        raise SourceError(f"Could not read {path} ({exc.strerror or exc}).") from None
    except ValueError as exc:
        raise SourceError(f"{path} is {exc}.") from None
    text = normalise_newlines(text).strip()
    if not text:
        raise SourceError(f"{path} is empty; describe your voice, style and convictions in it (a page is plenty).")
    template_lines = {_squash(line) for line in PROFILE_TEMPLATE.splitlines() if line.strip()}
    own = [line for line in text.splitlines() if line.strip() and _squash(line) not in template_lines and not line.lstrip().startswith("#")]
    if not own:
        raise SourceError(f"{path} is still the unedited template; replace its prompts with your own voice, style and convictions.")
    return text


# --- the `sources` report ----------------------------------------------------------------------


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


def survey(ws, token_budget: int, seed: int = 0, themes: int = 0) -> SourcesReport:
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


def _table(headers: list[str], rows: list[list[Any]], right: set[int] = frozenset()) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def format_report(report: SourcesReport) -> str:
    """The three tables `mlx-partner sources` prints: documents, batches, skipped files."""
    theme = report.theme_of()
    auto = {b.theme for b in report.batches if b.auto}
    mark = lambda t: f"{t}*" if t in auto else t  # noqa: E731
    parts = [
        f"Documents ({len(report.documents)})",
        _table(
            ["id", "theme", "words", "tokens", "status"],
            [[d.id, mark(theme[d.id]), d.words, d.tokens, report.status[d.id]] for d in report.documents],
            right={2, 3},
        ),
    ]
    guessed = [d.id for d in report.documents if d.encoding == "cp1252"]
    if guessed:
        parts.append(f"Read as Windows-1252, not UTF-8 (check accents; re-save as UTF-8 to be sure): {', '.join(guessed)}")
    parts += [
        "",
        f"Batches ({len(report.batches)}, budget {report.token_budget} tokens each)",
        _table(
            ["id", "theme", "docs", "tokens"],
            [[b.id, mark(b.theme), len(b.doc_ids), b.tokens] for b in report.batches],
            right={2, 3},
        ),
    ]
    if auto:
        parts.append("* theme found from the documents' content (name it with a subfolder or `theme:` front matter)")
    parts += ["", f"Skipped ({len(report.skipped)})"]
    parts.append(_table(["path", "reason"], [[s.path, s.reason] for s in report.skipped]) if report.skipped else "none")
    if report.removed:
        parts += ["", f"Gone since the last generate: {', '.join(report.removed)}"]
    return "\n".join(parts)
