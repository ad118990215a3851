"""Image files as every stage reads them: the size from the header before any pixel is decoded,
and the EXIF orientation, which no stage applies.

- **Pixel limit.** A 900 kB PNG can hold 30000 x 30000 pixels, 2.7 GB once decoded, and
  torchvision's decoders (libjpeg-turbo, libpng, libwebp) have no limit of their own (PIL's
  Image.MAX_IMAGE_PIXELS guards only what PIL decodes). So the header's size is checked first:
  `open_within` refuses an image above the configured limit before decoding it.
- **EXIF orientation is ignored everywhere**: images are used as stored, which is how COCO's
  images are stored and how COCO's annotations and tools (pycocotools, the COCO API) read them,
  and how torchvision's and PIL's decoders return them. Applying it on one backend and not on
  another, or on an image and not on its label map, misaligns images and labels. When a
  stored size disagrees with the annotations, `size_mismatch` says whether the file's
  Orientation tag explains it.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from contextlib import contextmanager
from typing import Iterator

from PIL import Image

# The default limit is PIL's own warning threshold (Image.MAX_IMAGE_PIXELS): 268 MB as 8-bit
# RGB, far above any ImageNet or COCO image. PIL refuses to open images above twice that, so
# a limit cannot be set higher.
MAX_PIXELS = 89_478_485
HARD_LIMIT = 2 * MAX_PIXELS
ORIENTATION = 0x0112  # the EXIF tag
ROTATIONS = {5: "transposed", 6: "rotated 90 degrees clockwise", 7: "transversed",
             8: "rotated 90 degrees counter-clockwise"}  # the tags that swap width and height


class ImageTooLarge(ValueError):
    """An image whose header gives more pixels than the limit; it was not decoded."""


def check_limit(limit, key: str) -> str | None:
    """What is wrong with a configured pixel limit, or None."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= HARD_LIMIT:
        return (f"{key}={limit!r} must be a number of pixels in [1, {HARD_LIMIT:,}] (default "
                f"{MAX_PIXELS:,}; PIL refuses larger images itself)")
    return None


def check_pixels(width: int, height: int, limit: int, key: str) -> None:
    """ImageTooLarge when width x height exceeds `limit`, naming the key that sets it."""
    if width * height > limit:
        raise ImageTooLarge(f"{width}x{height} = {width * height:,} pixels, more than "
                            f"{key}={limit:,}; not decoded")


@contextmanager
def open_within(source: str | os.PathLike | bytes | memoryview, limit: int,
                key: str) -> Iterator[Image.Image]:
    """The image at `source` (a path or the file's bytes) opened by PIL, which reads only the
    header, with its size checked against `limit`: ImageTooLarge above it; PIL's errors
    (OSError, ...) for a file that is not an image. Nothing is decoded until the caller asks."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, memoryview)) else source
    try:
        with warnings.catch_warnings():  # the limit is ours: PIL's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp)
    except Image.DecompressionBombError as e:  # above twice PIL's limit, so above ours too
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(found[1]):,}" if found else f"more than {HARD_LIMIT:,}"
        raise ImageTooLarge(f"{pixels} pixels, more than {key}={limit:,}; not decoded") from None
    with image:
        check_pixels(image.width, image.height, limit, key)
        yield image


def orientation(image: Image.Image) -> int:
    """The EXIF Orientation tag of an opened image (1, upright, when it has none)."""
    try:
        return int(image.getexif().get(ORIENTATION, 1))
    except (ValueError, TypeError, OSError, SyntaxError):  # a malformed EXIF block
        return 1


def size_mismatch(file: str, image: Image.Image, expected: tuple[int, int], what: str) -> str:
    """Why the image `file` (opened: `image`) does not fit `expected` (width, height), for an
    error message: `what` names where the expected size comes from. The file's EXIF
    Orientation tag is named when it swaps the two sides (a camera's file, annotated as a
    viewer shows it)."""
    width, height = image.size
    message = (f"{file} is stored as {width}x{height} pixels (width x height), but {what} is "
               f"{expected[0]}x{expected[1]}: the labels would not fall on the objects.")
    tag = orientation(image)
    if tag in ROTATIONS and (height, width) == tuple(expected):
        return (f"{message} The file has an EXIF Orientation tag ({tag}: "
                f"{ROTATIONS[tag]}), which viewers apply and kdcl-bench does not: images are "
                f"used as stored, as COCO's images are and as COCO's tools read them. Rotate "
                f"the file's pixels upright and drop the tag (e.g. `exiftran -ai FILE`, or "
                f"PIL's ImageOps.exif_transpose, then save), or label the image as stored.")
    return f"{message} Are these the labels of this image?"
