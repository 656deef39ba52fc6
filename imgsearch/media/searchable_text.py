"""The words an image can be found by besides its picture: its file and folder names, the description written
into it (EXIF, IPTC, XMP) or beside it (a ``.txt`` or ``.xmp`` sidecar), and its tags.

The indexer stores them in the ``text`` column, which Milvus indexes with BM25 (``imgsearch/store``);
a search fuses that ranking with the vector one (``search_api/relevance.py``). The column holds its parts
apart, so that re-tagging replaces only the tags:

    names \\x1f description \\x1f sidecar \\x1f text read in the picture \\x1e tags

Both separators are control characters, which the BM25 analyzer drops like spaces.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from imgsearch.media.safe_files import UnsafeFileError, read_regular
from imgsearch.store.fields import fit_utf8

MAX_TEXT = 8192  # characters the column holds (the names come first, so they always fit)
MAX_SIDECAR_BYTES = 64 * 1024
_PART, _TAGS = "\x1f", "\x1e"
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")
_SEPARATORS = re.compile(r"[_\-.+~,()\[\]{}]+")
_XML_TEXT = re.compile(
    rb"<(?:dc:description|dc:title|dc:subject|photoshop:Headline|exif:UserComment)\b[^>]*>(.*?)</", re.S
)
_XML_TAG = re.compile(rb"<[^>]+>")
_XML_ATTRIBUTE = re.compile(rb'(?:dc:description|dc:title|photoshop:Headline)="([^"]*)"')
_SPACE = re.compile(r"\s+")


def name_words(path: str) -> str:
    """The file's name and its folders' names as words, nearest folder first: ``/p/Paris 2019/IMG_2041.JPG``
    gives ``IMG_2041 IMG 2041 JPG Paris 2019 p``. Every folder counts, up to the top (BM25 gives a word that
    every image shares, such as the library's own folder, next to no weight)."""
    parts = [part for part in path.split(os.sep) if part]
    if not parts:
        return ""
    stem, _, extension = parts[-1].rpartition(".")
    if not stem:
        stem, extension = extension, ""
    words = [stem, *_split(stem), extension]
    for folder in reversed(parts[:-1]):
        words += [folder, *_split(folder)]
    unique = {word.lower(): word for word in reversed(" ".join(words).split())}  # the first spelling of each
    return _clean(" ".join(reversed(unique.values())))


def _split(name: str) -> list[str]:
    """``IMG_2041`` -> IMG, 2041; ``holidayParis2019`` -> holiday, Paris, 2019."""
    pieces = _SEPARATORS.sub(" ", name).split()
    return [word for piece in pieces for word in _CAMEL.sub(" ", piece).split() if word != name]


def xmp_text(xmp: bytes) -> str:
    """Descriptions, titles and keywords in an XMP packet (a sidecar or the one inside the file)."""
    found = [_XML_TAG.sub(b" ", match) for match in _XML_TEXT.findall(xmp)]
    found += _XML_ATTRIBUTE.findall(xmp)
    return _clean(" ".join(_unescape(part.decode("utf-8", "replace")) for part in found))


def _unescape(text: str) -> str:
    return (
        text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", '"')
        .replace("&apos;", "'")
        .replace("&amp;", "&")
    )


def sidecar_text(path: str, roots: Sequence[str]) -> str:
    """The text of the image's sidecars, if any: ``photo.txt`` or ``photo.jpg.txt`` as plain text, ``photo.xmp``
    or ``photo.jpg.xmp`` as XMP. Only regular files inside the indexed roots, at most 64 KiB each, are read."""
    stem = os.path.splitext(path)[0]
    found = []
    for candidate in dict.fromkeys((f"{path}.txt", f"{stem}.txt", f"{path}.xmp", f"{stem}.xmp")):
        if not os.path.lexists(candidate):
            continue
        try:
            data = read_regular(candidate, roots, MAX_SIDECAR_BYTES)
        except (UnsafeFileError, OSError):  # a link out of the roots, a fifo, too big: not read
            continue
        found.append(xmp_text(data) if candidate.endswith(".xmp") else data.decode("utf-8", "replace"))
    return _clean(" ".join(found))


def compose(
    names: str, description: str = "", sidecar: str = "", tags: Sequence[str] = (), image_text: str = ""
) -> str:
    """The ``text`` column's value from its parts, in lower case (BM25 lower-cases anyway; matching with LIKE,
    on a Milvus without BM25, and the search for words inside codes are then case-blind too)."""
    body = _PART.join((_clean(names), _clean(description), _clean(sidecar))).lower()
    if image_text.strip():
        body += _PART + _clean(image_text).lower()
    tag_part = _clean(" ".join(tags)).lower()
    room = MAX_TEXT - len(tag_part.encode("utf-8", "surrogatepass")) - 1
    return fit_utf8(body, max(room, 0)) + (_TAGS + tag_part if tag_part else "")


def parts(text: str) -> tuple[str, str, str, str]:
    """(names, description, sidecar, tags) of a ``text`` column's value."""
    body, _, tags = (text or "").partition(_TAGS)
    names, description, sidecar = (body.split(_PART) + ["", "", ""])[:3]
    return names, description, sidecar, tags


def image_words(text: str) -> str:
    """The words read in the picture, as a ``text`` column's value holds them (lower case)."""
    body, _, _ = (text or "").partition(_TAGS)
    return (body.split(_PART) + ["", "", "", ""])[3]


def with_tags(text: str, tags: Sequence[str]) -> str:
    """``text`` with its tags replaced."""
    names, description, sidecar, _ = parts(text)
    return compose(names, description, sidecar, tags, image_words(text))


def with_image_text(text: str, image_text: str) -> str:
    """``text`` with the words read in the picture replaced."""
    names, description, sidecar, tags = parts(text)
    return compose(names, description, sidecar, tags.split(), image_text)


def word_tokens(text: str) -> list[str]:
    """The lower-case words of a query, split as the names are (for matching without BM25)."""
    words = _WORD.findall(text.lower())
    return words + [piece for word in words for piece in _split(word)]


_WORD = re.compile(r"[^\W]+", re.UNICODE)


def _clean(text: str) -> str:
    """One line of plain words: control characters (the separators among them) become spaces."""
    return _SPACE.sub(" ", "".join(" " if ord(char) < 32 or char == "\x7f" else char for char in text)).strip()
