"""Every image mode comes out as upright RGB; broken files give one clear error naming the file."""

import io

import numpy as np
import pytest
from PIL import Image

from mmd2v2_core.data.images import UNIT_FLOATS_NOTE, check_image, image_problem, open_rgb
from mmd2v2_core.errors import DataError


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "CMYK", "1"])
def test_plain_modes_become_rgb(tmp_path, mode):
    src = Image.new("RGB", (20, 10), (200, 40, 40))
    img = src.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = open_rgb(_save(img, tmp_path / f"x.{fmt.lower()}", format=fmt))
    assert out.mode == "RGB" and out.size == (20, 10)
    if mode in ("RGB", "CMYK"):
        assert np.abs(np.asarray(out, int)[5, 5] - [200, 40, 40]).max() < 12
    if mode == "L":
        r, g, b = np.asarray(out)[5, 5]
        assert r == g == b


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = np.asarray(open_rgb(_save(rgba, tmp_path / "a.png")))
    assert out[4, 4].tolist() == [255, 255, 255] and out[0, 0].tolist() == [255, 0, 0]
    la = Image.new("LA", (4, 4), (0, 0))
    assert np.asarray(open_rgb(_save(la, tmp_path / "la.png")))[1, 1].tolist() == [255, 255, 255]
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    pal.putpixel((2, 2), 1)
    pal.info["transparency"] = 0
    out = np.asarray(open_rgb(_save(pal, tmp_path / "p.png", transparency=0)))
    assert out[0, 0].tolist() == [255, 255, 255] and out[2, 2].tolist() == [10, 200, 10]


def test_sixteen_bit_grayscale_keeps_its_range(tmp_path):
    arr = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    out = np.asarray(open_rgb(_save(Image.fromarray(arr), tmp_path / "d.png")))
    assert out[0, 1].tolist() == [255] * 3 and 126 <= out[1, 0, 0] <= 128


def test_exif_rotated_photo_comes_out_upright(tmp_path):
    # Stored landscape 30×10 with a red marker top-left; orientation 6 means "rotate 90° clockwise to view".
    stored = Image.new("RGB", (30, 10), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 6, 4))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = open_rgb(_save(stored, tmp_path / "r.jpg", exif=exif, quality=95))
    assert out.size == (10, 30)  # upright portrait
    arr = np.asarray(out, int)
    assert arr[1, -2, 0] > 200 and arr[1, -2, 2] < 60  # the marker is now top-right


def test_bytes_and_file_objects(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (3, 3), (1, 2, 3)).save(buf, format="PNG")
    assert open_rgb(buf.getvalue()).size == (3, 3)
    buf.seek(0)
    assert open_rgb(buf).size == (3, 3)


def test_broken_files_name_the_file(tmp_path):
    good = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)),
                 tmp_path / "good.jpg")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("trunc.jpg", "empty.jpg", "text.jpg", "absent.jpg"):
        with pytest.raises(DataError, match=rf"{name}: (unreadable image|image file not found)"):
            open_rgb(tmp_path / name)
    assert image_problem(tmp_path / "absent.jpg") == "missing"
    assert image_problem(tmp_path / "empty.jpg") == "empty file"
    assert image_problem(tmp_path / "trunc.jpg").startswith("unreadable")
    assert image_problem(good) is None


def test_huge_dimensions_are_refused_without_decoding(tmp_path):
    bomb = _save(Image.new("1", (12_000, 12_000)), tmp_path / "bomb.png")  # 144 Mpx, a few KB on disk
    with pytest.raises(DataError, match=r"bomb.png: image too large .*144000000 pixels"):
        open_rgb(bomb)
    assert image_problem(bomb).startswith("image too large")


def test_floating_point_pixels_in_unit_range_are_fractions(tmp_path):
    unit = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32))
    out = np.asarray(open_rgb(_save(unit, tmp_path / "unit.tif")))
    assert out[:, :, 0].tolist() == [[0, 127], [255, 63]]
    wide = Image.fromarray(np.array([[0.0, 200.0]], dtype=np.float32))  # already on the 0–255 scale: kept
    assert np.asarray(open_rgb(_save(wide, tmp_path / "wide.tif")))[0, :, 0].tolist() == [0, 200]
    assert check_image(tmp_path / "unit.tif") == (None, UNIT_FLOATS_NOTE)
    assert check_image(tmp_path / "wide.tif") == (None, None)
