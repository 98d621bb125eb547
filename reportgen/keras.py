"""`ReportCallback`: a Keras callback that archives a report of the model while it trains.

    model.fit(x, y, epochs=30, callbacks=[ReportCallback(["val_images/"], "reports/", every_n_epochs=10)])

writes reports/epoch-0010/, reports/epoch-0020/, reports/epoch-0030/: each a full report of the model as it was
at the end of that epoch (version `epoch-0010`), ready for `reportgen diff` or `reportgen publish`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras  # the top-level Keras package: imports are absolute, this module is reportgen.keras

from reportgen.config import ReportOptions
from reportgen.errors import InputError
from reportgen.progress import Progress


def epoch_folder(epoch: int) -> str:
    """The archive folder of a 1-based epoch number: `epoch-0003` (zero-padded, so folders sort in order)."""
    return f"epoch-{epoch:04d}"


class ReportCallback(keras.callbacks.Callback):
    """Write a report of the in-training model every `every_n_epochs` epochs (and after the last one when
    `at_train_end`) to `out_dir/epoch-NNNN/`.

    The report is computed in inference mode and leaves the model's weights and optimizer untouched. It draws its
    random numbers from streams of its own seed (`seeds`) and leaves every process-wide random state as it found it
    (the freshly initialised copy is seeded inside `seeds.keras_weights`, which restores them), so a data pipeline
    using Python's or NumPy's random state continues as it would have.
    """

    def __init__(
        self,
        images: Sequence[str | Path],
        out_dir: str | Path,
        every_n_epochs: int = 1,
        at_train_end: bool = True,
        options: ReportOptions | None = None,
        class_names: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise InputError(f"every_n_epochs: must be at least 1, got {every_n_epochs}")
        if isinstance(images, (str, Path)):
            images = [images]
        self.images = list(images)
        self.out_dir = Path(out_dir)
        self.every_n_epochs = every_n_epochs
        self.at_train_end = at_train_end
        self.options = options or ReportOptions()
        self.class_names = list(class_names) if class_names is not None else None
        self.progress = progress
        self.written: list[Path] = []  # report folders, in the order they were written
        self._last_epoch = 0  # 1-based number of the last finished epoch
        self._last_written: int | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._last_written = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._last_epoch = epoch + 1  # Keras counts epochs from 0; folders count them as people do
        if self._last_epoch % self.every_n_epochs == 0:
            self.write_report(self._last_epoch)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.at_train_end and self._last_epoch > 0 and self._last_written != self._last_epoch:
            self.write_report(self._last_epoch)

    def write_report(self, epoch: int) -> Path:
        """Write the report of the model as it is now, as epoch `epoch`; returns its folder."""
        from reportgen.api import generate_report

        version = epoch_folder(epoch)
        if self.options.model_version:
            version = f"{self.options.model_version}-{version}"
        options = dataclasses.replace(self.options, model_version=version)
        out = self.out_dir / epoch_folder(epoch)
        generate_report(self.model, self.images, out, options, class_names=self.class_names, progress=self.progress)
        self._last_written = epoch
        self.written.append(out)
        return out
