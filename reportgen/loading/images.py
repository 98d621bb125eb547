"""Find, decode and convert images to what the model takes (size, channels); preprocessing is separate."""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from reportgen.config import MAX_PIXELS
from reportgen.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
DEFAULT_SIZE = (224, 224)  # (width, height) for models without a fixed input size and no --image-size
# Decoding allocates width x height x channels bytes at once; a 20000x20000 PNG compresses to kilobytes but would
# take 1.2 GB. Files declaring more than MAX_PIXELS (config.py) are skipped before decoding.


@dataclass(frozen=True)
class ImageSource:
    """An image file, the name the report shows for it, and its label (its class folder) when known."""

    path: Path
    name: str
    label: str | None


@dataclass(frozen=True)
class LoadedImages:
    """Images converted to the model's size and channels, as display pixels in 0-255 (float32, RGB or gray)."""

    sources: tuple[ImageSource, ...]
    pixels: np.ndarray  # (N, H, W, C) float32 in [0, 255]
    original_sizes: tuple[tuple[int, int], ...]  # (width, height) before resizing
    warnings: tuple[str, ...]
    conversions: tuple[str, ...] = ()  # per image, what was done besides resizing ("" when nothing)

    @property
    def labels(self) -> list[str | None]:
        return [source.label for source in self.sources]


def display_text(text: str) -> str:
    """A file name as text that can be written anywhere: bytes that are not UTF-8 (kept by Python as surrogate
    escapes) become `\\xNN`, so `caf\\xe9.png` is shown, stored in report.json and slugged like any other name."""
    return os.fsencode(text).decode("utf-8", "backslashreplace") if _has_surrogates(text) else text


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def _is_report_folder(path: Path) -> bool:
    """A folder reportgen wrote (the start of its report.json says so: never parsed, whatever its size), or a
    leftover of a run (`.OUT.building-*`)."""
    from reportgen.report_folder.read import looks_like_report

    return path.name.startswith(".") or looks_like_report(path)


def discover_images(inputs: Sequence[str | Path], exclude: Sequence[str | Path] = (),
                    warnings: list[str] | None = None, follow_links: bool = True) -> list[ImageSource]:
    """Expand files and folders into image files. In a folder, images in a subfolder are labelled by its name.

    Folders that are reportgen reports, hidden folders (a run's leftovers among them) and the `exclude` folders
    (the report being written) are not searched, so a report kept beside its images is never read as images; a
    folder skipped that way although it holds images itself (a class folder with a stray report.json) is named in
    a warning. File names that are not UTF-8 are kept, shown escaped, with a warning appended to `warnings`.

    Symbolic links inside the folders: a link to a regular file is followed (datasets are often folders of
    links), and named in a warning when its target lies outside every folder given; with `follow_links=False`
    every link is skipped, with a warning. Links to folders are not followed. Nothing but a regular file is ever
    listed, so a FIFO, a device or a link to one is never opened.
    """
    skipped = {Path(e).resolve() for e in exclude}
    roots = [Path(item).resolve() for item in inputs if Path(item).is_dir()]
    found: list[ImageSource] = []
    origins: dict[Path, Path] = {}  # image file -> the folder given (a file's own folder) its name is relative to
    notes: dict[str, list[str]] = {"outside": [], "links": [], "special": [], "folder links": [], "reports": []}
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found.append(ImageSource(path, display_text(path.name), None))
            origins[path] = path.parent
        elif path.is_dir():
            files: list[Path] = []
            for root, dirs, names in os.walk(path):
                here = Path(root)
                kept_dirs = []
                for d in sorted(dirs):
                    folder = here / d
                    if folder.is_symlink():
                        notes["folder links"].append(_shown(folder, path))
                    elif folder.resolve() in skipped:
                        continue
                    elif _is_report_folder(folder):
                        if not d.startswith(".") and _holds_images(folder):
                            notes["reports"].append(_shown(folder, path))
                    else:
                        kept_dirs.append(d)
                dirs[:] = kept_dirs
                for n in names:
                    if not n.lower().endswith(IMAGE_SUFFIXES):
                        continue
                    kind = _file_kind(here / n, roots, follow_links)
                    if kind in ("file", "outside"):
                        files.append(here / n)
                    if kind != "file":
                        notes[kind].append(_shown(here / n, path))
            for file in sorted(files):
                relative = file.relative_to(path)
                label = display_text(relative.parts[0]) if len(relative.parts) > 1 else None
                found.append(ImageSource(file, display_text(relative.as_posix()), label))
                origins[file] = path
        else:
            raise ImageError(f"{display_text(str(path))} does not exist: give image files or folders of images")
    seen: set[Path] = set()
    unique = []
    for source in found:
        key = source.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(source)
    unique = _unambiguous(unique, origins)
    escaped = [source.name for source in unique if _has_surrogates(str(source.path))]
    if warnings is not None:
        if escaped:
            warnings.append(f"{len(escaped)} image file name(s) are not UTF-8 and are shown escaped: {_few(escaped)}")
        messages = {
            "outside": "symbolic link(s) in IMAGES point outside the folders given and were followed (pass "
                       "--no-follow-links to skip every link)",
            "links": "symbolic link(s) in IMAGES were skipped (--no-follow-links)",
            "special": "image name(s) are not regular files (a FIFO, a device, a broken link or a link to one) and "
                       "were skipped",
            "folder links": "symbolic link(s) to folders in IMAGES were not followed",
            "reports": "folder(s) in IMAGES hold a reportgen report.json and were skipped as reports although they "
                       "hold images; move the report.json out to include their images",
        }
        for kind, message in messages.items():
            if notes[kind]:
                warnings.append(f"{len(notes[kind])} {message}: {_few(notes[kind])}")
    if not unique:
        raise ImageError(
            f"no image files in {', '.join(display_text(str(i)) for i in inputs)} "
            f"(looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return unique


def _unambiguous(sources: list[ImageSource], origins: dict[Path, Path]) -> list[ImageSource]:
    """Names that identify the images: two reports are matched image by image on their names, so when several
    folders given hold the same relative name (`generate M A B` with A/cat/1.png and B/cat/1.png), each image of
    that name is named after the folder it came from (`A/cat/1.png`, `B/cat/1.png`), whatever the folders' order.
    Other names stay as they are; folders of the same name that would still collide are bad input."""
    counts: dict[str, int] = {}
    for source in sources:
        counts[source.name] = counts.get(source.name, 0) + 1
    if all(count == 1 for count in counts.values()):
        return sources
    renamed = [source if counts[source.name] == 1 else dataclasses.replace(
        source, name=f"{display_text(origins[source.path].resolve().name or '/')}/{source.name}")
        for source in sources]
    taken: dict[str, Path] = {}
    for source in renamed:
        if source.name in taken:
            raise ImageError(f"IMAGES: {display_text(str(taken[source.name]))} and {display_text(str(source.path))} "
                             f"would both be named {source.name!r} (images are matched between reports by name); "
                             "give folders of different names, or move one of the images")
        taken[source.name] = source.path
    return renamed


def _few(items: Sequence[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _shown(path: Path, folder: Path) -> str:
    return display_text(str(path.relative_to(folder)))


def _file_kind(path: Path, roots: Sequence[Path], follow_links: bool) -> str:
    """"file" (a regular file, or a link to one inside `roots`), "outside" (a link to a regular file elsewhere),
    "links" (a link, with links not followed) or "special" (anything else: never opened)."""
    try:
        if not path.is_symlink():
            return "file" if stat.S_ISREG(path.lstat().st_mode) else "special"
        if not follow_links:
            return "links"
        if not stat.S_ISREG(path.stat().st_mode):
            return "special"
        target = path.resolve()
    except (OSError, RuntimeError):  # a broken link, a loop, a file removed meanwhile
        return "special"
    return "file" if any(target.is_relative_to(root) for root in roots) else "outside"


def _holds_images(folder: Path) -> bool:
    """True when `folder` has image files of its own (a report keeps its figures in figures/, never beside it)."""
    try:
        return any(entry.name.lower().endswith(IMAGE_SUFFIXES) for entry in os.scandir(folder))
    except OSError:
        return False


def decode_image(path: Path) -> np.ndarray:
    """Decode a file to RGB or gray uint8 (H, W, 3|1): EXIF rotation applied, alpha composited on white,
    16-bit scaled to 8-bit, palette and CMYK expanded. Raises ValueError when it is not a readable image."""
    return decode_with_notes(path)[0]


def decode_with_notes(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """`decode_image`, and what was done to the file's pixels on the way (for the report)."""
    notes: list[str] = []
    # Opened without blocking (a FIFO would wait for a writer) and read only when it is a regular file, whatever
    # the path was when the images were listed.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        raw = file.read()
    if not raw:
        raise ValueError("the file is empty")
    data = np.frombuffer(raw, dtype=np.uint8)
    declared = declared_size(raw)
    if declared is not None and declared[0] * declared[1] > MAX_PIXELS:
        raise ValueError(
            f"{declared[0]}x{declared[1]} pixels is over the {MAX_PIXELS // 1_000_000}-megapixel limit; "
            "downscale it first"
        )
    if path.suffix.lower() in (".jpg", ".jpeg"):
        # IMREAD_COLOR applies the EXIF orientation and converts CMYK and gray JPEGs to BGR.
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    else:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not a readable image (truncated, corrupt or not an image)")
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
        notes.append("16-bit scaled to 8-bit")
    elif image.dtype != np.uint8:
        image = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        notes.append(f"{image.dtype} values stretched to 0-255")
    if image.ndim == 2:
        return image[:, :, None], tuple(notes)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        image = (image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
        notes.append("alpha composited on white")
    if image.shape[2] == 1:
        return image, tuple(notes)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), tuple(notes)


def channel_conversion(decoded: int, channels: int) -> str:
    """What `fit_to_model` does to the colours: "" when nothing."""
    if decoded == channels:
        return ""
    if channels == 3 and decoded == 1:
        return "grey repeated to 3 channels"
    if channels == 1 and decoded == 3:
        return "RGB to grey (Rec. 601 luma)"
    return f"{decoded} to {channels} channels"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C0-CF but C4 Huffman tables, C8 reserved, CC arithmetic coding) carry the size.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a file's header alone, without decoding pixels; None when the header is unreadable.

    PNG, JPEG, GIF and BMP headers are read from the bytes (a few microseconds); other formats through Pillow (a
    matplotlib dependency), which reads headers lazily. OpenCV has no header-only call."""
    try:
        if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data.startswith(b"BM") and len(data) >= 26:
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
                return struct.unpack("<HH", data[18:22])
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)  # a negative height is a top-down bitmap
    except struct.error:
        return None
    return _pillow_size(data)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the first frame header of a JPEG, walking its marker segments."""
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            at += 2
            continue
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width, height
        at += 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
    return None


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    # Pillow refuses to even open files far over its own limit (DecompressionBombError); opening only reads the
    # header, so lift the limit for this call to get the real size for the message, then put it back.
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def fit_to_model(image: np.ndarray, height: int, width: int, channels: int) -> np.ndarray:
    """Resize to (height, width) and convert to `channels` (1 or 3); float32 in [0, 255]."""
    h, w = image.shape[:2]
    interpolation = cv2.INTER_AREA if h * w > height * width else cv2.INTER_LINEAR
    resized = image if (h, w) == (height, width) else cv2.resize(image, (width, height), interpolation=interpolation)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    if channels == 3 and resized.shape[2] == 1:
        resized = np.repeat(resized, 3, axis=2)
    elif channels == 1 and resized.shape[2] == 3:
        resized = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)[:, :, None]
    elif resized.shape[2] != channels:
        raise ImageError(f"the model takes {channels}-channel images; reportgen converts to 1 or 3 channels only")
    return resized.astype(np.float32)


def target_size(
    input_shape: tuple[int | None, int | None, int], image_size: tuple[int, int] | None
) -> tuple[tuple[int, int], str | None]:
    """The (height, width) images are resized to, and a warning when it had to be guessed."""
    height, width, _ = input_shape
    if height is not None and width is not None:
        if image_size is not None and (image_size[1], image_size[0]) != (height, width):
            raise ImageError(
                f"--image-size: the model takes {width}x{height} images only; leave --image-size out"
            )
        return (height, width), None
    if image_size is not None:
        return (image_size[1], image_size[0]), None
    w, h = DEFAULT_SIZE
    return (h, w), f"the model has no fixed input size; images were resized to {w}x{h} (set --image-size)"


def load_images(
    sources: Sequence[ImageSource],
    input_shape: tuple[int | None, int | None, int],
    image_size: tuple[int, int] | None = None,
) -> LoadedImages:
    """Decode and convert every image; unreadable files are skipped with a warning naming them."""
    (height, width), size_warning = target_size(input_shape, image_size)
    channels = input_shape[2]
    kept: list[ImageSource] = []
    arrays: list[np.ndarray] = []
    sizes: list[tuple[int, int]] = []
    conversions: list[str] = []
    warnings: list[str] = [size_warning] if size_warning else []
    for source in sources:
        try:
            image, notes = decode_with_notes(source.path)
        except (ValueError, OSError, cv2.error) as exc:
            warnings.append(f"skipped {display_text(str(source.path))}: {exc}")
            continue
        kept.append(source)
        sizes.append((image.shape[1], image.shape[0]))
        conversions.append(", ".join(n for n in (*notes, channel_conversion(image.shape[2], channels)) if n))
        arrays.append(fit_to_model(image, height, width, channels))
    if not kept:
        raise ImageError(
            "no usable image: every file failed to decode (" + "; ".join(warnings[-3:]) + ")"
        )
    return LoadedImages(tuple(kept), np.stack(arrays), tuple(sizes), tuple(warnings), tuple(conversions))
