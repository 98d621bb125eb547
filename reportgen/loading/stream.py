"""Images in batches, decoded a few batches ahead on threads, never all at once.

A validation folder of 10,000 images at 224 px is 6 GB of float pixels: the dataset pass reads it as a stream
of batches, each decoded on a small thread pool while the model runs on the previous one (OpenCV releases the
GIL while it decodes and resizes), with at most `prefetch` batches waiting. The detail sample is read again by
index (`ImageReader.load`), so only the images that get per-image figures are ever held together.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from reportgen.errors import ImageError
from reportgen.loading.images import (
    ImageSource,
    LoadedImages,
    channel_conversion,
    decode_with_notes,
    fit_to_model,
    target_size,
)

PREFETCH_BATCHES = 2
DECODE_THREADS = 2


@dataclass(frozen=True)
class ImageBatch:
    """Images `indices` of the source list, at the model's size: display pixels in 0-255, float32 (B, H, W, C)."""

    indices: np.ndarray
    pixels: np.ndarray
    sizes: tuple[tuple[int, int], ...]  # (width, height) before resizing
    conversions: tuple[str, ...]
    inputs: np.ndarray | None = None  # the model's inputs, when the reader was given a `prepare` step


class ImageReader:
    """Decodes `sources` to the model's input size and channels; unreadable files are skipped with a warning
    naming them, the same way in every pass."""

    def __init__(self, sources: Sequence[ImageSource], input_shape: tuple[int | None, int | None, int],
                 image_size: tuple[int, int] | None = None) -> None:
        self.sources = tuple(sources)
        (self.height, self.width), size_warning = target_size(input_shape, image_size)
        self.channels = input_shape[2]
        self.warnings: list[str] = [size_warning] if size_warning else []
        self.skipped: set[int] = set()

    def _read(self, index: int) -> tuple[np.ndarray, tuple[int, int], str] | None:
        source = self.sources[index]
        try:
            image, notes = decode_with_notes(source.path)
        except (ValueError, OSError, cv2.error) as exc:
            if index not in self.skipped:
                self.skipped.add(index)
                self.warnings.append(f"skipped {source.path}: {exc}")
            return None
        conversion = ", ".join(n for n in (*notes, channel_conversion(image.shape[2], self.channels)) if n)
        return fit_to_model(image, self.height, self.width, self.channels), (image.shape[1], image.shape[0]), \
            conversion

    def _batch(self, indices: Sequence[int], prepare: Callable[[np.ndarray], np.ndarray] | None
               ) -> ImageBatch | None:
        results = [self._read(i) for i in indices]
        kept = [(i, r) for i, r in zip(indices, results, strict=True) if r is not None]
        if not kept:
            return None
        pixels = np.stack([r[0] for _, r in kept])
        return ImageBatch(np.asarray([i for i, _ in kept], np.int64), pixels, tuple(r[1] for _, r in kept),
                          tuple(r[2] for _, r in kept), prepare(pixels) if prepare else None)

    def batches(self, batch_size: int, indices: Sequence[int] | None = None, prefetch: int = PREFETCH_BATCHES,
                prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> Iterator[ImageBatch]:
        """Every image (or `indices`) in order, `batch_size` at a time, decoded up to `prefetch` batches ahead;
        `prepare` (e.g. the preprocessing) turns each batch's pixels into its `inputs` on the decoding thread."""
        order = list(range(len(self.sources)) if indices is None else indices)
        chunks = [order[i:i + batch_size] for i in range(0, len(order), max(1, batch_size))]
        with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="reportgen-decode") as pool:
            waiting: deque[Future] = deque()
            for chunk in chunks:
                waiting.append(pool.submit(self._batch, chunk, prepare))
                if len(waiting) > prefetch:
                    batch = waiting.popleft().result()
                    if batch is not None:
                        yield batch
            while waiting:
                batch = waiting.popleft().result()
                if batch is not None:
                    yield batch

    def load(self, indices: Sequence[int]) -> LoadedImages:
        """The images at `indices` held together (the detail sample), as `load_images` returns them."""
        parts = list(self.batches(max(1, len(indices)), indices))
        if not parts:
            raise ImageError("no usable image: every file failed to decode (" + "; ".join(self.warnings[-3:]) + ")")
        batch = parts[0]
        return LoadedImages(tuple(self.sources[i] for i in batch.indices), batch.pixels, batch.sizes,
                            tuple(self.warnings), batch.conversions)
