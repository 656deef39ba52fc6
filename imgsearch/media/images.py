"""Turn image bytes into an upright RGB picture no larger than the model needs.

Every file and every upload passes through :func:`decode_image`, so a photo, a
scan, a 16-bit microscope slide and a transparent PNG all reach the model the
same way: EXIF orientation applied, a correct 8-bit RGB conversion, and a
size reduced early (JPEG draft decoding) to the model's input resolution.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgsearch.errors import ImageDecodeError, ImageTooLargeError, UnknownImageFormatError
from imgsearch.media.searchable_text import xmp_text

try:  # HEIC/HEIF through the optional pillow-heif plugin (`pip install imgsearch[heic]`).
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - optional extra
    pass

# Extensions the indexer picks up. AVIF is decoded by Pillow itself (>= 11.3).
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".avif",
    }
)

# Pillow's own bomb check would fire at its global limit; ours is per call and configurable.
Image.MAX_IMAGE_PIXELS = None

_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height

DEFAULT_MAX_DECODED_BYTES = 256 * 1024 * 1024

# Bytes per pixel of Pillow's decoded modes. A one-bit PNG still takes a byte per pixel once decoded.
_BYTES_PER_PIXEL = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "La": 2,
    "PA": 2,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
}


_HIGH_DEPTH = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def decoded_bytes(mode: str, width: int, height: int, rotated: bool = False) -> int:
    """Peak bytes to decode an image of ``mode`` and size and convert it to RGB (mode-aware, not pixel count)."""
    per_pixel = _BYTES_PER_PIXEL.get(mode, 4)
    if mode == "RGB":
        conversion = 0
    elif mode in _HIGH_DEPTH:
        conversion = 4 + 4 + 1 + 3  # float32 copy, its scaled copy, 8-bit grey, RGB (see _high_depth_grey_to_rgb)
    else:
        conversion = 3 + (4 if mode in ("P", "PA", "LA", "La", "RGBA", "RGBa") else 0)
    return width * height * (per_pixel + conversion + (per_pixel if rotated else 0))


@dataclass(frozen=True)
class PhotoExif:
    """What a photo's EXIF says about where it came from; empty where it says nothing (or nonsense)."""

    taken_at: datetime | None = None  # local wall-clock time of capture, no time zone
    camera_make: str = ""
    camera_model: str = ""
    gps: str = ""  # "lat,lon", decimal degrees


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, shortest side about `min_side` (or smaller if the original is)
    width: int  # of the upright original
    height: int
    format: str = ""  # as Pillow names it: JPEG, PNG, WEBP ...
    exif: PhotoExif = PhotoExif()
    description: str = ""  # what the file says it shows: EXIF, IPTC and XMP descriptions, titles, keywords


_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED, _DATETIME = 0x9003, 0x9004, 0x0132
_MAKE, _MODEL = 0x010F, 0x0110
_CAMERA_CHARS = 64


def photo_exif(exif: Image.Exif) -> PhotoExif:
    """Capture time, camera and position from EXIF. Hostile or broken EXIF gives empty fields, never an error."""
    try:
        details = exif.get_ifd(_EXIF_IFD)
        taken = (
            _exif_time(details.get(_DATETIME_ORIGINAL))
            or _exif_time(details.get(_DATETIME_DIGITIZED))
            or _exif_time(exif.get(_DATETIME))
        )
        return PhotoExif(
            taken, _exif_text(exif.get(_MAKE)), _exif_text(exif.get(_MODEL)), _exif_gps(exif.get_ifd(_GPS_IFD))
        )
    except Exception:  # a malformed IFD in a hostile file
        return PhotoExif()


def _exif_time(value: object) -> datetime | None:
    text = _exif_text(value)
    try:
        moment = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:  # "0000:00:00 00:00:00", blanks, garbage
        return None
    return moment if 1826 <= moment.year <= 2200 else None  # the first photograph; nothing from the future


def _exif_text(value: object, limit: int = _CAMERA_CHARS) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return ""
    text = "".join(char for char in value.replace("\x00", "") if char.isprintable()).strip()
    return text[:limit]


def _exif_gps(gps: dict) -> str:
    try:
        lat = _degrees(gps[2]) * (-1 if str(gps.get(1, "N")).upper().startswith("S") else 1)
        lon = _degrees(gps[4]) * (-1 if str(gps.get(3, "E")).upper().startswith("W") else 1)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
        return ""
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return ""
    return f"{lat + 0.0:.6f},{lon + 0.0:.6f}"  # + 0.0: no "-0.000000"


def _degrees(dms) -> float:
    degrees, minutes, seconds = (float(part) for part in dms)
    return degrees + minutes / 60 + seconds / 3600


def _decode_reduced(image: Image.Image, min_side: int) -> int:
    """Ask the decoder for a smaller picture where the format allows; returns the scale it will be decoded at."""
    if image.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: a 12 MP photo never exists in full.
        image.draft(image.mode if image.mode in ("RGB", "L") else None, (min_side, min_side))
    if image.format != "JPEG2000":
        return 1
    # OpenJPEG decodes at 1/2**n resolution directly; n stops while the short side stays >= min_side.
    factor = 0
    while min(image.size) >> (factor + 1) >= min_side and factor < 5:
        factor += 1
    image.reduce = factor
    return 2**factor


def decode_image(
    data: bytes, source: str, min_side: int, max_pixels: int, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> DecodedImage:
    """Decode ``data`` into an upright RGB image whose shortest side is ``min_side``.

    Raises:
        ImageTooLargeError: the header declares more than ``max_pixels`` pixels, or decoding would take more
            than ``max_decoded_bytes`` of memory (after any reduced decoding the format allows).
        UnknownImageFormatError: the bytes are not an image format Pillow reads.
        ImageDecodeError: the bytes are empty or truncated.
    """
    if not data:
        raise ImageDecodeError(source, "empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(source, width * height, max_pixels)
        scale = _decode_reduced(image, min_side)
        exif_tags = image.getexif() if image.format != "PNG" else None
        orientation = exif_tags.get(0x0112, 1) if exif_tags is not None else None
        needed = decoded_bytes(
            image.mode,
            -(-image.size[0] // scale),
            -(-image.size[1] // scale),
            rotated=orientation in _ROTATED_ORIENTATIONS,
        )
        if needed > max_decoded_bytes:
            raise ImageTooLargeError(source, width * height, max_pixels, needed, max_decoded_bytes)
        if exif_tags is None:  # after the memory check: Pillow reads a PNG's EXIF by decoding it all first
            exif_tags = image.getexif()
            orientation = exif_tags.get(0x0112, 1)
        if orientation in _ROTATED_ORIENTATIONS:
            width, height = height, width
        image_format = image.format or ""
        exif = photo_exif(exif_tags)
        description = embedded_description(image, exif_tags)
        image.load()
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
        image = _shrink(image, min_side)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise UnknownImageFormatError(source, "not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(source, f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ImageDecodeError(source, f"cannot decode: {exc}") from None
    except Exception as exc:  # a plugin's own bug on hostile bytes: this file fails, never the run
        raise ImageDecodeError(source, f"cannot decode: {type(exc).__name__}: {exc}") from None
    return DecodedImage(
        image=image, width=width, height=height, format=image_format, exif=exif, description=description
    )


_IMAGE_DESCRIPTION = 0x010E
_IPTC_TEXT = ((2, 105), (2, 120), (2, 25))  # headline, caption, keywords
_MAX_DESCRIPTION = 4096


def embedded_description(image: Image.Image, exif_tags: Image.Exif | None = None) -> str:
    """The descriptions a file carries inside: EXIF ImageDescription, IPTC headline, caption and keywords, XMP
    description, title and subject. Read from the headers (never the pixels); hostile values are cut short."""
    found: list[str] = []
    try:
        if exif_tags is not None:
            found.append(_exif_text(exif_tags.get(_IMAGE_DESCRIPTION), _MAX_DESCRIPTION))
        if image.format == "JPEG":
            from PIL import IptcImagePlugin

            iptc = IptcImagePlugin.getiptcinfo(image) or {}
            for key in _IPTC_TEXT:
                values = iptc.get(key)
                for value in values if isinstance(values, list) else [values]:
                    if isinstance(value, bytes):
                        found.append(value[:_MAX_DESCRIPTION].decode("utf-8", "replace"))
        xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
        if isinstance(xmp, str):
            xmp = xmp.encode("utf-8", "replace")
        if isinstance(xmp, bytes):
            found.append(xmp_text(xmp[: 256 * 1024]))
    except Exception:  # hostile metadata: the picture is still indexed, without a description
        return ""
    return " ".join(dict.fromkeys(text.strip() for text in found if text and text.strip()))[:_MAX_DESCRIPTION]


def header_description(data: bytes) -> str:
    """``embedded_description`` from a file's first bytes (for rows indexed before descriptions were kept)."""
    try:
        image = Image.open(io.BytesIO(data))
        return embedded_description(image, image.getexif() if image.format != "PNG" else None)
    except Exception:
        return ""


def photo_header(data: bytes) -> tuple[str, PhotoExif]:
    """A file's format and EXIF without decoding its pixels (for rows indexed before these were kept).

    A PNG's EXIF may follow its pixels, and Pillow decodes them all to reach it: skipped."""
    try:
        image = Image.open(io.BytesIO(data))
        image_format = image.format or ""
        return image_format, photo_exif(image.getexif()) if image_format != "PNG" else PhotoExif()
    except Exception:  # not an image (any more), or hostile bytes: nothing known
        return "", PhotoExif()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _high_depth_grey_to_rgb(image)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX


def _high_depth_grey_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit and float greyscale: scale the real value range to 0..255 rather than clipping."""
    pixels = np.asarray(image, dtype=np.float32)
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "F":
        top = 1.0 if pixels.size and float(pixels.max()) <= 1.0 else max(float(pixels.max()), 1.0)
    else:  # "I": 16-bit PNGs and TIFFs often open as 32-bit ints holding 16-bit values
        top = 255.0 if pixels.size and float(pixels.max()) <= 255 else 65535.0
    grey = np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _shrink(image: Image.Image, min_side: int) -> Image.Image:
    """Resize so the shortest side is ``min_side``; never enlarge."""
    width, height = image.size
    shortest = min(width, height)
    if shortest <= min_side:
        return image
    scale = min_side / shortest
    size = (max(min_side, round(width * scale)), max(min_side, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
