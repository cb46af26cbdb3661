"""What --apply does to a file. Nothing here can overwrite a file or act outside the watched folder:
a name is taken with a hard link or an exclusive create (both fail on an existing name), a symlink
is never followed, and a file is read through a descriptor opened with O_NOFOLLOW."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import warnings
from pathlib import Path

import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

pillow_heif.register_heif_opener()  # a HEIC photo (a phone's default) converts to JPEG like any other

# link() failing with these means the file system has no hard links (FAT, some network mounts).
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}
_COMPOUND = re.compile(r"\.tar\.[^.]+$", re.IGNORECASE)  # `.tar.gz` is one suffix when a copy is numbered
_MAX_COPIES = 10_000


class Refused(Exception):
    """An action not taken on purpose (journaled as a skip, with this reason)."""


class Unreadable(Exception):
    """A file that could not be read as what the action needs (journaled as an error, then skipped)."""


def split_name(name: str) -> tuple[str, str]:
    """(stem, suffix), the suffix whole for `.tar.gz`; a dot file or a bare name has no suffix."""
    compound = _COMPOUND.search(name)
    if compound and compound.start() > 0:
        return name[: compound.start()], compound.group()
    stem, dot, suffix = name.rpartition(".")
    return (stem, dot + suffix) if dot and stem else (name, "")


def numbered(name: str, copy: int) -> str:
    """"name (1).ext", as browsers number a second download of a name."""
    if copy == 0:
        return name
    stem, suffix = split_name(name)
    return f"{stem} ({copy}){suffix}"


def _names(directory: Path, name: str):
    for copy in range(_MAX_COPIES):
        yield directory / numbered(name, copy)
    raise Refused(f"{_MAX_COPIES} copies of {name!r} already")


def move_into(src: Path, directory: Path, name: str) -> Path:
    """src moved to directory/name, or to the first free "name (n)": the new name is a hard link made
    before the old one goes, so an existing file is never replaced, even by a race."""
    for dst in _names(directory, name):
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno not in _NO_HARD_LINKS:
                raise
            if os.path.lexists(dst):
                continue
            os.rename(src, dst)  # no hard links here: checked just before, the one window left
            return dst
        os.unlink(src)
        return dst
    raise AssertionError("unreachable")


def sub_folder(folder: Path, name: str) -> tuple[Path, bool]:
    """folder/name as a real directory inside the folder, and whether it was made now."""
    target = folder / name
    if target.is_symlink():
        raise Refused(f"{name}/ is a symlink: never followed")
    if target.exists():
        if not target.is_dir():
            raise Refused(f"{name} is a file, not a folder")
        return target, False
    try:
        target.mkdir()
    except FileExistsError:
        return sub_folder(folder, name)
    return target, True


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """A file's bytes, never through a symlink; more than `limit` bytes is refused unread."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(descriptor, "rb") as handle:
        if limit is not None and os.fstat(handle.fileno()).st_size > limit:
            raise Refused(f"over {limit} bytes")
        return handle.read()


def media_type(data: bytes) -> str:
    """The image's media type from its bytes (what an image part's data URL says); Unreadable if not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                media = Image.MIME.get(image.format or "")
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning, OSError) as error:
        raise Unreadable(f"not an image Pillow can read ({type(error).__name__})") from error
    if media is None:
        raise Unreadable("an image of no known media type")
    return media


def _flattened(image: Image.Image) -> Image.Image:
    """RGB, transparency laid on white (a JPEG has no alpha)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def jpeg_bytes(data: bytes, quality: int, max_pixels: int) -> bytes:
    """The image (its first frame) as an upright JPEG: EXIF orientation applied, the other EXIF tags kept."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format == "JPEG":
                    raise Refused("already a JPEG")
                if image.width * image.height > max_pixels:
                    raise Refused(f"{image.width}x{image.height} is over watch.max_image_pixels")
                upright = ImageOps.exif_transpose(image)
                exif = upright.getexif()
                out = io.BytesIO()
                _flattened(upright).save(out, "JPEG", quality=quality, **({"exif": exif.tobytes()} if exif else {}))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise Unreadable(f"not an image Pillow can read ({type(error).__name__})") from error
    except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt data
        raise Unreadable(f"a damaged image: {error}") from error
    return out.getvalue()


def write_new(directory: Path, name: str, data: bytes) -> Path:
    """data written under name or the first free "name (n)", created exclusively (never over a file)."""
    for dst in _names(directory, name):
        try:
            with open(dst, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except FileExistsError:
            continue
        return dst
    raise AssertionError("unreachable")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
