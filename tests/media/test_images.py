"""Decoding: every mode becomes a correct RGB picture, EXIF orientation is applied, bad bytes give reasons."""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from imgsearch.errors import ImageDecodeError, ImageTooLargeError
from imgsearch.media.images import decode_image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def decode(data: bytes, min_side: int = 64, max_pixels: int = 10**8):
    return decode_image(data, "test-image", min_side, max_pixels)


def rgb_at(decoded, x: int, y: int) -> tuple[int, int, int]:
    return decoded.image.convert("RGB").getpixel((x, y))


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    decoded = decode(encode(cmyk, "JPEG", quality=95))
    r, g, b = rgb_at(decoded, 16, 16)
    assert decoded.image.mode == "RGB"
    assert r > 200 and g < 60 and b < 60


def test_16_bit_greyscale_keeps_its_mid_grey_instead_of_turning_white():
    grey16 = Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16))
    decoded = decode(encode(grey16, "PNG"))
    r, g, b = rgb_at(decoded, 5, 5)
    assert 120 <= r <= 135 and r == g == b


def test_16_bit_greyscale_keeps_dark_and_light_apart():
    pixels = np.zeros((32, 32), dtype=np.uint16)
    pixels[:, 16:] = 60000
    decoded = decode(encode(Image.fromarray(pixels), "PNG"))
    assert rgb_at(decoded, 2, 2)[0] < 10
    assert rgb_at(decoded, 30, 2)[0] > 220


def test_palette_with_transparency_composites_on_white():
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (16, 0, 32, 32))
    data = encode(palette, "PNG", transparency=0)
    decoded = decode(data)
    assert rgb_at(decoded, 4, 4) == (255, 255, 255)  # transparent black -> white, not black
    assert rgb_at(decoded, 20, 4) == (255, 0, 0)


@pytest.mark.parametrize("mode,colour", [("LA", (0, 0)), ("RGBA", (0, 0, 0, 0))])
def test_transparent_pixels_become_white(mode, colour):
    image = Image.new(mode, (32, 32), colour)
    decoded = decode(encode(image, "PNG"))
    assert rgb_at(decoded, 10, 10) == (255, 255, 255)


def test_opaque_la_keeps_its_grey():
    decoded = decode(encode(Image.new("LA", (32, 32), (100, 255)), "PNG"))
    assert rgb_at(decoded, 10, 10) == (100, 100, 100)


def test_exif_orientation_is_applied():
    sideways = Image.new("RGB", (80, 40), (0, 0, 255))
    sideways.paste((255, 0, 0), (0, 0, 40, 40))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    decoded = decode(encode(sideways, "JPEG", quality=95, exif=exif), min_side=40)
    assert decoded.image.size == (40, 80)
    assert (decoded.width, decoded.height) == (40, 80)
    top, bottom = rgb_at(decoded, 20, 5), rgb_at(decoded, 20, 75)
    assert top[0] > 200 and bottom[2] > 200  # stored left (red) is displayed on top


def test_sideways_photo_with_orientation_tag_embeds_like_the_upright_photo(encoder):
    rng = np.random.default_rng(3)
    upright = Image.fromarray(np.kron(rng.integers(0, 256, (4, 3, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8)))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored_sideways = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes, plus the tag
    a = decode(encode(upright, "JPEG", quality=98), min_side=encoder.image_size)
    b = decode(encode(stored_sideways, "JPEG", quality=98, exif=exif), min_side=encoder.image_size)
    c = decode(encode(stored_sideways, "JPEG", quality=98), min_side=encoder.image_size)  # no tag
    va, vb, vc = encoder.embed_images([a.image, b.image, c.image])
    assert float(va @ vb) > 0.99
    assert float(va @ vb) > float(va @ vc)


def test_large_jpeg_is_reduced_while_decoding_and_reports_its_real_size():
    photo = Image.new("RGB", (4000, 3000), (10, 120, 200))
    decoded = decode(encode(photo, "JPEG"), min_side=224)
    assert min(decoded.image.size) == 224
    assert (decoded.width, decoded.height) == (4000, 3000)


def test_small_images_are_not_enlarged():
    decoded = decode(encode(Image.new("RGB", (30, 20)), "PNG"), min_side=224)
    assert decoded.image.size == (30, 20)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats_decode(fmt):
    decoded = decode(encode(Image.new("RGB", (48, 32), (0, 200, 0)), fmt))
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (48, 32)
    assert rgb_at(decoded, 10, 10)[1] > 150


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (32, 32), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    r, _g, b = rgb_at(decode(buffer.getvalue()), 16, 16)
    assert r > 200 and b < 60


def test_empty_bytes_are_rejected_with_a_reason():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode(b"")


def test_text_is_not_an_image():
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode(b"hello, this is not a picture")


def test_truncated_jpeg_is_rejected():
    data = encode(Image.new("RGB", (200, 200), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated|cannot decode"):
        decode(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("L", (6000, 6000)), "PNG")  # a few kB on disk, 36 MP declared
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLargeError) as caught:
        decode(bomb, max_pixels=10_000_000)
    assert caught.value.pixels == 36_000_000


@pytest.mark.parametrize("size", [(100, 80), (1200, 900)])
def test_jpeg2000_decodes_small_and_reduced(size):
    """Small enough that no reduction applies, or large enough that OpenJPEG decodes it at a fraction."""
    source = Image.new("RGB", size, (200, 30, 30))
    decoded = decode(encode(source, "JPEG2000"))
    assert (decoded.width, decoded.height) == size
    assert min(decoded.image.size) <= max(224, min(size)) and decoded.image.getpixel((5, 5))[0] > 150


def test_a_decoder_that_fails_in_an_unexpected_way_gives_a_decode_error(monkeypatch):
    def broken(*_args, **_kwargs):
        raise TypeError("a plugin bug")

    data = encode(Image.new("RGB", (50, 50)), "PNG")
    monkeypatch.setattr(Image.Image, "load", broken)
    with pytest.raises(ImageDecodeError, match="TypeError: a plugin bug"):
        decode(data)


# ── What EXIF says about a photo: read when sane, ignored when not ─────────────────────────────────────


def exif_of(**tags):
    from PIL import Image

    exif = Image.Exif()
    for key, value in tags.items():
        if key == "details":
            exif.get_ifd(0x8769).update(value)
        elif key == "gps":
            exif.get_ifd(0x8825).update(value)
        else:
            exif[int(key[1:], 16)] = value
    return exif


def test_the_capture_time_prefers_the_original_then_digitized_then_file_date():
    from imgsearch.media.images import photo_exif

    both = exif_of(details={0x9003: "2019:06:01 09:30:00", 0x9004: "2020:01:01 00:00:00"}, x0132="2021:01:01 00:00:00")
    assert photo_exif(both).taken_at == datetime(2019, 6, 1, 9, 30)
    assert photo_exif(exif_of(details={0x9004: "2020:01:01 00:00:00"})).taken_at == datetime(2020, 1, 1)
    assert photo_exif(exif_of(x0132="2021:02:03 04:05:06")).taken_at == datetime(2021, 2, 3, 4, 5, 6)
    assert photo_exif(exif_of()).taken_at is None


@pytest.mark.parametrize(
    "value",
    [
        "0000:00:00 00:00:00",
        "    :  :     :  :  ",
        "2019-06-01",
        "1700:01:01 00:00:00",
        "2999:01:01 00:00:00",
        "2019:13:45 99:99:99",
        b"\xff\xfe",
        12345,
    ],
)
def test_nonsense_dates_are_no_date(value):
    from imgsearch.media.images import photo_exif

    assert photo_exif(exif_of(details={0x9003: value})).taken_at is None


def test_camera_names_are_cleaned_and_bounded_and_bad_gps_is_dropped():
    from imgsearch.media.images import photo_exif

    exif = photo_exif(
        exif_of(
            x010F="  Canon\x00\x00",
            x0110="EOS\n5D" + "x" * 500,
            gps={1: "N", 2: (1.0, 0.0, 0.0), 3: "W", 4: (0.0, 0.0, 0.0)},
        )
    )
    assert exif.camera_make == "Canon" and exif.camera_model.startswith("EOS5D") and len(exif.camera_model) == 64
    assert exif.gps == "1.000000,0.000000"
    for gps in (
        {1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (1.0, 0.0, 0.0)},  # beyond the pole
        {1: "N", 2: (1.0, 0.0), 3: "E", 4: (1.0, 0.0, 0.0)},  # two parts
        {2: "north"},
    ):
        assert photo_exif(exif_of(gps=gps)).gps == ""


def test_a_decoded_photo_carries_its_format_and_exif(tmp_path):
    from tests.support.photos import write_exif_photo

    photo = write_exif_photo(tmp_path / "a.jpg", seed=1, taken="2019:06:01 09:30:00", model="X100V")
    decoded = decode_image(photo.read_bytes(), str(photo), 32, 10**8)
    assert (decoded.format, decoded.exif.taken_at, decoded.exif.camera_model) == (
        "JPEG",
        datetime(2019, 6, 1, 9, 30),
        "X100V",
    )
