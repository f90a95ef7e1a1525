"""Bytes -> text: the encodings an author's files arrive in, and the one text form we keep.

    text, encoding = decode_text(path.read_bytes())   # ValueError = why the file is skipped
    text = normalise_newlines(text)

UTF-8 (with or without a BOM), UTF-16/32 with a BOM or recognisably without one, and cp1252 when
it plausibly holds Western text; anything else is refused with a guess at what it is, so the
skip message can say "re-save it as UTF-8".
"""

from __future__ import annotations

import unicodedata

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
