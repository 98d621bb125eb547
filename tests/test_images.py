"""Image discovery and conversion: formats, channels, bit depth, alpha, EXIF rotation, labels, bad files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from reportgen.errors import ImageError
from reportgen.loading.images import (
    declared_size,
    decode_image,
    discover_images,
    fit_to_model,
    load_images,
    target_size,
)
from reportgen.loading.preprocess import Preprocessor


def _gradient(h=20, w=30):
    """An RGB test image whose colour says where it is: red grows to the right, green downwards."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)], axis=2).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".webp", ".tiff"])
def test_lossless_formats_roundtrip_to_rgb(tmp_path, suffix):
    rgb = _gradient()
    path = tmp_path / f"image{suffix}"
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if suffix == ".webp" else []  # 101 = lossless WebP
    cv2.imwrite(str(path), rgb[:, :, ::-1], params)
    np.testing.assert_array_equal(decode_image(path), rgb)


def test_jpeg_decodes_to_rgb(tmp_path):
    rgb = _gradient()
    path = tmp_path / "image.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    assert np.abs(decode_image(path).astype(int) - rgb).mean() < 4  # red stays red: channel order is RGB


def test_grayscale_becomes_three_channels_and_rgb_becomes_gray(tmp_path):
    gray = _gradient()[:, :, 0]
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), gray)
    image = decode_image(path)
    assert image.shape == (20, 30, 1)
    rgb = fit_to_model(image, 20, 30, 3)
    assert rgb.shape == (20, 30, 3) and np.all(rgb[..., 0] == rgb[..., 2])
    back = fit_to_model(np.repeat(image, 3, axis=2), 20, 30, 1)
    np.testing.assert_allclose(back[..., 0], gray, atol=1)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = decode_image(path)
    np.testing.assert_array_equal(image[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(image[3, 0], [255, 255, 255])


def test_palette_image_is_expanded(tmp_path):
    path = tmp_path / "palette.png"
    Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)
    image = decode_image(path)
    assert image.shape == (20, 30, 3)
    assert image[:, -1, 0].mean() > image[:, 0, 0].mean() + 100  # still red on the right


def test_16_bit_png_is_scaled_to_8_bit(tmp_path):
    path = tmp_path / "deep.png"
    deep = (_gradient().astype(np.uint16) * 257)[:, :, ::-1]
    cv2.imwrite(str(path), deep)
    np.testing.assert_array_equal(decode_image(path), _gradient())


def test_exif_rotation_is_applied(tmp_path):
    wide = _gradient(20, 30)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(wide).save(path, exif=exif, quality=95)
    image = decode_image(path)
    # Turned the way the camera meant (clockwise), not just transposed: compare with the rotated pixels.
    np.testing.assert_allclose(image, np.rot90(wide, k=-1), atol=12)
    assert np.abs(image.astype(int) - np.rot90(wide, k=1)).mean() > 40


def test_discovery_labels_from_class_folders(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        cv2.imwrite(str(tmp_path / label / "a.png"), _gradient())
    cv2.imwrite(str(tmp_path / "loose.png"), _gradient())
    (tmp_path / "notes.txt").write_text("not an image")
    sources = discover_images([tmp_path])
    assert [(s.name, s.label) for s in sources] == [("cat/a.png", "cat"), ("dog/a.png", "dog"),
                                                     ("loose.png", None)]


def test_unreadable_files_are_skipped_with_a_warning(tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), _gradient())
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    fake = tmp_path / "fake.png"
    fake.write_text("<html>not an image</html>")
    loaded = load_images(discover_images([tmp_path]), (16, 16, 3))
    assert [s.name for s in loaded.sources] == ["good.png"]
    assert loaded.pixels.shape == (1, 16, 16, 3)
    warnings = " ".join(loaded.warnings)
    for name in ("truncated.png", "empty.jpg", "fake.png"):
        assert name in warnings


def test_no_usable_image_is_an_error(tmp_path):
    (tmp_path / "fake.png").write_text("nope")
    with pytest.raises(ImageError, match="no usable image"):
        load_images(discover_images([tmp_path]), (16, 16, 3))
    with pytest.raises(ImageError, match="does not exist"):
        discover_images([tmp_path / "missing"])
    (tmp_path / "fake.png").unlink()
    with pytest.raises(ImageError, match="no image files"):
        discover_images([tmp_path])


def test_target_size_rules():
    assert target_size((32, 48, 3), None) == ((32, 48), None)
    assert target_size((None, None, 3), (64, 40)) == ((40, 64), None)
    size, warning = target_size((None, None, 3), None)
    assert size == (224, 224) and "--image-size" in warning
    with pytest.raises(ImageError, match="--image-size"):
        target_size((32, 32, 3), (64, 64))


@pytest.mark.parametrize("mode,module", [("caffe", "vgg16"), ("tf", "xception"), ("torch", "densenet")])
def test_preprocessing_matches_keras_and_inverts(keras, mode, module):
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    preprocessor = Preprocessor(mode)
    expected = getattr(keras.applications, module).preprocess_input(pixels.copy())
    np.testing.assert_allclose(preprocessor.apply(pixels), expected, atol=1e-4)
    np.testing.assert_allclose(preprocessor.invert(preprocessor.apply(pixels)), pixels, atol=1e-3)
    low, high = preprocessor.valid_range()
    assert np.all(low < high)


def test_animated_gif_uses_its_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((10, 12, 3), value, np.uint8)) for value in (10, 200)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = decode_image(path)
    assert image.shape == (10, 12, 3) and abs(int(image[0, 0, 0]) - 10) <= 2


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(np.full((10, 12, 3), (200, 30, 30), np.uint8)).convert("CMYK").save(path, quality=95)
    image = decode_image(path)
    assert image.shape == (10, 12, 3) and image[5, 5, 0] > 150 > image[5, 5, 1]


@pytest.mark.parametrize("options", [{"format": "PNG"}, {"format": "JPEG"}, {"format": "JPEG", "progressive": True},
                                     {"format": "JPEG", "exif": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"},
                                     {"format": "GIF"}, {"format": "BMP"}, {"format": "WEBP"}, {"format": "TIFF"}])
def test_declared_size_read_from_the_header_is_the_size_pillow_reads(options):
    import io

    for width, height in ((37, 21), (1, 300), (640, 2)):
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, **options)
        data = buffer.getvalue()
        with Image.open(io.BytesIO(data)) as image:
            assert declared_size(data) == image.size == (width, height)
    assert declared_size(data[:5]) is None and declared_size(b"\xff\xd8\xff\xe0") is None


def test_huge_image_is_refused_before_decoding(tmp_path):
    """A 20000x20000 PNG is a few hundred kilobytes on disk but 1.2 GB decoded: skipped with a message."""
    import zlib

    width = height = 20000
    row = b"\x00" + bytes(width)  # filter byte + one gray row
    raw = zlib.compress(row * height, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="20000x20000 pixels is over the 80-megapixel limit"):
        decode_image(path)
    # In a run the file is skipped with a warning naming it, and the other images go on.
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), _gradient())
    loaded = load_images(discover_images([path, small]), (16, 16, 3))
    assert [source.name for source in loaded.sources] == ["small.png"]
    assert any(str(path) in w and "20000x20000" in w for w in loaded.warnings)


def test_report_folders_and_out_inside_images_are_skipped(tmp_path, saved_models):
    from conftest import write_images

    from reportgen.api import generate_report
    from reportgen.config import ReportOptions
    from reportgen.loading.images import discover_images

    images = write_images(tmp_path / "images")
    before = discover_images([images])
    generate_report(saved_models["plain"], [images], images / "report", ReportOptions(sections=("summary",)))
    (images / ".report.building-abc123").mkdir()  # a leftover staging folder
    cv2.imwrite(str(images / ".report.building-abc123" / "x.png"), np.zeros((8, 8, 3), np.uint8))
    assert discover_images([images]) == before
    # OUT itself is skipped even before it is a report.
    (images / "next").mkdir()
    cv2.imwrite(str(images / "next" / "y.png"), np.zeros((8, 8, 3), np.uint8))
    assert discover_images([images], exclude=[images / "next"]) == before
    generate_report(saved_models["plain"], [images], images / "next", ReportOptions(sections=("summary",)),
                    force=True)
    import json

    manifest = json.loads((images / "next" / "report.json").read_text())
    assert {i["label"] for i in manifest["images"]} == {"cat", "dog"}
    generate_report(saved_models["plain"], [images], images / "report", ReportOptions(sections=("summary",)))
    manifest = json.loads((images / "report" / "report.json").read_text())
    assert {i["label"] for i in manifest["images"]} == {"cat", "dog"}


def test_non_utf8_file_names_are_kept_escaped(tmp_path, saved_models):
    import json
    import os

    from reportgen.api import generate_report
    from reportgen.config import ReportOptions

    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    name = os.fsdecode(b"caf\xe9-\xff.png")
    cv2.imwrite(str(folder / "cat" / "ok.png"), np.zeros((8, 8, 3), np.uint8))
    assert cv2.imwrite(str(folder / "cat" / "ok2.png"), np.full((8, 8, 3), 200, np.uint8))
    (folder / "cat" / "ok2.png").rename(folder / "cat" / name)
    out = tmp_path / "out"
    result = generate_report(saved_models["plain"], [folder], out, ReportOptions(sections=("summary",)))
    manifest = json.loads((out / "report.json").read_text(encoding="utf-8"))
    names = sorted(i["name"] for i in manifest["images"])
    assert names == ["cat/caf\\xe9-\\xff.png", "cat/ok.png"]
    assert any("not UTF-8" in w for w in result.warnings)
