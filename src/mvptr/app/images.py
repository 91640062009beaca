"""The image files an index shows: only regular files inside the image directory whose bytes
are an image, served with the type their bytes say (never the type their name says).

A name proves nothing: ``x.jpg`` may hold HTML, and a symbolic link may point at any file the
server can read. So ``mvptr search build`` records a file only when its resolved path lies in
the image directory and its first bytes are those of a PNG, JPEG, GIF, WebP or BMP image, and
the server checks again when it reads the file (it may have been replaced since).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ..core.errors import FormatError, MissingFileError
from ..vision.detect import IMAGE_SUFFIXES

HEAD = 32  # bytes enough to tell the formats below apart
MAX_IMAGE = 64 * 1024 * 1024  # an image file the server reads, at most (bytes)
_BMP_HEADERS = (12, 40, 52, 56, 64, 108, 124)  # the sizes a BMP's DIB header can have
log = logging.getLogger("mvptr.search")


def image_type(head: bytes) -> str | None:
    """The MIME type of an image whose file starts with ``head``, or None when it is no image
    this server shows (SVG, which can carry scripts, is not one)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADERS:
        return "image/bmp"
    return None


def inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def checked_image(path: Path, root: Path) -> str | None:
    """``path``'s resolved path when it is a regular file inside ``root`` (resolved) holding an
    image, else None."""
    try:
        real = path.resolve(strict=True)
        if not inside(real, root) or not real.is_file():
            return None
        with open(real, "rb") as f:
            return str(real) if image_type(f.read(HEAD)) else None
    except OSError:
        return None


def read_image(path: str, roots: list[str] | None = None) -> tuple[bytes, str] | None:
    """The bytes and MIME type of the image file ``path`` recorded by the index, or None when it
    is gone or no longer what was recorded: a path that now resolves elsewhere (a link put in
    its place), outside ``roots`` (the image directories, when known), not a regular file, over
    :data:`MAX_IMAGE` bytes, or not an image by its bytes."""
    try:
        if os.path.realpath(path) != path:
            return None
        if roots and not any(inside(Path(path), Path(r)) for r in roots):
            return None
        # no link followed, and no wait for a writer should a FIFO have taken the file's place
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_IMAGE:
            return None
        data = f.read(MAX_IMAGE + 1)
    kind = image_type(data[:HEAD])
    return (data, kind) if kind and len(data) <= MAX_IMAGE else None


def image_files(image_dir: str | Path, ids) -> dict[str, str]:
    """The file of each image id in ``image_dir`` (named ``<id>.png``, ``.jpg`` ...): only regular
    files that resolve inside ``image_dir`` and whose bytes are an image (:mod:`.images`); the
    others are left out, with a warning."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise MissingFileError(f"{image_dir}: image directory not found")
    root = image_dir.resolve()
    files: dict[str, str] = {}
    refused = []
    for p in sorted(image_dir.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.stem in files:
            raise FormatError(f"{image_dir}: several files give image id {p.stem!r}")
        real = checked_image(p, root)
        if real is None:
            refused.append(p.name)
        else:
            files[p.stem] = real
    if refused:
        log.warning("%s: left out %d files that are no image inside the directory (links out of it, no regular "
                    "file, or bytes of no image): %s", image_dir, len(refused), ", ".join(refused[:5]))
    return {i: files[i] for i in ids if i in files}
