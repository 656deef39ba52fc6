"""Pictures with text in them, rendered with the DejaVu fonts matplotlib ships ([eval] extra), and the queries
that should find them: a receipt, a sign over a photo, screenshots, a poster, a number plate, a boarding pass;
rotated, blurred, and light on dark. Used by the text-in-images tests and bench/text_stage.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from tests.support.photos import real_photographs


@dataclass(frozen=True)
class TextPicture:
    name: str
    lines: list[str]
    phrases: list[str] = field(default_factory=list)  # queries in the words as written: top 3
    tokens: list[str] = field(default_factory=list)  # lone tokens, some inside longer words or codes: top 3
    size: tuple[int, int] = (1000, 700)
    background: str = "white"  # white, dark or photo
    angle: float = 0.0
    blur: float = 0.0
    font_size: int = 56


CORPUS = [
    TextPicture(
        "receipt",
        ["FRESHMART GROCERY", "MILK 1.29", "BREAD 2.49", "TOTAL 58213", "THANK YOU"],
        phrases=["freshmart grocery", "thank you"],
        tokens=["58213", "FRESHMART"],
        size=(700, 1000),
    ),
    TextPicture(
        "gate_sign",
        ["DEPARTURES", "GATEB17"],
        phrases=["departures"],
        tokens=["B17"],
        background="photo",
        font_size=80,
    ),
    TextPicture(
        "error_dialog",
        ["Windows Update failed", "Error 0x80070005", "Access is denied"],
        phrases=["access is denied", "windows update failed"],
        tokens=["0x80070005"],
        size=(1200, 600),
    ),
    TextPicture(
        "poster",
        ["SUMMER JAZZ", "FESTIVAL", "JULY 14"],
        phrases=["summer jazz festival"],
        tokens=["jazz"],
        background="dark",
        font_size=90,
    ),
    TextPicture("number_plate", ["RE16TGK"], tokens=["RE16"], size=(900, 300), font_size=120),
    TextPicture(
        "rotated_note",
        ["MEETING ROOM", "KEPLER 4"],
        phrases=["meeting room"],
        tokens=["KEPLER"],
        angle=12.0,
    ),
    TextPicture(
        "blurred_slide",
        ["Quarterly Results", "Revenue grew 31"],
        phrases=["quarterly results"],
        tokens=["revenue"],
        blur=1.2,
    ),
    TextPicture(
        "boarding_pass",
        ["BOARDING PASS", "FLIGHT LH2417", "SEAT 23C"],
        phrases=["boarding pass"],
        tokens=["2417", "LH2417"],
        background="dark",
    ),
]


def _font(size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    path = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    return ImageFont.truetype(str(path), size)


def render(picture: TextPicture, seed: int = 0, shift: int = 0) -> Image.Image:
    """The picture: its lines centred, one under the other, on its background (``shift`` pixels lower: another
    file with the same words)."""
    width, height = picture.size
    if picture.background == "photo":
        photo = real_photographs()[seed % 3]
        image = photo.resize((width, height), Image.Resampling.BICUBIC)
    else:
        image = Image.new("RGB", (width, height), "white" if picture.background == "white" else (20, 24, 48))
    ink = (255, 250, 235) if picture.background == "dark" else (10, 10, 10)
    font = _font(picture.font_size)
    draw = ImageDraw.Draw(image)
    step = int(picture.font_size * 1.5)
    top = (height - step * len(picture.lines)) // 2 + 3 * shift
    for i, line in enumerate(picture.lines):
        box = draw.textbbox((0, 0), line, font=font)
        left = (width - (box[2] - box[0])) // 2
        if picture.background == "photo":  # a sign: a plate behind the words
            draw.rectangle(
                (left - 20, top + i * step - 10, left + box[2] - box[0] + 20, top + i * step + box[3] + 10),
                fill=(245, 245, 240),
            )
        draw.text((left, top + i * step), line, font=font, fill=ink)
    if picture.angle:
        fill = "white" if picture.background == "white" else (20, 24, 48)
        image = image.rotate(picture.angle, expand=False, fillcolor=fill, resample=Image.Resampling.BICUBIC)
    if picture.blur:
        image = image.filter(ImageFilter.GaussianBlur(picture.blur))
    return image


def write_corpus(folder: Path, with_photos: int = 6) -> dict[str, Path]:
    """The corpus as files in ``folder`` (text pictures as PNG, like screenshots; a few as JPEG), and
    ``with_photos`` photos without text (crops of real photographs, JPEG): name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, picture in enumerate(CORPUS):
        path = folder / f"{picture.name}.{'jpg' if i % 3 == 1 else 'png'}"
        render(picture, seed=i).save(path)
        paths[picture.name] = path
    for i, photo in enumerate(photos_without_text(with_photos)):
        path = folder / f"photo_{i}.jpg"
        photo.save(path, quality=90)
        paths[path.stem] = path
    return paths


def photos_without_text(count: int, size: tuple[int, int] = (1200, 900)) -> list[Image.Image]:
    """Crops of scikit-learn's two photographs (a temple, a flower), neither with text in it (matplotlib's Grace
    Hopper portrait has a name plate)."""
    rng = np.random.default_rng(1)
    sources = real_photographs()[:2]
    photos = []
    for i in range(count):
        source = sources[i % len(sources)]
        scale = rng.uniform(0.5, 1.0)
        width, height = int(source.width * scale), int(source.height * scale)
        left, top = rng.integers(0, source.width - width + 1), rng.integers(0, source.height - height + 1)
        photos.append(source.crop((left, top, left + width, top + height)).resize(size, Image.Resampling.BICUBIC))
    return photos
