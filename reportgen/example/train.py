"""Train the example shapes CNN and write the files `reportgen demo` uses.

    python -m reportgen.example.train [--seed 0] [--out DIR]

Generates a training set and a held-out test set (a different seed) with `reportgen.example.shapes`, trains a
small CNN on CPU, and writes into DIR (default: the package's `data/` folder) the model `shapes.keras`, its
metadata `model.json` and a few held-out sample images per class under `images/<class>/`. Training is seeded
and uses TensorFlow's deterministic ops, so the same seed gives the same weights on the same machine and
library versions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.example import example_dir
from reportgen.example.shapes import CLASS_NAMES, ShapesData, generate

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported: keep the progress readable

import cv2
import keras
import tensorflow as tf

MODEL_NAME = "shapes_cnn"
MODEL_FILE = "shapes.keras"
METADATA_FILE = "model.json"
IMAGE_SIZE = 64
TRAIN_IMAGES = 4000
TEST_IMAGES = 800
TEST_SEED_OFFSET = 1_000  # the test set's seed is seed + this: never the same images as any nearby train seed
EPOCHS = 12
BATCH_SIZE = 32
LEARNING_RATE = 2e-3
SAMPLES_PER_CLASS = 3
RETRAIN_COMMAND = "python -m reportgen.example.train"


def build_model(num_classes: int = len(CLASS_NAMES), size: int = IMAGE_SIZE) -> keras.Model:
    """A small functional CNN taking (size, size, 3) RGB floats in [0, 1] (pixels / 255, done outside).

    The last convolution feeds global average pooling straight into the classifier, the layout Grad-CAM and
    CAM were designed for, and every layer has a readable name for the report.
    """
    # He initialisation suits ReLU: with Keras's default (Glorot) this net sat at chance for several epochs.
    conv = {"padding": "same", "activation": "relu", "kernel_initializer": "he_normal"}
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(16, 3, name="conv1", **conv)(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(32, 3, name="conv2", **conv)(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    # 5x5 here gives the last layer a 26-pixel receptive field, enough to see a shape's corners together
    # (3x3 learned far slower), while its 16x16 maps keep Grad-CAM reasonably sharp.
    x = keras.layers.Conv2D(64, 5, name="conv3", **conv)(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to the model's input: float32 in [0, 1] (reportgen's preprocess mode `scale`)."""
    return images.astype(np.float32) / 255.0


def train(
    seed: int = 0,
    out_dir: Path | None = None,
    epochs: int = EPOCHS,
    train_images: int = TRAIN_IMAGES,
    test_images: int = TEST_IMAGES,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train, evaluate on the held-out set, write model, metadata and samples to `out_dir`; return the metadata."""
    out = Path(out_dir) if out_dir is not None else example_dir()
    log = print if verbose else (lambda *_: None)

    # Seeds Python, numpy and TensorFlow (weight init, shuffling); deterministic kernels make the sums
    # run in a fixed order, so reruns give the same weights rather than ones a few ulps apart.
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()

    started = time.perf_counter()
    test_seed = seed + TEST_SEED_OFFSET
    train_set = generate(train_images, seed=seed, size=IMAGE_SIZE)
    test_set = generate(test_images, seed=test_seed, size=IMAGE_SIZE)
    log(
        f"generated {len(train_set)} training images (seed {seed}) and {len(test_set)} test images "
        f"(seed {test_seed}) in {time.perf_counter() - started:.1f}s"
    )

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    x_test = scale(test_set.images)
    # The test set is only reported each epoch (as val_accuracy); it never picks epochs or hyperparameters.
    model.fit(
        scale(train_set.images),
        train_set.labels,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        validation_data=(x_test, test_set.labels),
        shuffle=True,
        verbose=2 if verbose else 0,
    )
    predicted = np.argmax(model.predict(x_test, batch_size=256, verbose=0), axis=1)
    accuracy = float(np.mean(predicted == test_set.labels))
    log(f"held-out accuracy {accuracy:.4f} after {epochs} epochs, {time.perf_counter() - started:.1f}s in all")

    out.mkdir(parents=True, exist_ok=True)
    _save_inference_model(model, out / MODEL_FILE)
    sample_boxes = _write_samples(test_set, predicted, out / "images")
    metadata = {
        "name": MODEL_NAME,
        "class_names": list(CLASS_NAMES),
        "input_size": [IMAGE_SIZE, IMAGE_SIZE],
        "preprocess": "scale",
        "seed": seed,
        "test_seed": test_seed,
        "train_images": len(train_set),
        "test_images": len(test_set),
        "test_accuracy": round(accuracy, 4),
        "epochs": epochs,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "retrain": RETRAIN_COMMAND,
        "box_format": "[x0, y0, x1, y1] in pixels, x1 and y1 exclusive",
        "sample_boxes": sample_boxes,
    }
    (out / METADATA_FILE).write_text(_to_json(metadata), encoding="utf-8")
    log(
        f"wrote {out / MODEL_FILE} ({(out / MODEL_FILE).stat().st_size} bytes), {out / METADATA_FILE} and "
        f"{len(sample_boxes)} sample images under {out / 'images'}"
    )
    return metadata


def _to_json(metadata: dict[str, Any]) -> str:
    """Indented JSON with each list of numbers on one line, so boxes read as boxes."""
    text = json.dumps(metadata, indent=2)
    numbers = re.compile(r"\[\s+(-?[\d.]+(?:,\s+-?[\d.]+)*)\s+\]")
    return numbers.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text) + "\n"


def _save_inference_model(model: keras.Model, path: Path) -> None:
    """Save the weights in a fresh, uncompiled copy of the architecture.

    The file then holds no optimizer state or training config: smaller, and loading it never warns about
    optimizer variables that reportgen has no use for.
    """
    clean = build_model()
    clean.set_weights(model.get_weights())
    clean.save(path)


def _write_samples(test_set: ShapesData, predicted: np.ndarray, images_dir: Path) -> dict[str, list[int]]:
    """Save the first SAMPLES_PER_CLASS correctly classified test images of each class as PNG.

    Correct ones, so the demo shows what the model learned rather than its rare mistakes; "first" in test set
    order, so the choice is deterministic. Returns each file's box, keyed by its path relative to images_dir.
    """
    boxes: dict[str, list[int]] = {}
    for label, name in enumerate(CLASS_NAMES):
        class_dir = images_dir / name
        class_dir.mkdir(parents=True, exist_ok=True)
        for stale in class_dir.glob(f"{name}_*.png"):  # a previous run's picks may differ
            stale.unlink()
        picks = np.flatnonzero((test_set.labels == label) & (predicted == label))[:SAMPLES_PER_CLASS]
        for k, index in enumerate(picks):
            filename = f"{name}_{k}.png"
            # OpenCV writes BGR; the dataset is RGB.
            if not cv2.imwrite(str(class_dir / filename), cv2.cvtColor(test_set.images[index], cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {class_dir / filename}")
            boxes[f"{name}/{filename}"] = [int(v) for v in test_set.boxes[index]]
    return boxes


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m reportgen.example.train", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed for the data, weights and shuffling (default 0)")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {example_dir()})")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs (default {EPOCHS})")
    args = parser.parse_args(argv)
    metadata = train(seed=args.seed, out_dir=args.out, epochs=args.epochs)
    print(f"test accuracy: {metadata['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
