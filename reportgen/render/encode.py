"""Figures to PNG (figures/) and to what the page embeds (the smaller of the PNG and a WebP), on a small thread
pool while the sections compute (`FigureEncoder`), with plots drawn by the plotting worker."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from reportgen.plot_worker import BACKGROUND_NICENESS, PlotWorker, plot_function
from reportgen.report import EncodedImage, PendingImage, Section

# OpenCVs older than the `IMWRITE_PNG_FILTER` key (reportgen allows them) let libpng choose each row's filter.
PNG_PARAMETERS = [cv2.IMWRITE_PNG_COMPRESSION, 6] + (
    [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP] if hasattr(cv2, "IMWRITE_PNG_FILTER") else [])


def encode_png(pixels: np.ndarray) -> bytes:
    """RGB uint8 -> PNG bytes (OpenCV; deterministic for the same pixels).

    One row filter, "up", instead of libpng's per-row choice among all five: the figures are tiles enlarged by
    repeating rows and pixels, which "up" predicts best, so the files come out as small (within 4%, smaller on
    the demo) for half the encoding time, the largest CPU cost of a small model's report after the model's own.
    """
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(pixels[:, :, ::-1]), PNG_PARAMETERS)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


# The page embeds a lossy WebP of a figure when it is at most this share of the PNG. Measured on the example
# report: heat-map overlays and feature-map grids are 3-4x smaller as WebP at quality 90 with no visible change,
# while plots, kernel grids and tables of flat colour are smaller as PNG (and stay exact). Lossless WebP was
# 25% smaller than PNG but 7x slower to encode. Chromium, Firefox and Safari decode WebP data URIs.
WEBP_QUALITY = 90


WEBP_SHARE = 0.8


# libwebp's effort (0-6): encoding was the largest share of a small model's report (1.4 s of CPU for the 119
# figures of a 3-conv CNN's, against 5 s for everything else); 2 takes half the time of the default 4 for 6% more
# WebP bytes (2% more page). Pillow's encoder releases the GIL, as OpenCV's does.
WEBP_METHOD = 2


def encode_webp(pixels: np.ndarray, quality: int = WEBP_QUALITY) -> bytes | None:
    """RGB uint8 -> lossy WebP bytes (libwebp through Pillow, `WEBP_METHOD`), or None without a WebP encoder."""
    from PIL import Image, features

    if not features.check("webp"):
        return None
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "WEBP", quality=quality, method=WEBP_METHOD)
    return buffer.getvalue()


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"figure pixels must be (H, W, 3) uint8, got {pixels.dtype} {pixels.shape}")


def encode_image(pixels: np.ndarray, page: bool = True) -> EncodedImage:
    """A figure's pixels as PNG for figures/ and, for the page, the smaller of that PNG and a WebP. `page=False`
    for a figure the page only links to: no WebP is made for it."""
    _check_pixels(pixels)
    height, width = pixels.shape[:2]
    png = encode_png(pixels)
    webp = encode_webp(pixels) if page else None
    if webp is not None and len(webp) <= WEBP_SHARE * len(png):
        return EncodedImage(png, width, height, webp, "image/webp")
    return EncodedImage(png, width, height, png, "image/png")


# Raw pixels handed to the encoder and not yet compressed, at most: beyond it, the builder handing in one more
# figure waits, so pixels never pile up faster than they are compressed. In bytes, not figures: a small model's
# section hands in dozens of small figures at once and goes on to the next section while they compress.
ENCODER_BACKLOG_BYTES = 64 * 1024 * 1024


# What a plot counts for in that backlog before it is drawn: the pixels of a 6.4 x 3.2 inch plot at 100 dpi, and
# room for its data.
PLOT_BACKLOG_BYTES = 1024 * 1024


class _Backlog:
    """Bytes held by figures waiting to be compressed, bounded by `limit`: `take` waits for room (a figure alone is
    always let in, however large), `give_back` makes it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._room = threading.Condition()

    def take(self, size: int) -> None:
        with self._room:
            self._room.wait_for(lambda: self._held == 0 or self._held + size <= self._limit)
            self._held += size

    def give_back(self, size: int) -> None:
        with self._room:
            self._held -= size
            self._room.notify_all()


def _yield_to_the_model() -> None:
    """Lower the calling (encoder) thread's scheduling priority to `plot_worker.BACKGROUND_NICENESS` (Linux)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: the default priority
        pass


class FigureEncoder:
    """`Analysis.encode`: compresses each figure on a small thread pool while the builders compute the next ones
    (the PNG and WebP encoders release the GIL, so encoding overlaps the model's work and Python's). Returns a
    `PendingImage` at once; the renderer waits for each. The pixels passed in must not be changed afterwards."""

    def __init__(self, workers: int | None = None, plots: bool = False) -> None:
        self.workers = workers or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="reportgen-encode",
                                        initializer=_yield_to_the_model)
        self._backlog = _Backlog(ENCODER_BACKLOG_BYTES)
        self._prefetched: dict[str, tuple[np.ndarray, PendingImage]] = {}
        # Started now, so the worker imports matplotlib while the model loads.
        self._plots = PlotWorker() if plots else None

    def __call__(self, pixels: np.ndarray, page: bool = True) -> PendingImage:
        _check_pixels(pixels)  # a wrong figure fails where it is made, not at render time
        self._backlog.take(pixels.nbytes)
        future = self._pool.submit(encode_image, pixels, page)
        future.add_done_callback(lambda _: self._backlog.give_back(pixels.nbytes))
        return PendingImage(future)

    def plot(self, draw: Callable[..., np.ndarray], *args: Any, page: bool = True, **kwargs: Any) -> PendingImage:
        """`Analysis.plot`: `draw(*args, **kwargs)`, a plotting function of `figures`, drawn by the plotting
        worker process (`plot_worker`) and then encoded here; returns at once. Without a worker it is drawn
        now, in this process."""
        if self._plots is None:
            return self(draw(*args, **kwargs), page)
        plot_function(draw.__name__)  # only figures.plot_*: refused here, before it takes a place in the backlog
        self._backlog.take(PLOT_BACKLOG_BYTES)
        encoded: Future[EncodedImage] = Future()

        def finish(drawn: Future[np.ndarray]) -> None:
            try:
                pixels = drawn.result()
                _check_pixels(pixels)
                encoded.set_result(encode_image(pixels, page))
            except BaseException as exc:  # the renderer's result() raises it where the figure is written
                encoded.set_exception(exc)
            finally:
                self._backlog.give_back(PLOT_BACKLOG_BYTES)

        self._plots.submit(draw, *args, **kwargs).add_done_callback(lambda drawn: self._pool.submit(finish, drawn))
        return PendingImage(encoded)

    def prefetch(self, section: Section) -> None:
        """Start encoding a built section's figures that still hold raw pixels (plots, small grids), so they are
        compressed while the next section computes; `write_report` picks them up by key."""
        for figure in section.figures():
            if isinstance(figure.pixels, np.ndarray) and figure.key not in self._prefetched:
                self._prefetched[figure.key] = (figure.pixels, self(figure.pixels, figure.embed))

    def prefetched(self, key: str, pixels: np.ndarray) -> EncodedImage | None:
        """The encoding `prefetch` started for the figure `key` with these very pixels, or None."""
        entry = self._prefetched.get(key)
        return entry[1].result() if entry is not None and entry[0] is pixels else None

    def close(self) -> None:
        """Wait for every figure handed in, then stop the threads and the plotting worker."""
        if self._plots is not None:
            self._plots.close()
            self._plots = None
        self._pool.shutdown(wait=True)

    def __enter__(self) -> FigureEncoder:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None and self._plots is not None:
            self._plots.close(finish=False)  # the report failed: its plots are not wanted
        self.close()
