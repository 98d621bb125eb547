"""The model zoo: the whole default report, every section, through the command line as users run it (so the
watchdog that supervises the run is in the loop), on every keras.applications family with random weights and on
tiny trained models of the shapes people bring.

Small settings (32 px, or 75 px where the architecture needs it; one pattern step; one detail image) keep the zoo
at a few minutes on 2 cores. The reports run two at a time in the background from the start of the module, each
under its own time limit; each model's test waits for its own. Nothing downloads. Skip the zoo with `-m "not zoo"`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.zoo, pytest.mark.slow]

DEFAULT_SECTIONS = {"summary", "weights", "feature_maps", "filter_patterns", "dataset_examples", "predictions",
                    "evaluation", "cam", "class"}
DEFAULT_CAM_METHODS = {"gradcam", "gradcam++", "layercam"}
SMALL_OPTIONS = ("--steps", "1", "--filters", "1", "--directions", "ascent", "--detail", "1", "--examples", "1",
                 "--top-k", "4", "--seed", "0", "--quiet")
# One report takes 10-60 s here; the limit is for a run that hangs or crawls, with room for a loaded machine (the
# reports run niced beside the rest of the suite).
SECONDS_PER_MODEL = 480
NICENESS = 10  # the zoo yields the cores to the foreground tests
# Two reports at once: a report keeps about one core busy (Python between TensorFlow's kernels), so the second
# core would otherwise idle. Peak memory of two is about 4 GB.
PARALLEL_REPORTS = 2
CLASSES = ("circle", "square", "star", "triangle")

# keras.applications constructors and the smallest input each takes (Inception and Xception need 75 px). No RegNet:
# Keras 3 has none, and tf_keras's call TensorFlow ops on Keras tensors (TFOpLambda), which Keras 3 cannot load.
APPLICATIONS = {
    "vgg16": 32, "resnet50": 32, "resnet50v2": 32, "inceptionv3": 75, "inceptionresnetv2": 75, "xception": 75,
    "mobilenet": 32, "mobilenetv2": 32, "mobilenetv3small": 32, "densenet121": 32, "nasnetmobile": 32,
    "efficientnetb0": 32, "efficientnetv2b0": 32, "convnexttiny": 32,
}


@dataclass(frozen=True)
class ZooRun:
    """One finished report: the command's result, its wall time and the report folder."""

    command: list[str]
    returncode: int | None  # None: killed at the time limit
    output: str
    seconds: float
    out: Path


# --- images ------------------------------------------------------------------------------------------------------


def shapes_images(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` RGB uint8 images of one filled shape each (circle, square, star, triangle) and their labels."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.arange(count) % len(CLASSES)
    for i, label in enumerate(labels):
        image = np.full((size, size, 3), rng.integers(0, 90, 3), dtype=np.uint8)
        colour = tuple(int(c) for c in rng.integers(140, 256, 3))
        centre = rng.uniform(0.35, 0.65, 2) * size
        radius = rng.uniform(0.18, 0.3) * size
        angles = {"square": 4, "star": 10, "triangle": 3}.get(CLASSES[label])
        if angles is None:
            cv2.circle(image, tuple(int(v) for v in centre), int(radius), colour, -1)
        else:
            turn = np.linspace(0, 2 * np.pi, angles, endpoint=False) + rng.uniform(0, np.pi)
            reach = np.where(np.arange(angles) % 2, 0.45, 1.0) if angles == 10 else np.ones(angles)
            points = centre + radius * reach[:, None] * np.stack([np.cos(turn), np.sin(turn)], axis=1)
            cv2.fillPoly(image, [points.round().astype(np.int32)], colour)
        noise = rng.integers(0, 12, image.shape)  # a little noise: no flat images
        images[i] = np.clip(image.astype(np.int16) + noise, 0, 255)
    return images, labels


def write_image_folder(folder: Path, count: int, size: int, classes: tuple[str, ...] = CLASSES) -> Path:
    """PNGs in one subfolder per class (the label), `count` in all."""
    images, labels = shapes_images(count, size, seed=7)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = classes[label % len(classes)]
        (folder / name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name / f"{name}_{i}.png"), image[:, :, ::-1])
    return folder


# --- tiny trained models -----------------------------------------------------------------------------------------


def _conv_bn_relu(layers, x, filters: int, name: str, strides: int = 1):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def conv_bn_relu(keras):
    """Conv -> batch norm -> ReLU blocks with pooling, global pooling and a softmax head."""
    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = _conv_bn_relu(layers, inputs, 8, "block1")
    x = layers.MaxPooling2D(name="pool1")(x)
    x = _conv_bn_relu(layers, x, 16, "block2")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(4, activation="softmax", name="predictions")(x), name="conv_bn_relu")


def mini_xception(keras):
    """fer's mini-Xception, scaled down: grey input, separable convs with residual adds, a class-score conv before
    global pooling (no Dense layer)."""
    from real_shapes import build_mini_xception

    return build_mini_xception(keras, input_shape=(48, 48, 1), classes=4, width=8)


def squeeze_excite(keras):
    """A conv block reweighted by a squeeze-and-excitation branch (global pooling, two Dense, a sigmoid gate)."""
    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = _conv_bn_relu(layers, inputs, 16, "stem", strides=2)
    gate = layers.GlobalAveragePooling2D(name="se_squeeze")(x)
    gate = layers.Dense(4, activation="relu", name="se_reduce")(gate)
    gate = layers.Dense(16, activation="sigmoid", name="se_expand")(gate)
    gate = layers.Reshape((1, 1, 16), name="se_reshape")(gate)
    x = layers.Multiply(name="se_excite")([x, gate])
    x = _conv_bn_relu(layers, x, 16, "block1")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(4, activation="softmax", name="predictions")(x), name="squeeze_excite")


def rescaling_first(keras):
    """A `Rescaling` first layer: the model takes raw 0-255 pixels."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((32, 32, 3)), layers.Rescaling(1 / 255, name="rescale"),
        layers.Conv2D(8, 3, activation="relu", name="conv1"), layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(16, 3, activation="relu", name="conv2"), layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(4, activation="softmax", name="predictions"),
    ], name="rescaling_first")


def nested_base(keras):
    """A pretrained-style functional base nested in a Sequential, then Flatten and a Dense head."""
    layers = keras.layers
    base_in = keras.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, activation="relu", name="block1_conv1")(base_in)
    x = layers.MaxPooling2D(name="block1_pool")(x)
    x = layers.Conv2D(8, 3, activation="relu", name="block2_conv1")(x)
    x = layers.MaxPooling2D(name="block2_pool")(x)
    base = keras.Model(base_in, x, name="conv_base")
    return keras.Sequential([keras.Input((32, 32, 3)), base, layers.Flatten(name="flatten"),
                             layers.Dense(4, activation="softmax", name="head")], name="nested_base")


def logits(keras):
    """Ends in a Dense layer without softmax: the report applies the softmax itself."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((32, 32, 3)), layers.Conv2D(8, 3, activation="relu", name="conv1"),
        layers.MaxPooling2D(name="pool1"), layers.Conv2D(16, 3, activation="relu", name="conv2"),
        layers.GlobalAveragePooling2D(name="gap"), layers.Dense(4, name="logits"),
    ], name="logits")


def binary_sigmoid(keras):
    """One sigmoid output: a binary classifier (class 1 against the rest)."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((32, 32, 3)), layers.Conv2D(8, 3, activation="relu", name="conv1"),
        layers.MaxPooling2D(name="pool1"), layers.Conv2D(8, 3, activation="relu", name="conv2"),
        layers.GlobalAveragePooling2D(name="gap"), layers.Dense(1, activation="sigmoid", name="score"),
    ], name="binary_sigmoid")


def keras2_nested_base(tf_keras):
    """The same transfer-learning shape as `nested_base`, as tf.keras 2 builds it."""
    layers = tf_keras.layers
    base_in = tf_keras.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, activation="relu", name="block1_conv1")(base_in)
    x = layers.BatchNormalization(name="block1_bn")(x)
    x = layers.MaxPooling2D(name="block1_pool")(x)
    x = layers.Conv2D(8, 3, activation="relu", name="block2_conv1")(x)
    base = tf_keras.Model(base_in, x, name="conv_base")
    return tf_keras.Sequential([base, layers.Flatten(name="flatten"),
                                layers.Dense(4, activation="softmax", name="head")], name="keras2_nested_base")


TINY_MODELS: dict[str, Callable] = {
    "conv_bn_relu": conv_bn_relu, "mini_xception": mini_xception, "squeeze_excite": squeeze_excite,
    "rescaling_first": rescaling_first, "nested_base": nested_base, "logits": logits,
    "binary_sigmoid": binary_sigmoid,
}


def train_briefly(model, images: np.ndarray, labels: np.ndarray, loss: str, scale: float) -> None:
    """A few seeded optimisation steps: weights that moved away from their initialisation, as trained ones have."""
    channels = model.input_shape[-1]
    size = model.input_shape[1]
    x = np.stack([cv2.resize(image, (size, size)) for image in images]).astype("float32")
    if channels == 1:
        x = x.mean(axis=-1, keepdims=True)
    model.compile(optimizer="adam", loss=loss)
    model.fit(x * scale, labels, batch_size=16, epochs=2, verbose=0)


def save_tiny_models(folder: Path) -> dict[str, Path]:
    """Every tiny model built, trained for a few steps from a fixed seed and saved; the Keras 2 ones as .h5."""
    import keras

    images, labels = shapes_images(64, 48, seed=1)
    paths: dict[str, Path] = {}
    for name, build in TINY_MODELS.items():
        keras.utils.set_random_seed(0)
        model = build(keras)
        binary = model.output_shape[-1] == 1
        targets = (labels == 1).astype("float32") if binary else labels
        loss = ("binary_crossentropy" if binary else
                keras.losses.SparseCategoricalCrossentropy(from_logits=name == "logits"))
        # What the report's automatic preprocessing gives each: raw pixels after a Rescaling layer, else /255.
        train_briefly(model, images, targets, loss, 1.0 if name == "rescaling_first" else 1 / 255)
        paths[name] = folder / f"{name}.keras"
        model.save(paths[name])
    paths.update(save_keras2_models(folder, images, labels))
    return paths


def save_keras2_models(folder: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, Path]:
    """A legacy .h5 file written by tf_keras: the nested transfer-learning model, trained a few steps."""
    try:
        import tf_keras
    except ImportError:
        return {}
    tf_keras.utils.set_random_seed(0)
    model = keras2_nested_base(tf_keras)
    train_briefly(model, images, labels, "sparse_categorical_crossentropy", 1 / 255)
    paths = {"keras2_h5": folder / "keras2_nested_base.h5"}
    model.save(paths["keras2_h5"])
    return paths


# --- running the zoo ---------------------------------------------------------------------------------------------


def generate_command(model: str, images: Path, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "reportgen.cli", "generate", model, str(images), "-o", str(out), *SMALL_OPTIONS,
            *extra]


def run_report(command: list[str], out: Path) -> ZooRun:
    """One report in its own process group, ended at SECONDS_PER_MODEL: the whole group, since killing the
    command (the watchdog's supervising process) alone would leave the report and its plotting worker running."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    process = subprocess.Popen(["nice", "-n", str(NICENESS), *command], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=SECONDS_PER_MODEL)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        returncode, output = None, f"killed after {SECONDS_PER_MODEL} s:\n{output}"
    return ZooRun(command, returncode, output[-4000:], time.perf_counter() - start, out)


ZOO = [*APPLICATIONS, *TINY_MODELS, "keras2_h5"]


class BackgroundZoo:
    """Every zoo report, run niced in the background two at a time; each model's test waits for its own.

    conftest.py starts it when the session begins (when any zoo test is selected): most tests keep one core busy
    (Python between small TensorFlow kernels), so niced reports fill the idle core and the zoo costs the suite about
    as much wall time as the rest leaves free, instead of four minutes of its own at the end. The tiny models are
    trained in a process of their own: training here would set Keras's global seed under other tests."""

    def __init__(self, root: Path, names: set[str] | None = None) -> None:
        """`names`: the models to report on (the selected tests'), else every one."""
        wanted = set(ZOO) if names is None else names
        four = write_image_folder(root / "images", count=4, size=40)
        two = write_image_folder(root / "binary_images", count=4, size=40, classes=("other", "square"))
        self.pool = ThreadPoolExecutor(PARALLEL_REPORTS, thread_name_prefix="zoo")
        models = root / "models"
        models.mkdir()
        tiny = [name for name in [*TINY_MODELS, "keras2_h5"] if name in wanted]
        trained = self.pool.submit(_train_tiny_models, models) if tiny else None
        self.runs: dict[str, Future] = {}
        for name, size in ((n, s) for n, s in APPLICATIONS.items() if n in wanted):
            command = generate_command(name, four, root / name, ("--weights", "none", "--image-size", f"{size}x{size}"))
            self.runs[name] = self.pool.submit(run_report, command, root / name)
        for name in tiny:
            images = two if name == "binary_sigmoid" else four
            self.runs[name] = self.pool.submit(_tiny_report, trained, name, images, root / name)

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def _train_tiny_models(folder: Path) -> dict[str, str]:
    """`save_tiny_models` in a niced process of its own; the models' paths by name."""
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[2]); "
            "from test_zoo import save_tiny_models; "
            "print(json.dumps({k: str(v) for k, v in save_tiny_models(Path(sys.argv[1])).items()}))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(["nice", "-n", str(NICENESS), sys.executable, "-c", code, str(folder),
                           str(Path(__file__).parent)], capture_output=True, text=True, env=env, check=True,
                          timeout=SECONDS_PER_MODEL)  # a hang fails the tiny models' tests, never the session
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tiny_report(trained: Future | None, name: str, images: Path, out: Path) -> ZooRun | None:
    paths = trained.result() if trained is not None else {}
    if name not in paths:
        return None  # tf_keras is not installed: no Keras 2 .h5 file
    return run_report(generate_command(paths[name], images, out), out)


@pytest.fixture(scope="module")
def zoo_runs(request, tmp_path_factory) -> Iterator[dict[str, Future]]:
    started = request.getfixturevalue("zoo_in_background")
    if started is not None:
        yield started.runs
        return
    zoo = BackgroundZoo(tmp_path_factory.mktemp("zoo"))
    yield zoo.runs
    zoo.close()


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_gets_a_complete_report(zoo_runs, name):
    run = zoo_runs[name].result()
    if run is None:
        pytest.skip("tf_keras is not installed: no Keras 2 .h5 files")
    assert run.returncode == 0, f"{name}: exit {run.returncode} after {run.seconds:.0f} s\n{run.output}"
    assert (run.out / "index.html").stat().st_size > 10_000
    report = json.loads((run.out / "report.json").read_text())

    assert {section["kind"] for section in report["sections"]} >= DEFAULT_SECTIONS
    assert set(report["seconds"]) >= DEFAULT_SECTIONS

    # Predictions: a probability per class, each in [0, 1]; with every class listed (tiny models) they sum to 1.
    classes = len(report["class_names"])
    assert report["predictions"], name
    for prediction in report["predictions"]:
        probabilities = [entry["probability"] for entry in prediction["top_k"]]
        assert all(0.0 <= p <= 1.0 + 1e-6 for p in probabilities), prediction
        assert probabilities == sorted(probabilities, reverse=True)
        if len(probabilities) == classes:
            assert sum(probabilities) == pytest.approx(1.0, abs=1e-4), prediction
        else:
            assert sum(probabilities) <= 1.0 + 1e-4

    # CAMs: the default methods on the detail image, with finite faithfulness numbers in [0, 1].
    heatmaps = report["heatmaps"]
    assert {heatmap["method"] for heatmap in heatmaps} >= DEFAULT_CAM_METHODS
    for heatmap in heatmaps:
        for key in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"):
            assert _finite(heatmap[key]) and -1e-6 <= heatmap[key] <= 1.0 + 1e-6, (key, heatmap)

    # Filter patterns and feature maps exist and are numbers.
    assert report["filter_patterns"] and report["feature_maps"], name
    for pattern in report["filter_patterns"]:
        assert _finite(pattern["activation"]) and _finite(pattern["start_activation"]), pattern
    assert not [w for w in report["warnings"] if "nan" in w.lower().split() or "inf" in w.lower().split()]

    # The verdict: every keras.applications model here has random weights (--weights none) and is called
    # untrained on the evidence of its weights; every tiny model was trained a few steps and is not.
    training = next(f for f in report["verdict"] if f["check"] == "training")
    if name in APPLICATIONS:
        assert training["severity"] == "problem" and training["data"]["looks_untrained"], training
        assert "--weights none" in training["title"]
        trust = next(f for f in report["verdict"] if f["check"] == "cam_trust")
        assert trust["severity"] == "problem" and "untrained" in trust["evidence"], trust  # never "trust" a random net
    else:
        assert training["severity"] == "ok" and not training["data"]["looks_untrained"], training
