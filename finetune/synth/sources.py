"""A recipe's material: documents (text, Markdown, HTML, PDF) split into chunks, and example rows (seeds typed in, a
seeds file, a Hub dataset) as prompt/answer pairs.

>>> [c.text for c in split_text("One.\\n\\nTwo.\\n\\nThree.", "a.txt", 8)]
['One.', 'Two.', 'Three.']
>>> [c.text for c in split_text("One.\\n\\nTwo.", "a.txt", 200)]
['One.\\n\\nTwo.']
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Sequence

from ..data.detect import detect_shape, row_messages
from ..data.read import open_table
from ..data.validate import DataError, RowError
from ..errors import BadInputError

DOCUMENT_TYPES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")


@dataclass(frozen=True)
class Chunk:
    """A piece of a document; ``id`` is a hash of its text, so a continued run knows what it made from it."""

    id: str
    source: str  # the document's file name
    text: str


@dataclass(frozen=True)
class Pair:
    """An example row: a prompt and its answer."""

    prompt: str
    answer: str


class _Text(HTMLParser):
    """The visible text of an HTML page, a blank line after each block element."""

    BLOCKS = {"p", "div", "section", "article", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "br", "tr",
              "table", "pre", "blockquote", "header", "footer", "title"}
    HIDDEN = {"script", "style", "noscript", "template", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN and tag != "head":
            self.hidden += 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN and tag != "head" and self.hidden:
            self.hidden -= 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_text(html: str) -> str:
    """The visible text of an HTML document, paragraphs separated by blank lines.

    >>> html_text("<html><head><style>p{}</style></head><body><h1>Title</h1><p>A &amp; B.</p></body></html>")
    'Title\\n\\nA & B.'
    """
    parser = _Text()
    parser.feed(html)
    parser.close()
    paragraphs = [" ".join(p.split()) for p in "".join(parser.parts).split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def pdf_text(path: Path) -> str:
    """The text of each page of a PDF (pypdf), pages separated by blank lines."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise BadInputError(f"{path.name}: the PDF is encrypted; save an unlocked copy")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as e:
        raise BadInputError(f"{path.name}: not a readable PDF ({str(e)[:120] or e.__class__.__name__}); "
                            "export it again, or save its text as .txt") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())


def document_text(path: Path, max_bytes: int | None = None) -> str:
    """The text of one document by its type; a missing, oversized, empty or unreadable file names itself and the
    fix."""
    name = path.name
    suffix = path.suffix.lower()
    if suffix not in DOCUMENT_TYPES:
        raise BadInputError(f"{name}: unsupported document type '{suffix or 'none'}'; use {', '.join(DOCUMENT_TYPES)}")
    if not path.is_file():
        raise BadInputError(f"{path}: document not found; check the path (relative paths are read from the "
                            "recipe's folder)")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise BadInputError(f"{name}: {size / 1e6:.1f} MB is over the {max_bytes / 1e6:g} MB upload limit; split it")
    if suffix == ".pdf":
        text = pdf_text(path)
    else:
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise BadInputError(f"{name}: not UTF-8 text; save it as UTF-8") from None
        text = html_text(raw) if suffix in (".html", ".htm") else raw
    if not text.strip():
        raise BadInputError(f"{name}: has no text (a scanned PDF has only images: run OCR first)")
    return text


def _pieces(paragraph: str, size: int) -> list[str]:
    """A paragraph longer than ``size`` cut at sentence ends (a sentence longer than ``size`` at ``size``)."""
    if len(paragraph) <= size:
        return [paragraph]
    out, current = [], ""
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        while len(sentence) > size:
            if current:
                out.append(current)
                current = ""
            out.append(sentence[:size])
            sentence = sentence[size:]
        if current and len(current) + 1 + len(sentence) > size:
            out.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
    if current:
        out.append(current)
    return out


def split_text(text: str, source: str, size: int) -> list[Chunk]:
    """Paragraphs (split at blank lines) packed into chunks of at most ``size`` characters."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if p.strip()]
    chunks: list[str] = []
    current = ""
    for para in paragraphs:
        for piece in _pieces(para, size):
            if current and len(current) + 2 + len(piece) > size:
                chunks.append(current)
                current = ""
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return [Chunk(hashlib.sha256(c.encode()).hexdigest()[:16], source, c) for c in chunks]


def document_chunks(paths: Sequence[str | Path], size: int, base_dir: str = "", max_bytes: int | None = None,
                    names: dict[str, str] | None = None) -> list[Chunk]:
    """Every document's chunks, in order; a chunk repeated word for word (the same page in two files) once.
    ``names``: the name to record for a path (an upload: the user's file name)."""
    out: list[Chunk] = []
    seen: set[str] = set()
    for p in paths:
        path = Path(p)
        if not path.is_absolute() and base_dir:
            path = Path(base_dir) / path
        name = (names or {}).get(str(p), path.name)
        try:
            text = document_text(path, max_bytes)
        except BadInputError as e:
            raise e.renamed({str(path): name}) from None
        for chunk in split_text(text, name, size):
            if chunk.id not in seen:
                seen.add(chunk.id)
                out.append(chunk)
    return out


def example_pairs(source: str | Path, *, split: str = "train", max_bytes: int | None = None) -> list[Pair]:
    """The rows of a data file or Hub dataset as prompt/answer pairs (the first user turn, the last assistant turn);
    any shape the Dataset tab reads. A bad row is named with the fix."""
    table = open_table(source, split=split, max_bytes=max_bytes)
    shape = detect_shape(table.columns, None, table.rows, table.name)
    pairs = []
    for row, number in zip(table.rows, table.row_numbers):
        try:
            msgs = row_messages(row, shape, [])
        except RowError as e:
            raise DataError(table.name, number, f"{e.field}: {e.reason}; {e.fix}") from None
        user = next((m["content"] for m in msgs if m["role"] == "user"), "")
        answer = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), "")
        if user.strip():
            pairs.append(Pair(user.strip(), answer.strip()))
    if not pairs:
        raise DataError(table.name, None, "no rows with a prompt; give rows with a user turn")
    return pairs
