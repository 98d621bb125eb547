"""Class names: from a file, from the images' class folders, or `class N`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reportgen.errors import InputError

IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ClassNames:
    """One name per model output class, and where the names came from."""

    names: tuple[str, ...]
    source: str  # "file", "folders", "imagenet", "model", "index"

    def index_of(self, label: str | None) -> int | None:
        if label is None:
            return None
        try:
            return self.names.index(label)
        except ValueError:
            return None


MAX_NAMES_BYTES = 16 << 20  # 16 MiB: far more than any list of class names


def read_class_names_file(path: Path) -> list[str]:
    """One class name per line; blank lines and lines starting with # are ignored. Only a regular file is read
    (a FIFO would block, /dev/zero never ends), at most MAX_NAMES_BYTES, as UTF-8; names must be unique."""
    from reportgen.userfiles import read_text_file

    text = read_text_file(path, "--class-names", MAX_NAMES_BYTES, "a text file, one class name per line")
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    seen: set[str] = set()
    duplicates = [name for name in names if name in seen or seen.add(name)]
    if duplicates:
        shown = ", ".join(repr(name) for name in dict.fromkeys(duplicates))
        raise InputError(f"--class-names: {path} names {shown} more than once; each class needs its own name")
    return names


def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names in Keras's output order, shipped with the package (never downloaded)."""
    from importlib.resources import files

    text = files("reportgen").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def resolve_class_names(
    num_classes: int,
    class_names_file: Path | None = None,
    folder_labels: Sequence[str | None] = (),
    builtin: Sequence[str] | None = None,
    builtin_source: str = "model",
) -> tuple[ClassNames, list[str]]:
    """Pick class names for a model with `num_classes` outputs; returns the names and any warnings."""
    warnings: list[str] = []
    if class_names_file is not None:
        names = read_class_names_file(class_names_file)
        if len(names) != num_classes:
            raise InputError(
                f"--class-names: {class_names_file} has {len(names)} names but the model predicts "
                f"{num_classes} classes; give one name per line, in output order"
            )
        return ClassNames(tuple(names), "file"), warnings
    if builtin is not None and len(builtin) == num_classes:
        return ClassNames(tuple(builtin), builtin_source), warnings
    labels = sorted({label for label in folder_labels if label is not None})
    if labels and len(labels) == num_classes:
        # Keras's image_dataset_from_directory numbers classes in sorted folder order; so do we.
        return ClassNames(tuple(labels), "folders"), warnings
    if num_classes == IMAGENET_CLASSES:
        # A 1000-way output is almost always ImageNet's; folders named after ImageNet classes still match.
        return ClassNames(imagenet_class_names(), "imagenet"), warnings
    if labels:
        warnings.append(
            f"the images have {len(labels)} class folders but the model predicts {num_classes} classes; "
            "class names are indices (give --class-names to name them)"
        )
    return ClassNames(tuple(f"class {i}" for i in range(num_classes)), "index"), warnings
