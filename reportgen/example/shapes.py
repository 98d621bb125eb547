"""A deterministic synthetic dataset of simple shapes: circles, squares, triangles and stars.

Each image holds one filled shape of random colour, size, position and rotation on a solid or gradient
background, plus Gaussian noise. The shape always contrasts with the background (one is dark, the other light)
so the class is visible to a person at a glance, and its tight bounding box is known exactly, which lets a
report check whether a class activation map looks at the shape. Pure numpy + OpenCV; the same `seed` gives
the same images on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CLASS_NAMES = ("circle", "square", "triangle", "star")

MIN_EXTENT = 0.25  # shape diameter (its circumscribed circle) as a fraction of the image side
MAX_EXTENT = 0.60

# Rec. 601 luma weights: contrast is judged on brightness so that it holds whatever the hues are.
_LUMA = np.array([0.299, 0.587, 0.114])
_DARK = (0.0, 95.0)  # luma range of the dark one of (shape, background)...
_LIGHT = (160.0, 255.0)  # ...and of the light one: at least 65 levels apart, far more than the noise

# Shapes are drawn at 4x resolution and averaged down, with fixed-point vertices (4 fractional bits: 1/16 of a
# high-resolution pixel), so small shapes keep their proportions instead of snapping to the pixel grid.
_SUPERSAMPLE = 4
_SHIFT = 4
_ONE = 1 << _SHIFT

# One full turn of rotation per class after which the shape looks the same (a circle has no rotation).
_SYMMETRY = {"square": np.pi / 2, "triangle": 2 * np.pi / 3, "star": 2 * np.pi / 5}


@dataclass(frozen=True)
class ShapesData:
    """`n` images with their labels and the bounding boxes of their shapes."""

    images: np.ndarray  # (n, size, size, 3) uint8 RGB
    labels: np.ndarray  # (n,) int64, index into CLASS_NAMES
    boxes: np.ndarray  # (n, 4) int64 (x0, y0, x1, y1) in pixels; x1, y1 exclusive: images[i, y0:y1, x0:x1]

    def __len__(self) -> int:
        return len(self.labels)


def generate(n: int, seed: int, size: int = 64) -> ShapesData:
    """Draw `n` images of `size` x `size` pixels, classes balanced (counts differ by at most one)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    rng = np.random.default_rng(seed)
    # Balanced classes in random order: a permutation of 0,1,2,3,0,1,... rather than independent draws.
    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(CLASS_NAMES))
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    boxes = np.empty((n, 4), dtype=np.int64)
    # Pixel-centre coordinates, shared by every gradient background.
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    for i, label in enumerate(labels):
        images[i], boxes[i] = _draw_one(rng, CLASS_NAMES[label], size, xs, ys)
    return ShapesData(images=images, labels=labels, boxes=boxes)


def _draw_one(
    rng: np.random.Generator, shape: str, size: int, xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One image and its box. Draws from `rng` in a fixed order, which is what makes `generate` deterministic."""
    radius = 0.5 * size * rng.uniform(MIN_EXTENT, MAX_EXTENT)
    # Keep the circumscribed circle one pixel clear of the border: anti-aliased edges spill over by about one.
    cx, cy = rng.uniform(radius + 1.0, size - 1.0 - radius, size=2)
    angle = rng.uniform(0.0, _SYMMETRY.get(shape, 0.0))
    mask = _shape_mask(shape, size, cx, cy, radius, angle, star_ratio=rng.uniform(0.38, 0.5))

    dark_shape = rng.random() < 0.5
    shape_colour = _colour(rng, *(_DARK if dark_shape else _LIGHT))
    background = _background(rng, _LIGHT if dark_shape else _DARK, xs, ys)

    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    image = background * (1.0 - alpha) + shape_colour.astype(np.float32) * alpha
    sigma = rng.uniform(2.0, 10.0)
    image += sigma * rng.standard_normal(image.shape, dtype=np.float32)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return pixels, _tight_box(mask)


def _shape_mask(
    shape: str, size: int, cx: float, cy: float, radius: float, angle: float, star_ratio: float
) -> np.ndarray:
    """A (size, size) uint8 coverage mask: 255 inside the shape, partial coverage on its edges."""
    # Draw aliased at _SUPERSAMPLE x the resolution, then average down: exact-ish coverage. OpenCV's own
    # anti-aliasing (LINE_AA) grows every shape by about a pixel, which would make the boxes too loose.
    big = np.zeros((size * _SUPERSAMPLE, size * _SUPERSAMPLE), dtype=np.uint8)
    # cv2 puts integer coordinates at pixel centres; our geometry puts them at pixel corners, hence the -0.5.
    centre = (cx * _SUPERSAMPLE - 0.5, cy * _SUPERSAMPLE - 0.5)
    r = radius * _SUPERSAMPLE
    if shape == "circle":
        cv2.circle(big, (_fixed(centre[0]), _fixed(centre[1])), _fixed(r), 255, cv2.FILLED, cv2.LINE_8, _SHIFT)
    else:
        if shape == "square":
            # Vertices on the diagonals: at angle 0 the square is axis-aligned.
            radii, angles = np.full(4, r), angle + np.pi / 4 + np.arange(4) * np.pi / 2
        elif shape == "triangle":
            # Equilateral, apex up at angle 0.
            radii, angles = np.full(3, r), angle - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        elif shape == "star":
            # Five points alternating with inner vertices; a thin waist keeps it unlike a pentagon or a circle.
            radii = np.where(np.arange(10) % 2 == 0, r, r * star_ratio)
            angles = angle - np.pi / 2 + np.arange(10) * np.pi / 5
        else:
            raise ValueError(f"unknown shape {shape!r}; expected one of {CLASS_NAMES}")
        points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(big, [np.round(points * _ONE).astype(np.int32)], 255, cv2.LINE_8, _SHIFT)
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


def _fixed(value: float) -> int:
    """A coordinate in OpenCV's fixed-point format."""
    return round(value * _ONE)


def _colour(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A random RGB colour (float64, 0-255) with luma in [low, high].

    Rejection sampling keeps every hue possible; each range covers about a third of the RGB cube, so this
    takes a few tries on average.
    """
    while True:
        colour = rng.uniform(0.0, 255.0, size=3)
        if low <= colour @ _LUMA <= high:
            return colour


def _background(rng: np.random.Generator, luma: tuple[float, float], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A solid or linear-gradient (size, size, 3) float32 background, every pixel's luma within `luma`."""
    start = _colour(rng, *luma).astype(np.float32)
    if rng.random() < 0.5:
        return np.broadcast_to(start, (*xs.shape, 3)).copy()
    end = _colour(rng, *luma).astype(np.float32)
    # Luma is linear in RGB, so blending two colours in range keeps every pixel in range.
    direction = rng.uniform(0.0, 2 * np.pi)
    t = xs * np.cos(direction) + ys * np.sin(direction)
    t = ((t - t.min()) / (t.max() - t.min()))[..., None]
    return start * (1.0 - t) + end * t


def _tight_box(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1), x1 and y1 exclusive, of the pixels at least half covered by the shape."""
    inside = mask >= 128
    cols = np.flatnonzero(inside.any(axis=0))
    rows = np.flatnonzero(inside.any(axis=1))
    if cols.size == 0:  # cannot happen at MIN_EXTENT, but an empty box beats an IndexError
        return np.zeros(4, dtype=np.int64)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.int64)
