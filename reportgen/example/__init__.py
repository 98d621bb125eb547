"""The bundled example behind `reportgen demo`: a small CNN trained on a synthetic shapes dataset.

`shapes.py` draws the dataset (circles, squares, triangles and stars on varied backgrounds) from a seed, and
`train.py` trains the model and writes everything `reportgen demo` needs into `data/`:

- `data/shapes.keras`: the trained model. It takes (64, 64, 3) RGB floats in [0, 1] (preprocess mode `scale`).
- `data/model.json`: class names, held-out accuracy, seeds and versions, and the sample images' boxes.
- `data/images/<class>/<class>_<k>.png`: held-out sample images, one folder per class.

Retrain (deterministic, a couple of minutes on a laptop CPU) with `python -m reportgen.example.train`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_DATA_DIR = Path(__file__).resolve().parent / "data"


def example_dir() -> Path:
    """The folder holding the example's model, metadata and sample images."""
    return _DATA_DIR


def example_model_path() -> Path:
    """The trained example model (`shapes.keras`)."""
    return _DATA_DIR / "shapes.keras"


def example_images_dir() -> Path:
    """The sample images, in one sub-folder per class so the folder name is each image's label."""
    return _DATA_DIR / "images"


def example_metadata() -> dict[str, Any]:
    """The contents of `model.json`: class names, input size, preprocessing, accuracy and sample boxes."""
    with (_DATA_DIR / "model.json").open(encoding="utf-8") as f:
        return json.load(f)
