"""The engine reads the corpus, passes over photos without text at the gate, and gets bounded input whatever the
file holds."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from imgsearch.errors import ImgsearchError
from imgsearch.indexer.text_stage import read_texts
from imgsearch.ocr import reader as reader_module
from imgsearch.ocr.reader import GATE_SIDE, READ_SIDE, ReadText, TextReader
from tests.support.text_pictures import CORPUS, photos_without_text, render


@pytest.fixture(scope="module")
def reader() -> TextReader:
    return TextReader()


def squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text).upper()


@pytest.mark.parametrize("picture", CORPUS, ids=lambda p: p.name)
def test_the_engine_reads_every_word_of_the_corpus(reader, picture):
    read = reader.read(render(picture))
    assert not read.gated
    for line in picture.lines:
        assert squeezed(line) in squeezed(read.text), (line, read.lines)


def test_photos_without_text_stop_at_the_gate(reader):
    reads = [reader.read(photo) for photo in photos_without_text(6)]
    assert all(read.gated and read.text == "" for read in reads), [read.lines for read in reads]


class RecordingEngine:
    """Stands in for rapidocr: remembers the size of every picture it is given, and finds one box."""

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, image, use_det=True, use_cls=False, use_rec=True):
        self.shapes.append(image.shape)

        class Found:
            boxes = [[[0, 0], [10, 0], [10, 10], [0, 10]]]
            scores = [0.9]
            txts = ("WORD",) if use_rec else None

        return Found()


def test_the_engine_is_never_given_more_than_the_bounded_picture(monkeypatch):
    engine = RecordingEngine()
    reader = TextReader()
    monkeypatch.setattr(reader, "_load", lambda: engine)
    reader.read(Image.new("RGB", (20000, 300), "white"))  # a hostile panorama
    reader.read(Image.new("RGB", (300, 9000), "white"))
    (gate, full, gate2, full2) = engine.shapes
    assert max(gate[:2]) <= GATE_SIDE and max(gate2[:2]) <= GATE_SIDE
    assert max(full[:2]) <= READ_SIDE and max(full2[:2]) <= READ_SIDE


class FakeRows:
    def __init__(self, rows):
        self.rows, self.written = rows, {}

    def iter_rows(self, fields, filter_expr):
        return iter(self.rows)

    def set_image_text(self, read):
        self.written.update(read)


def test_a_hostile_or_vanished_file_is_recorded_as_read_without_text_and_the_stage_goes_on(tmp_path, settings):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 9000)).save(bomb)  # 108 MP, a small file: refused before decoding
    good = tmp_path / "receipt.png"
    render(CORPUS[0]).save(good)
    rows = [
        {"id": "a", "path": str(bomb), "content_hash": "h-bomb", "text_read_from": ""},
        {"id": "b", "path": str(tmp_path / "gone.png"), "content_hash": "h-gone", "text_read_from": ""},
        {"id": "c", "path": str(good), "content_hash": "stale", "text_read_from": ""},  # changed since embedded
    ]
    store = FakeRows(rows)
    report = read_texts(store, settings, TextReader(), [str(tmp_path)])
    assert (report.pending, report.read, report.failed) == (3, 3, 2)
    assert store.written == {"a": ("", "h-bomb"), "b": ("", "h-gone")}  # "c" waits for its next embedding


def test_without_the_engine_the_reader_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(reader_module, "engine_installed", lambda: False)
    with pytest.raises(ImgsearchError, match=r"imgsearch\[ocr\]"):
        TextReader().read(Image.new("RGB", (10, 10)))
    assert ReadText(["a", "b"]).text == "a\nb"
