"""Decode any supported image or mask file into NumPy arrays, and write PNGs.

Conventions (the rest of the pipeline relies on them):
- images: uint8, shape (H, W, 3) for mode "RGB" or (H, W) for mode "L";
- masks: uint8 class ids, shape (H, W). Binary tasks (`num_classes: 1`) use {0, 1} (1 = foreground);
  multi-class tasks use 0..num_classes-1 (0 = background). A PNG mask therefore looks black in a
  viewer; multiply by 255 to look at a binary one.
- void: IGNORE_ID (255) marks pixels that take no part in training or scoring (nobody labelled them, or
  the dataset says they do not count). convert-to-png maps the raw void value (`convert.ignore_value`)
  to it; every later stage (loss, metrics, balancing, augmentation padding, overlays) reads it from here.
"""
from __future__ import annotations

import io
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segpipe.core.outputs import naming

SUPPORTED_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP")  # WebP may be lossless too; thresholding is right for both

# EXIF orientation tag value -> the transpose that makes the picture upright (as ImageOps.exif_transpose).
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112
_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)  # what Pillow raises on bad files
IGNORE_ID = 255  # void pixels in converted masks; so num_classes can be at most 255
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
CONTAINER_WHITE_LEVEL = 65535.0
# Pillow's own guard (89,478,485 pixels, about 9459x9459): the default of convert.max_image_pixels.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# OpenCV refuses to decode more pixels than this unless CV_IO_MAX_IMAGE_PIXELS says otherwise (16-bit colour).
OPENCV_MAX_IMAGE_PIXELS = 1 << 30
_TRANSPOSES = {  # Pillow's transposes on (H, W, C) arrays
    Image.Transpose.FLIP_LEFT_RIGHT: lambda a: a[:, ::-1],
    Image.Transpose.FLIP_TOP_BOTTOM: lambda a: a[::-1],
    Image.Transpose.ROTATE_90: lambda a: np.rot90(a, 1),
    Image.Transpose.ROTATE_180: lambda a: np.rot90(a, 2),
    Image.Transpose.ROTATE_270: lambda a: np.rot90(a, 3),
    Image.Transpose.TRANSPOSE: lambda a: a.transpose(1, 0, 2),
    Image.Transpose.TRANSVERSE: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
}


class WideColourImage:
    """A colour image of 16 bits per channel (48-bit RGB or 64-bit RGBA PNG and TIFF: microscopy, satellite
    and camera data). Pillow decodes these to 8 bits by keeping each value's high byte, which turns 12-bit
    data in 16-bit files nearly black (4095 -> 15) without a word, so OpenCV decodes them instead.

    Holds the uint16 (H, W, 3) RGB values (alpha dropped here, as image_to_array drops it for every image,
    and so that an opaque alpha of 65535 does not set the white level) and the part of Pillow's Image
    interface that segpipe uses: size, mode, format, getexif, transpose, convert and NumPy conversion."""

    mode = "RGB;16"

    def __init__(self, rgb: np.ndarray, *, format: str | None, exif: Image.Exif):
        self.rgb, self.format, self._exif = rgb, format, exif

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]

    def __array__(self, dtype=None, copy=None):
        return self.rgb if dtype is None else self.rgb.astype(dtype)

    def getexif(self) -> Image.Exif:
        return self._exif

    def transpose(self, method) -> WideColourImage:
        return WideColourImage(np.ascontiguousarray(_TRANSPOSES[method](self.rgb)), format=self.format, exif=self._exif)

    def convert(self, mode: str) -> Image.Image:
        """8-bit Pillow image in `mode`, the container's range (65535) to 255: for masks, whose values are
        labels, not intensities (images go through image_to_array and the dataset's white level)."""
        return to_8bit_gray_or_color(self).convert(mode)


def _rawmode(tile) -> str:
    args = tile.args if hasattr(tile, "args") else tile[3]
    return args if isinstance(args, str) else str(args[0]) if args else ""


def _is_wide_colour(im: Image.Image) -> bool:
    """Whether a Pillow image opened lazily (not loaded yet: its tiles name the raw mode) holds 16 bits per
    colour channel. False once loaded, and for images made in memory (no tiles)."""
    return im.mode in ("RGB", "RGBA") and any(";16" in _rawmode(tile) for tile in getattr(im, "tile", ()))


def _decode_wide_colour(path: Path, *, page: int, im: Image.Image) -> WideColourImage:
    """Page `page` of `path`, which `im` (Pillow, opened lazily; closed here) found to be 16-bit colour."""
    import cv2  # OpenCV comes with albumentations; imported here, as only 16-bit colour files need it

    with im:
        format, exif = im.format, im.getexif()
    buffer = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: any path, and pages by number
    try:
        ok, pages = cv2.imdecodemulti(buffer, cv2.IMREAD_UNCHANGED, range=(page, page + 1))
    except cv2.error:
        ok, pages = False, ()
    if not ok or not pages or pages[0].ndim != 3 or pages[0].shape[2] < 3 or pages[0].dtype != np.uint16:
        raise ValueError("cannot decode its 16 bits per colour channel (OpenCV could not read the file)")
    return WideColourImage(cv2.cvtColor(pages[0][..., :3], cv2.COLOR_BGR2RGB), format=format, exif=exif)


def open_lazily(path: Path) -> Image.Image:
    """Image.open (the header only; pixels are decoded on load) without Pillow's decompression-bomb guard,
    which raises an error no caller can act on: open_image applies segpipe's own limit instead
    (`max_pixels`, convert.max_image_pixels), naming the file, its size and the param that raises it."""
    Image.MAX_IMAGE_PIXELS = None
    return Image.open(path)


def image_pages(path: Path) -> list[int]:
    """The pages (frames) of an image file that are images: [0] for most files; every page of the first
    page's size for a multi-page TIFF stack or an animated GIF, PNG or WebP, each of which segpipe takes as
    an image of its own. Pages of another size are thumbnails or pyramid levels, not images. [0] for an
    unreadable file (open_image says why). Reads headers only (TIFF)."""
    try:
        with open_lazily(path) as im:
            return _pages_of(im)
    except _UNREADABLE:
        return [0]


def _pages_of(im: Image.Image) -> list[int]:
    """image_pages of an image opened lazily (it is left at its last page)."""
    count = getattr(im, "n_frames", 1)
    if count == 1:
        return [0]
    size, pages = im.size, []
    for page in range(count):
        im.seek(page)
        if im.size == size:
            pages.append(page)
    return pages


def open_image(path: Path, *, page: int = 0, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               max_pixels_name: str = "convert.max_image_pixels") -> Image.Image | WideColourImage:
    """Opens and fully decodes page `page` of `path` (see image_pages): a Pillow image, or a
    WideColourImage for 16 bits per colour channel. Raises ValueError with the reason if it is empty,
    unreadable, or larger than `max_pixels` (checked from the header, before anything is decoded: a
    1-bit PNG of a few kilobytes can decode to gigabytes); `max_pixels_name` is the param or flag that
    sets it, named in that error."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    with _decoder_errors():
        im = open_lazily(path)
        if page:
            im.seek(page)
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise ValueError(too_many_pixels(width, height, max_pixels=max_pixels, max_pixels_name=max_pixels_name))
    if _is_wide_colour(im):
        if width * height > OPENCV_MAX_IMAGE_PIXELS:
            im.close()
            raise ValueError(
                f"{width}x{height} = {width * height:,} pixels of 16-bit colour, more than OpenCV, which decodes "
                f"them, allows ({OPENCV_MAX_IMAGE_PIXELS:,}); set the environment variable CV_IO_MAX_IMAGE_PIXELS "
                "above that, or cut the image into tiles")
        try:
            return _decode_wide_colour(path, page=page, im=im)
        except (OSError, SyntaxError, EOFError) as err:  # Pillow reading the header's EXIF of a cut-off file
            raise ValueError(f"cannot decode as an image ({err.__class__.__name__}: {err})") from None
    with _decoder_errors():
        im.load()
    return im


def too_many_pixels(width: int, height: int, *, max_pixels: int, max_pixels_name: str) -> str:
    """The reason an image of width x height pixels is refused under `max_pixels` (see open_image)."""
    return (f"{width}x{height} = {width * height:,} pixels, more than {max_pixels_name} = {max_pixels:,} "
            "(the guard against decompression bombs: small files that decode to gigabytes); if your dataset has "
            f"images this large (whole-slide, satellite), raise {max_pixels_name} (and train with "
            "train.input: patches)")


def read_header(path: Path) -> tuple[int, int, bool, list[int]]:
    """(width, height, more than 8 bits per channel, image_pages) of `path`, the first page's, from its headers
    in one opening; a ValueError with the reason (as open_image gives it) when it is empty or not an image."""
    if Path(path).stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    with _decoder_errors(), open_lazily(path) as im:
        width, height, high_bit_depth = *im.size, is_high_bit_depth(im)  # before _pages_of moves to other pages
        try:
            pages = _pages_of(im)
        except _UNREADABLE:
            pages = [0]  # as image_pages: a page that cannot be read is named when it is decoded
        return width, height, high_bit_depth, pages


@contextmanager
def _decoder_errors():
    """A decoder's exceptions as ValueError("cannot decode as an image (...)"), the reason open_image gives."""
    try:
        yield
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as err:
        raise ValueError(f"cannot decode as an image ({err.__class__.__name__}: {err})") from None
    except (ValueError, MemoryError) as err:  # Pillow's other limits, e.g. a PNG text chunk of over 1 MB
        raise ValueError(f"cannot decode as an image ({err.__class__.__name__}: {err}); if it opens in other "
                         "programs, save it again without its metadata") from None


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1..8), 1 when absent or invalid."""
    value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    return value if value in _ORIENTATION_FIX else 1


def apply_orientation(im: Image.Image, orientation: int) -> Image.Image:
    """Returns `im` transposed the way EXIF orientation `orientation` asks (1 = unchanged)."""
    return im.transpose(_ORIENTATION_FIX[orientation]) if orientation in _ORIENTATION_FIX else im


def is_high_bit_depth(im: Image.Image | WideColourImage) -> bool:
    """Whether `im` holds more than 8 bits per channel (16-bit, 32-bit integer or float gray; 16-bit
    colour). Reads the header only, so it is cheap on a file opened lazily."""
    return isinstance(im, WideColourImage) or im.mode in HIGH_BIT_DEPTH_MODES or _is_wide_colour(im)


def white_level_of(brightest: float, *, is_float: bool) -> float:
    """The raw value that becomes white (255) for an image whose brightest pixel is `brightest`: float
    data within [0, 1] -> 1.0; otherwise the smallest 2**k - 1 (k >= 8) at or above it, the bit depth the
    sensor wrote (12-bit camera data in 16-bit files: 4095)."""
    if is_float and brightest <= 1.0:
        return 1.0
    return float(2 ** max(8, int(np.ceil(max(brightest, 0.0))).bit_length()) - 1)


def finite_values(im: Image.Image | WideColourImage) -> np.ndarray:
    """The pixel values as float64; a ValueError counting the NaN and infinite ones (float images), which
    have no intensity to map: left in, they would turn into 0 or 255 without a word."""
    values = np.asarray(im, dtype=np.float64)
    bad = values.size - int(np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ValueError(f"{bad:,} of its {values.size:,} pixels are NaN or infinite (mode {im.mode}); expected "
                         "finite values: replace them in the file (e.g. numpy.nan_to_num) or remove it")
    return values


def to_8bit_gray_or_color(im: Image.Image | WideColourImage, *, white_level: float | None = None) -> Image.Image:
    """16-bit, 32-bit and float modes to 8-bit "L" (16-bit colour: "RGB"), `white_level` -> 255 (clipped
    above); others unchanged.

    One white level for a whole dataset (convert-to-png derives it, train records it for predict),
    not a per-image stretch, so every image keeps the same intensity meaning. None: the container's
    range (65535; 1.0 for float data in [0, 1]), how models trained before white levels were recorded
    saw their images."""
    if not is_high_bit_depth(im):
        return im
    values = finite_values(im)
    if white_level is None:
        white_level = 1.0 if im.mode == "F" and values.max() <= 1.0 else CONTAINER_WHITE_LEVEL
    return Image.fromarray(np.clip(np.rint(values / white_level * 255.0), 0, 255).astype(np.uint8))


def read_white_level(path: Path) -> float | None:
    """The white level recorded in `path` (convert-to-png's white_level.json, or train's inference.json,
    which carries it to predict); None when the data had 8 bits or the record predates white levels."""
    try:
        value = json.loads(Path(path).read_text()).get("white_level")
    except (OSError, ValueError, AttributeError):
        raise ValueError(f"'{path}' is missing or unreadable; it records the white level of images of more "
                         "than 8 bits: rerun the pipeline (dvc repro).") from None
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ValueError(f"'{path}' says white_level {value!r}; expected null or a positive number: rerun the "
                         "pipeline (dvc repro).")
    return value


def image_to_array(im: Image.Image, *, image_mode: str, white_level: float | None = None) -> np.ndarray:
    """Any decoded image -> uint8 array: (H, W, 3) for image_mode "RGB", (H, W) for "L". Images of more
    than 8 bits map `white_level` to 255 (see `to_8bit_gray_or_color`).

    Transparency is dropped (alpha is not composited: segmentation labels refer to the pixels, and a
    transparent region in a photo is rare and has no right colour). Palette images use their colours.
    """
    im = to_8bit_gray_or_color(im, white_level=white_level)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    return np.asarray(im.convert(image_mode), dtype=np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """A uint8 (H, W) or (H, W, 3) array (or uint16 (H, W)) as PNG bytes with no metadata (byte-identical reruns)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def write_png(path: Path, array: np.ndarray) -> None:
    """Writes `array` (see encode_png) as a PNG file, in place: the stages write into a temp folder that
    replaces the output folder whole (segpipe.core.outputs.replace_dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_bytes(encode_png(array))
    except OSError as err:
        raise naming(err, path) from None


def read_png(path: Path) -> np.ndarray:
    """A PNG that the pipeline wrote, as it is stored: uint8 (H, W) for masks (class ids) and gray images."""
    with Image.open(path) as im:
        return np.asarray(im)
