"""Opening images as correctly oriented RGB, and checking that an image file is readable.

Photo collections contain every PIL mode: grayscale (L), palette (P, sometimes with transparency),
RGBA/LA, CMYK JPEGs, 16-bit PNGs, floating-point TIFFs, and phone photos whose pixels are stored sideways
with an EXIF orientation tag. All of them come out of ``open_rgb`` as upright 8-bit RGB. Transparent pixels
are composited onto white, since the RGB values under alpha 0 are arbitrary. Floating-point pixels that all
lie in [0, 1] are fractions of full intensity (the usual convention for float images); read as 0–255 values
they would all be black.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

ImageSource = str | Path | bytes | BinaryIO

# A corrupt EXIF or TIFF tag block: PIL skips the tags it cannot read (the pixels decode) and warns once per tag, from
# inside Image.open, in the middle of a progress bar, with its own source path. Camera metadata says nothing a
# caption pair needs; a module filter, because catch_warnings is not thread-safe and images are checked in threads.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    return Image.open(source)


def _describe(source: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    return str(source) if isinstance(source, (str, Path)) else "<image bytes>"


def _unit_floats(img: Image.Image) -> bool:
    """A floating-point image whose values all lie in [0, 1]: fractions of full intensity."""
    return img.mode == "F" and img.getextrema()[1] <= 1.0


def _to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if _unit_floats(img):
            arr = arr * 255.0
        elif arr.max(initial=0) > 255:  # 16-bit data: keep the full range instead of clipping at 255
            arr = arr / 257.0
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    return img.convert("RGB")


def open_rgb(source: ImageSource, name: str | None = None) -> Image.Image:
    """Decode an image file (path, bytes or file object) to upright RGB, or raise DataError naming it."""
    label = _describe(source, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(source) as img:
                _check_size(img, label)
                img.load()
                return _to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"{label}: {_path_problem(source) or 'image file not found'}") from None
    except _TOO_LARGE as exc:
        raise DataError(f"{label}: image too large ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{label}: {_path_problem(source) or f'unreadable image ({type(exc).__name__}: {exc})'}") \
            from None


def _path_problem(source: ImageSource) -> str | None:
    """Why a path that failed to open is no file to read (asked only after a failure: no stat per decoded image)."""
    problem = not_a_file(Path(source)) if isinstance(source, (str, Path)) else None
    return "image file not found" if problem == "missing" else problem


# Images over PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, ≈89 Mpx) are refused before
# decoding: a 40k×40k "photo" would take gigabytes of memory and is an attack or an error, not data.
_TOO_LARGE = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def _check_size(img: Image.Image, label: str) -> None:
    w, h = img.size
    if w == 0 or h == 0:
        raise DataError(f"{label}: image has zero size ({w}×{h})")
    # checked here, not only through the warning filter: catch_warnings is not thread-safe, and images are
    # checked in a thread pool, where another thread's exit can restore the filters mid-check
    if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
        raise DataError(f"{label}: image too large ({w * h} pixels, over the decompression-bomb limit of "
                        f"{Image.MAX_IMAGE_PIXELS})")


VERIFY_MODES = ("decode", "header", "exists")


UNIT_FLOATS_NOTE = "floating-point pixels in [0, 1], read as fractions of full intensity"


def not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a file to read an image from (missing, a folder, a dangling or looping symlink, a
    device or pipe), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"broken symlink (to {os.readlink(path)}, which does not exist)" if path.is_symlink() else "missing"
    except OSError as exc:
        return "symlink loop" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(mode):
        return "a folder, not an image file"
    return None if stat.S_ISREG(mode) else "not a regular file"


def check_image(path: Path, verify: str = "decode") -> tuple[str | None, str | None]:
    """(why this image cannot be used, or None; a note on how an unusual image will be read, or None).

    ``decode`` reads every byte of the pixel data (JPEGs at 1/8 scale, which is fast but still
    catches truncation); ``header`` only parses the header; ``exists`` only checks the file.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if problem := not_a_file(path):
        return problem, None
    if path.stat().st_size == 0:
        return "empty file", None
    if verify == "exists":
        return None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_size(img, str(path))
                if verify == "decode":
                    img.draft("RGB", (max(img.width // 8, 1), max(img.height // 8, 1)))
                    img.load()
                    return None, UNIT_FLOATS_NOTE if _unit_floats(img) else None
    except DataError as exc:
        return str(exc).split(": ", 1)[1], None
    except _TOO_LARGE as exc:
        return f"image too large ({exc})", None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})", None
    return None, None


def image_problem(path: Path, verify: str = "decode") -> str | None:
    """Why this image cannot be used, or None when it can."""
    return check_image(path, verify)[0]


def open_record(path: Path, extra: dict) -> Image.Image:
    """An index record's image: the file at ``path``, or — a webdataset source (``mmd2v2 data webdataset``) — the
    tar member ``extra["tar_member"]`` ({name, offset, size}) of the shard at ``path``, read in place."""
    member = extra.get("tar_member")
    if member is None:
        return open_rgb(path)
    try:
        with open(path, "rb") as shard:
            shard.seek(member["offset"])
            data = shard.read(member["size"])
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror}") from None
    if len(data) != member["size"]:
        raise DataError(f"{path}: member {member['name']} ends early (the shard changed since it was indexed)")
    return open_rgb(data, name=f"{path}:{member['name']}")
