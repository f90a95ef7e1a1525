"""Documents, chunks, themes and batches: table tests of the library and CliRunner tests of `sources`."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.errors import SourceError
from mlx_partner.sources import documents as src
from mlx_partner.sources.batches import plan_batches
from mlx_partner.sources.chunking import chunk_document
from mlx_partner.sources.documents import Document, content_hash, estimate_tokens, load_documents
from mlx_partner.sources.profile import load_profile
from mlx_partner.sources.records import document_status, recorded_source_hashes, write_source_hashes
from mlx_partner.templates import PROFILE_TEMPLATE
from mlx_partner.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_SOURCES = REPO / "sources"
BODY = "# A Title\n\nFirst paragraph about bread.\n\nSecond paragraph about ovens.\n"


def write(root: Path, rel: str, data: bytes | str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def make_doc(doc_id: str, text: str, theme: str | None = None) -> Document:
    return Document(
        id=doc_id, path=Path(doc_id), text=text, title=doc_id, theme=theme, date=None,
        words=len(text.split()), tokens=estimate_tokens(text), sha256=content_hash(text),
    )


def example_documents() -> list[Path]:
    files = sorted(EXAMPLE_SOURCES.glob("*/*.md"))
    if len(files) < 8:
        pytest.skip("the example sources/ are not in this checkout")
    return files


# --- loading -----------------------------------------------------------------------------------

LOADED = [
    # (name, file bytes, expected Document fields)
    ("plain.md", BODY, {"title": "A Title", "theme": None, "encoding": "utf-8", "words": 11}),
    ("bom.md", b"\xef\xbb\xbf" + BODY.encode(), {"title": "A Title", "encoding": "utf-8"}),
    ("crlf.txt", BODY.replace("\n", "\r\n"), {"title": "A Title"}),
    ("old-mac.txt", BODY.replace("\n", "\r"), {"title": "A Title"}),
    ("stem-title.txt", "No heading here, just prose.\n", {"title": "stem-title"}),
    ("fm.md", "---\ntitle: From Front Matter\ntheme: Kitchen\ndate: 2024-03-01\n---\n" + BODY,
     {"title": "From Front Matter", "theme": "Kitchen", "date": "2024-03-01", "theme_source": "front matter"}),
    ("fm-quoted.md", "---\ntitle: 'Quoted: with colon'\ntags: [a, b]\n---\nBody.\n", {"title": "Quoted: with colon", "text": "Body."}),
    ("fm-bad-yaml.md", "---\ntitle: Broken: yaml: here\ntheme: walls\n  - stray\n---\nBody text.\n",
     {"title": "Broken: yaml: here", "theme": "walls", "text": "Body text."}),
    ("fm-unclosed.md", "---\ntitle: never closed\n\nBody.\n", {"text": "---\ntitle: never closed\n\nBody."}),
    ("utf16.txt", "\ufeffHello from UTF-16, with é.".encode("utf-16-le"), {"encoding": "utf-16-le", "text": "Hello from UTF-16, with é."}),
    ("utf16-nobom.txt", "Hello without a BOM.".encode("utf-16-le"), {"encoding": "utf-16-le", "text": "Hello without a BOM."}),
    ("latin1.txt", "Café crème, naïve façade; déjà vu.".encode("latin-1"), {"encoding": "cp1252", "text": "Café crème, naïve façade; déjà vu."}),
    ("cp1252.txt", "“Smart quotes” – and a dash… indeed.".encode("cp1252"), {"encoding": "cp1252", "text": "“Smart quotes” – and a dash… indeed."}),
    ("nfc.md", "cafe\u0301 again", {"text": "caf\u00e9 again"}),
]


@pytest.mark.parametrize(("name", "data", "expected"), LOADED, ids=[row[0] for row in LOADED])
def test_load_documents_reads(tmp_path, name, data, expected):
    write(tmp_path, name, data)
    docs, skipped = load_documents(tmp_path)
    assert skipped == []
    (doc,) = docs
    assert doc.id == name
    assert "\r" not in doc.text and not doc.text.startswith("\ufeff")
    for field, value in expected.items():
        assert getattr(doc, field) == value, field
    assert doc.tokens == estimate_tokens(doc.text)
    assert doc.sha256 == content_hash(doc.text)


SKIPPED = [
    ("empty.md", b"", "empty file"),
    ("blank.txt", b"  \n\n\t\n", "empty file (only whitespace)"),
    ("only-fm.md", b"---\ntitle: x\n---\n\n", "only front matter, no text"),
    ("binary.txt", b"PK\x03\x04\x00\x00binary\x00\xff\xfe\x01", "binary file (contains NUL bytes)"),
    ("japanese.txt", "こんにちは、世界。これは日本語の文章です。".encode("shift_jis"), "not UTF-8 (looks like Shift-JIS (Japanese)); re-save it as UTF-8"),
    ("russian.txt", "Привет, мир. Это текст на русском языке.".encode("cp1251"), "not UTF-8 (looks like Windows-1251 (Cyrillic)); re-save it as UTF-8"),
    ("noise.txt", bytes(range(128, 256)) * 3, "not UTF-8 (looks like an unknown encoding); re-save it as UTF-8"),
    ("photo.jpg", b"\xff\xd8\xff\xe0", "unsupported file type '.jpg'"),
    ("Makefile", b"all:\n", "unsupported file type 'Makefile'"),
]


@pytest.mark.parametrize(("name", "data", "reason"), SKIPPED, ids=[row[0] for row in SKIPPED])
def test_bad_files_are_skipped_with_a_reason(tmp_path, name, data, reason):
    write(tmp_path, "good.md", BODY)
    write(tmp_path, name, data)
    docs, skipped = load_documents(tmp_path)
    assert [d.id for d in docs] == ["good.md"]
    assert [s.path for s in skipped] == [name]
    assert skipped[0].reason.startswith(reason)


def test_pdf_and_docx_without_the_docs_extra_say_what_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_docs(name, *args, **kwargs):
        if name in ("pypdf", "docx"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_docs)
    write(tmp_path, "good.md", BODY)
    write(tmp_path, "paper.pdf", b"%PDF-1.4 ...")
    write(tmp_path, "essay.docx", b"PK\x03\x04 ...")
    _, skipped = load_documents(tmp_path)
    assert {s.path for s in skipped} == {"paper.pdf", "essay.docx"}
    assert all("install mlx-partner[docs]" in s.reason for s in skipped)


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF showing `text` in Helvetica, written by hand."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


def test_pdf_text_is_read_and_damaged_or_empty_pdfs_skipped(tmp_path):
    pytest.importorskip("pypdf")
    write(tmp_path, "essays/paper.pdf", minimal_pdf("Streets are arguments made of asphalt."))
    write(tmp_path, "broken.pdf", b"%PDF-1.4 not really")
    write(tmp_path, "scan.pdf", minimal_pdf(""))
    docs, skipped = load_documents(tmp_path)
    assert [(d.id, d.theme, d.encoding, d.text) for d in docs] == [
        ("essays/paper.pdf", "essays", "pdf", "Streets are arguments made of asphalt.")
    ]
    reasons = {s.path: s.reason for s in skipped}
    assert reasons["broken.pdf"].startswith("could not read this PDF file")
    assert reasons["scan.pdf"].startswith("no text could be extracted")


def test_docx_paragraphs_and_headings_are_read(tmp_path):
    docx = pytest.importorskip("docx")
    document = docx.Document()
    document.add_heading("Mending Kettles", 0)
    document.add_paragraph("A kettle lid is a small machine.")
    document.add_paragraph("")
    document.add_heading("Rivets", 1)
    document.add_paragraph("Rivets hold when glue gives up.")
    document.save(str(tmp_path / "kettle.docx"))
    (doc,), _ = load_documents(tmp_path)
    assert doc.title == "Mending Kettles"
    assert doc.text == "# Mending Kettles\n\nA kettle lid is a small machine.\n\n# Rivets\n\nRivets hold when glue gives up."


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    write(tmp_path, "good.md", BODY)
    locked = write(tmp_path, "locked.md", BODY + "more")
    real = Path.read_bytes

    def read_bytes(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    _, skipped = load_documents(tmp_path)
    assert [(s.path, s.reason) for s in skipped] == [("locked.md", "unreadable (Permission denied)")]


# Root reads any file through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH; dropped from the effective set
# (allowed without privilege), root meets file permissions like anyone else. Linux capget/capset.
_AS_ONE_WITHOUT_OVERRIDE = """
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
header, data = Header(0x20080522, 0), (Data * 2)()
if libc.capget(ctypes.byref(header), data) != 0:
    sys.exit("capget failed")
data[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
if libc.capset(ctypes.byref(header), data) != 0:
    sys.exit("capset failed")
from pathlib import Path
from mlx_partner.sources.documents import load_documents
_, skipped = load_documents(Path(sys.argv[1]))
print(json.dumps([[s.path, s.reason] for s in skipped]))
"""


def _load_skipped_as_unprivileged(root: Path) -> list[list[str]]:
    """load_documents' skipped list, read the way a normal user's process reads: as this user, or,
    as root, in a child without the capabilities that let root read any file."""
    if os.geteuid() != 0:
        return [[s.path, s.reason] for s in load_documents(root)[1]]
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _AS_ONE_WITHOUT_OVERRIDE, str(root)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(os.name != "posix" or (os.geteuid() == 0 and not sys.platform.startswith("linux")),
                    reason="POSIX file permissions (as root: Linux capabilities)")
def test_unreadable_file_by_permissions(tmp_path):
    write(tmp_path, "good.md", BODY)
    locked = write(tmp_path, "locked.md", BODY + "more")
    locked.chmod(0)
    try:
        skipped = _load_skipped_as_unprivileged(tmp_path)
    finally:
        locked.chmod(0o644)
    assert skipped == [["locked.md", "unreadable (Permission denied)"]]


def test_ids_themes_hidden_files_and_duplicates(tmp_path):
    write(tmp_path, "top.md", "Top level prose.")
    write(tmp_path, "Ethics/deep/nested.md", "Nested prose about duty.")
    write(tmp_path, "Ethics/moved.md", "---\ntheme: Craft\n---\nMoved by front matter.")
    write(tmp_path, "Ethics/copy.md", "Top   level\nprose.")  # same text, other wrapping
    write(tmp_path, ".hidden.md", "secret")
    write(tmp_path, ".git/config.md", "not a document")
    write(tmp_path, "Ethics/.DS_Store", b"\x00\x01")
    write(tmp_path, "~$lock.docx", b"x")
    write(tmp_path, "notes.md~", "backup")
    docs, skipped = load_documents(tmp_path)
    by_id = {d.id: d for d in docs}
    # Files are read in sorted path order, so the first of two equal texts is the one kept.
    assert sorted(by_id) == ["Ethics/copy.md", "Ethics/deep/nested.md", "Ethics/moved.md"]
    assert by_id["Ethics/deep/nested.md"].theme == "Ethics"
    assert by_id["Ethics/deep/nested.md"].theme_source == "folder"
    assert by_id["Ethics/moved.md"].theme == "Craft"
    assert by_id["Ethics/moved.md"].theme_source == "front matter"
    assert [(s.path, s.reason) for s in skipped] == [("top.md", "same text as Ethics/copy.md")]


def test_top_level_documents_have_no_theme(tmp_path):
    write(tmp_path, "top.md", "Top level prose.")
    (doc,), _ = load_documents(tmp_path)
    assert (doc.theme, doc.theme_source) == (None, None)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("a", 1), ("abcd" * 100, 100), ("日本語の文章" * 10, 60), ("Hello 世界", 4)],
)
def test_estimate_tokens(text, tokens):
    assert estimate_tokens(text) == tokens


def test_content_hash_ignores_rewrapping_but_not_words():
    assert content_hash("one two\nthree") == content_hash("one  two three\n")
    assert content_hash("one two three") != content_hash("one two four")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "There is no sources folder"),
        (lambda root: (root / "sources").mkdir(), "No usable document"),
        (lambda root: write(root, "sources/empty.md", b""), "1 file skipped: empty.md: empty file"),
        (lambda root: write(root, "sources/a.pdf.bak", b"x"), "No usable document"),
    ],
)
def test_no_usable_document_says_what_to_add(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(SourceError) as info:
        load_documents(tmp_path / "sources")
    assert message in str(info.value)
    assert ".md or .txt" in str(info.value)


# --- chunking ----------------------------------------------------------------------------------


def paragraphs(*sizes: int) -> str:
    """Paragraphs of about `size` tokens each, made of short sentences."""
    out = []
    for n, size in enumerate(sizes):
        sentence = f"Sentence {n} says a plain thing. "
        out.append((sentence * max(1, size * 4 // len(sentence))).strip())
    return "\n\n".join(out)


CHUNK_CASES = [
    # (text, budget, expected number of chunks or None for "just the invariants")
    (paragraphs(100), 500, 1),
    (paragraphs(300, 300, 300), 500, 3),
    (paragraphs(300, 300, 300), 700, 2),
    (paragraphs(100, 100, 100, 100, 100, 100), 250, 3),
    (paragraphs(1500), 400, None),  # one paragraph, cut at sentences
    (paragraphs(50, 1200, 50), 300, None),
    ("word " * 3000, 200, None),  # no sentence ends at all
    ("x" * 5000, 200, None),  # one giant token
    ("Trailing spaces.   \n  \n   Indented next.  \n\n" * 200, 150, None),
    ("First para.\n\n\n   \n\nSecond para, after blank lines with spaces.\n\n" + paragraphs(600), 300, None),
]


@pytest.mark.parametrize(("text", "budget", "count"), CHUNK_CASES)
def test_chunk_offsets_point_into_the_document(text, budget, count):
    doc = make_doc("d.md", text.strip())
    chunks = chunk_document(doc, budget)
    if count is not None:
        assert len(chunks) == count
    previous_end = 0
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text
        assert c.tokens == estimate_tokens(c.text) <= budget
        assert c.start >= previous_end and c.text == c.text.strip()
        previous_end = c.end
    # Nothing but whitespace is lost between chunks.
    covered = "".join(c.text for c in chunks)
    assert "".join(covered.split()) == "".join(doc.text.split())


def test_chunks_break_at_paragraphs_and_balance():
    text = paragraphs(*[100] * 12)  # ~1200 tokens, budget 1000: two chunks of ~600, not 1000 + 200
    chunks = chunk_document(make_doc("d.md", text), 1000)
    assert len(chunks) == 2
    assert all(400 <= c.tokens <= 800 for c in chunks)
    for c in chunks:
        assert c.start == 0 or text[c.start - 2 : c.start] == "\n\n"
        assert c.end == len(text) or text[c.end : c.end + 2] == "\n\n"


# --- themes and batches ------------------------------------------------------------------------


def test_example_workspace_has_four_folder_themes():
    example_documents()
    docs, skipped = load_documents(EXAMPLE_SOURCES)
    assert skipped == []
    batches = plan_batches(docs, token_budget=12000)
    assert len({b.theme for b in batches}) == 4
    assert {b.theme for b in batches} == {p.name for p in EXAMPLE_SOURCES.iterdir() if p.is_dir()}
    assert sorted(c.doc_id for b in batches for c in b.chunks) == sorted(d.id for d in docs)
    assert not any(b.auto for b in batches)


def best_matching_agreement(truth: list[str], found: list[str]) -> int:
    """Documents placed as in `truth` under the best one-to-one mapping of found themes to true ones."""
    true_labels, found_labels = sorted(set(truth)), sorted(set(found))
    best = 0
    for perm in itertools.permutations(true_labels, min(len(true_labels), len(found_labels))):
        mapping = dict(zip(found_labels, perm, strict=False))
        best = max(best, sum(mapping.get(f) == t for t, f in zip(truth, found, strict=True)))
    return best


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_flattened_example_is_regrouped_by_content(tmp_path, seed):
    files = example_documents()
    flat = tmp_path / "flat"
    flat.mkdir()
    truth = {}
    for i, path in enumerate(files):
        name = f"doc{i:02d}.md"  # no folder, no front matter, no hint in the name
        body = src.split_front_matter(path.read_text(encoding="utf-8"))[1]
        (flat / name).write_text(body, encoding="utf-8")
        truth[name] = path.parent.name
    docs, _ = load_documents(flat)
    assert all(d.theme is None for d in docs)
    batches = plan_batches(docs, token_budget=12000, seed=seed)
    found = {c.doc_id: b.theme for b in batches for c in b.chunks}
    assert all(b.auto for b in batches)
    ids = sorted(truth)
    agreement = best_matching_agreement([truth[i] for i in ids], [found[i] for i in ids])
    assert agreement >= 0.75 * len(ids), (agreement, found)
    assert 3 <= len({b.theme for b in batches}) <= 5
    for b in batches:  # named by top terms: lowercase words joined by dashes
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+){1,2}", b.theme), b.theme


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nightshift"  # 12 short essays, 4 theme folders


def flattened(*folders: Path) -> tuple[list[Document], dict[str, str]]:
    """Documents of the given source folders with folder and front-matter themes taken away."""
    docs, truth = [], {}
    for folder in folders:
        for d in load_documents(folder)[0]:
            docs.append(Document(**{**d.__dict__, "id": f"{folder.name}-{len(docs):02d}.md", "theme": None, "theme_source": None}))
            truth[docs[-1].id] = d.id.split("/")[0]
    return docs, truth


def test_fixture_corpus_folders_and_flattened():
    docs, _ = load_documents(FIXTURE)
    assert {b.theme for b in plan_batches(docs, 12000)} == {"cycling", "families", "handover", "sleep"}
    flat, truth = flattened(FIXTURE)
    for seed in (0, 1, 2):
        found = {c.doc_id: b.theme for b in plan_batches(flat, 12000, seed=seed) for c in b.chunks}
        ids = sorted(truth)
        assert best_matching_agreement([truth[i] for i in ids], [found[i] for i in ids]) >= 10, found


def test_two_authors_flattened_make_eight_themes():
    example_documents()
    flat, truth = flattened(FIXTURE, EXAMPLE_SOURCES)
    batches = plan_batches(flat, 12000, seed=0)
    found = {c.doc_id: b.theme for b in batches for c in b.chunks}
    assert 7 <= len({b.theme for b in batches}) <= 9
    # Each found theme draws mostly on one true theme.
    by_theme: dict[str, list[str]] = {}
    for doc_id, theme in found.items():
        by_theme.setdefault(theme, []).append(truth[doc_id])
    purity = sum(max(members.count(t) for t in set(members)) for members in by_theme.values())
    assert purity >= 20, by_theme


def test_automatic_themes_are_deterministic_and_countable(tmp_path):
    example_documents()
    docs = [
        Document(**{**d.__dict__, "theme": None, "theme_source": None})
        for d in load_documents(EXAMPLE_SOURCES)[0]
    ]
    first = plan_batches(docs, 12000, seed=3)
    again = plan_batches(list(reversed(docs)), 12000, seed=3)
    assert [(b.id, b.doc_ids, b.sha256) for b in first] == [(b.id, b.doc_ids, b.sha256) for b in again]
    assert len(plan_batches(docs, 12000, seed=3, themes=2)) == 2
    assert len(plan_batches(docs, 12000, seed=3, themes=6)) == 6


def test_loose_documents_join_folder_themes_only_as_strays():
    bread = "Sourdough starter flour water loaf crumb crust oven proof bake."
    named = [make_doc(f"bread/{i}.md", f"{bread} Loaf {i}.", theme="bread") for i in range(3)]
    stray = make_doc("stray.md", bread + " A stray loaf of bread, proofed and baked.")
    batches = plan_batches([*named, stray], token_budget=12000)
    assert [(b.id, b.theme, b.doc_ids) for b in batches] == [
        ("bread", "bread", ("bread/0.md", "bread/1.md", "bread/2.md", "stray.md"))
    ]


def test_large_theme_splits_into_numbered_batches_within_budget():
    docs = [make_doc(f"Big Theme/{i}.md", paragraphs(150, 150, 150), theme="Big Theme") for i in range(6)]
    docs.append(make_doc("Big Theme/long.md", paragraphs(*[200] * 8), theme="Big Theme"))  # > budget
    docs.append(make_doc("other/x.md", paragraphs(100), theme="other"))
    budget = 1000
    batches = plan_batches(docs, token_budget=budget)
    big = [b for b in batches if b.theme == "Big Theme"]
    assert [b.id for b in big] == [f"big-theme-{i}" for i in range(1, len(big) + 1)]
    assert len(big) == -(-sum(d.tokens for d in docs[:-1]) // budget)  # as few as fit (here)
    assert all(b.tokens <= budget and b.tokens == sum(c.tokens for c in b.chunks) for b in batches)
    # Documents that fit stay whole and in one batch; the long one is cut into chunks.
    for d in docs[:6]:
        holders = [b.id for b in big if d.id in b.doc_ids]
        assert len(holders) == 1
        (chunk,) = [c for b in big for c in b.chunks if c.doc_id == d.id]
        assert (chunk.start, chunk.end) == (0, len(d.text))
    long_chunks = sorted((c for b in big for c in b.chunks if c.doc_id == "Big Theme/long.md"), key=lambda c: c.start)
    assert len(long_chunks) >= 2 and long_chunks[0].start == 0 and long_chunks[-1].end == len(docs[6].text)
    assert [b.id for b in batches if b.theme == "other"] == ["other"]


def test_batch_ids_are_filesystem_safe_and_hashes_stable():
    docs = [
        make_doc("Über Ethik/a.md", "Pflicht und Neigung.", theme="Über Ethik"),
        make_doc("x/b.md", "Second document.", theme="a/b: c*?"),
        make_doc("y/c.md", "Third document.", theme="Ethics"),
        make_doc("ethics/d.md", "Fourth document.", theme="ethics"),
        make_doc("Ethics/e.md", "Fifth document.", theme="Ethics"),
    ]
    batches = plan_batches(docs, token_budget=1000)
    ids = [b.id for b in batches]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i) for i in ids), ids
    assert sorted(ids) == ["a-b-c", "ethics", "uber-ethik"]
    # Themes that differ only in case or punctuation are one, under the most used spelling.
    assert [b.doc_ids for b in batches if b.id == "ethics"] == [("Ethics/e.md", "ethics/d.md", "y/c.md")]
    assert {b.theme for b in batches} == {"Über Ethik", "a/b: c*?", "Ethics"}
    again = plan_batches(list(reversed(docs)), token_budget=1000)
    assert [(b.id, b.sha256) for b in batches] == [(b.id, b.sha256) for b in again]
    edited = [*docs[:3], make_doc("ethics/d.md", "Fourth document, edited.", theme="ethics"), docs[4]]
    changed = {b.id: b.sha256 for b in plan_batches(edited, 1000)}
    before = {b.id: b.sha256 for b in batches}
    assert [i for i in before if before[i] != changed[i]] == [next(b.id for b in batches if b.theme == "Ethics")]


def test_token_budget_too_small_is_an_error():
    with pytest.raises(SourceError, match="token_budget"):
        plan_batches([make_doc("a.md", "text")], token_budget=10)


# --- status, recorded hashes, profile ----------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        ({}, {"a.md": "new", "b.md": "new"}),
        ({"a.md": content_hash("alpha")}, {"a.md": "unchanged", "b.md": "new"}),
        ({"a.md": content_hash("alpha  \n"), "b.md": "0" * 64}, {"a.md": "unchanged", "b.md": "changed"}),
        ({"gone.md": "1" * 64}, {"a.md": "new", "b.md": "new"}),
    ],
)
def test_document_status(recorded, expected):
    docs = [make_doc("a.md", "alpha"), make_doc("b.md", "beta")]
    assert document_status(docs, recorded) == expected


def test_recorded_source_hashes_round_trip_and_errors(tmp_path):
    ws = Workspace.at(tmp_path)
    assert recorded_source_hashes(ws) == {}
    docs = [make_doc("b.md", "beta"), make_doc("a.md", "alpha")]
    write_source_hashes(ws, docs)
    assert recorded_source_hashes(ws) == {"a.md": content_hash("alpha"), "b.md": content_hash("beta")}
    assert json.loads((tmp_path / "data" / "sources.json").read_text()) == {
        "a.md": content_hash("alpha"), "b.md": content_hash("beta"),
    }
    for bad in ("{not json", "[1, 2]", '{"a.md": 3}'):
        (tmp_path / "data" / "sources.json").write_text(bad)
        with pytest.raises(SourceError, match="sources.json"):
            recorded_source_hashes(ws)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "run `mlx-partner init` or write profile.md"),
        ("", "is empty"),
        ("  \n\n\t", "is empty"),
        (PROFILE_TEMPLATE, "unedited template"),
        (PROFILE_TEMPLATE.replace("\n", "\r\n"), "unedited template"),
        ("\n".join(line for line in PROFILE_TEMPLATE.splitlines() if not line.startswith("One or")), "unedited template"),
        (b"\xff\xfe\x00\xd8bad utf16", "re-save"),
    ],
)
def test_load_profile_refuses_missing_empty_or_template(tmp_path, content, message):
    if content is not None:
        write(tmp_path, "profile.md", content)
    with pytest.raises(SourceError, match=re.escape(message)):
        load_profile(Workspace.at(tmp_path))


def test_load_profile_returns_the_edited_text(tmp_path):
    edited = PROFILE_TEMPLATE.replace("One or two sentences: what you study or write about, and for whom.", "I write about bread.")
    write(tmp_path, "profile.md", "\ufeff" + edited.replace("\n", "\r\n"))
    text = load_profile(Workspace.at(tmp_path))
    assert "I write about bread." in text and "\r" not in text and not text.startswith("\ufeff")


# --- the `sources` command ---------------------------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def example_ws(tmp_path) -> Path:
    example_documents()
    shutil.copytree(EXAMPLE_SOURCES, tmp_path / "sources")
    return tmp_path


def test_sources_prints_documents_batches_and_skipped(example_ws):
    write(example_ws / "sources", "empty.md", b"")
    write(example_ws / "sources", "streets/binary.txt", b"\x00\x01\x02")
    write(example_ws / "sources", "old.txt", "Ein Text über Straßen und Brücken.".encode("latin-1"))
    result = invoke("-w", str(example_ws), "sources")
    assert result.exit_code == 0, result.output
    out = result.output
    # The short unthemed old.txt is a stray: it joins its nearest folder theme, no batch of its own.
    assert "Documents (13)" in out and "Batches (4, budget 12000" in out and "Skipped (2)" in out
    assert re.search(r"^old\.txt\s+(bread|notebooks|repair|streets)\s+6\s+\d+\s+new$", out, re.M)
    assert re.search(r"bread/the-ugly-loaf\.md\s+bread\s+\d+\s+\d+\s+new", out)
    assert re.search(r"^empty\.md\s+empty file$", out, re.M)
    assert re.search(r"^Read as Windows-1252, not UTF-8 .*: old\.txt$", out, re.M)
    assert re.search(r"^streets/binary\.txt\s+binary file", out, re.M)
    assert "Traceback" not in out


def test_sources_json_and_status_after_generate(example_ws):
    ws = Workspace.at(example_ws)
    docs, _ = load_documents(ws.sources_dir)
    hashes = {d.id: d.sha256 for d in docs}
    hashes["bread/the-ugly-loaf.md"] = "0" * 64
    hashes["gone/old.md"] = "1" * 64
    (example_ws / "data").mkdir()
    (example_ws / "data" / "sources.json").write_text(json.dumps(hashes))
    write(example_ws / "sources", "repair/new-one.md", "A new essay on mending a kettle lid with rivets.")
    result = invoke("-w", str(example_ws), "sources", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    status = {d["id"]: d["status"] for d in data["documents"]}
    assert status["bread/the-ugly-loaf.md"] == "changed"
    assert status["repair/new-one.md"] == "new"
    assert list(status.values()).count("unchanged") == len(docs) - 1
    assert data["removed"] == ["gone/old.md"]
    assert {b["theme"] for b in data["batches"]} == {"bread", "notebooks", "repair", "streets"}
    assert sum(len(b["docs"]) for b in data["batches"]) == len(data["documents"])
    assert data["skipped"] == []
    assert {"id", "theme", "words", "tokens", "status", "sha256", "title"} <= set(data["documents"][0])
    assert {"id", "theme", "docs", "tokens", "sha256", "chunks"} <= set(data["batches"][0])


def test_sources_flags_override_settings(example_ws):
    (example_ws / "partner.toml").write_text("[sources]\ntoken_budget = 800\n")
    data = json.loads(invoke("-w", str(example_ws), "sources", "--json").output)
    assert data["token_budget"] == 800 and len(data["batches"]) > 4
    assert all(b["tokens"] <= 800 for b in data["batches"])
    data = json.loads(invoke("-w", str(example_ws), "sources", "--json", "--token-budget", "20000").output)
    assert data["token_budget"] == 20000 and len(data["batches"]) == 4


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        ({}, [], "There is no sources folder"),
        ({"sources/empty.md": b"", "sources/bin.txt": b"\x00"}, [], "No usable document"),
        ({"sources/a.md": BODY}, ["--token-budget", "50"], "set sources.token_budget to at least 200"),
        ({"sources/a.md": BODY, "data/sources.json": "oops"}, [], "sources.json"),
    ],
)
def test_sources_errors_are_one_line_exit_1(tmp_path, files, args, message):
    for rel, data in files.items():
        write(tmp_path, rel, data)
    result = invoke("-w", str(tmp_path), "sources", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_sources_usage_error_exits_2(tmp_path):
    result = invoke("-w", str(tmp_path), "sources", "--themes", "-1")
    assert result.exit_code == 2
