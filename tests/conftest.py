"""Shared fixtures: tiny seeded models of every shape reportgen must handle, and image folders."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
               "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's, through playwright); the tests that need it skip, saying why, without it."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with playwright_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        except Exception as exc:  # a broken Chromium install is an environment problem, not a report bug
            pytest.skip(f"Chromium did not start: {exc}")
        yield browser
        browser.close()


@pytest.fixture(scope="session", autouse=True)
def zoo_in_background(request, tmp_path_factory):
    """The model zoo's reports, started niced when the session begins if any zoo test is selected
    (`test_zoo.BackgroundZoo`); None otherwise."""
    selected = {item.callspec.params["name"] for item in request.session.items
                if item.get_closest_marker("zoo") and hasattr(item, "callspec") and "name" in item.callspec.params}
    if not selected:
        yield None
        return
    from test_zoo import BackgroundZoo

    zoo = BackgroundZoo(tmp_path_factory.mktemp("zoo"), selected)
    yield zoo
    zoo.close()


@pytest.fixture(scope="session")
def keras():
    import keras as keras_module

    return keras_module


def build_plain_model(keras, input_shape=(32, 32, 3), classes=3, seed=0, name="plain"):
    """Conv -> pool -> conv -> GAP -> softmax: the common small classifier."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def build_nested_model(keras, input_shape=(32, 32, 3), classes=3, seed=0):
    """A functional 'pretrained base' inside a Sequential, followed by Flatten: the transfer-learning shape."""
    keras.utils.set_random_seed(seed)
    base_in = keras.Input(input_shape, name="base_input")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="block1_conv1")(base_in)
    x = keras.layers.MaxPooling2D(name="block1_pool")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="block2_conv1")(x)
    base = keras.Model(base_in, x, name="conv_base")
    return keras.Sequential(
        [keras.Input(input_shape), base, keras.layers.Flatten(name="flatten"),
         keras.layers.Dense(classes, activation="softmax", name="head")],
        name="nested",
    )


def build_residual_model(keras, input_shape=(32, 32, 3), classes=3, seed=0):
    """A branching model: conv -> (conv -> bn) + shortcut -> relu -> pool -> head."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same", name="res_conv")(x)
    y = keras.layers.BatchNormalization(name="res_bn")(y)
    x = keras.layers.Add(name="res_add")([x, y])
    x = keras.layers.Activation("relu", name="res_relu")(x)
    x = keras.layers.AveragePooling2D(2, name="pool")(x)
    x = keras.layers.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="residual")


@pytest.fixture(scope="session")
def plain_model(keras):
    return build_plain_model(keras)


@pytest.fixture(scope="session")
def nested_model(keras):
    return build_nested_model(keras)


@pytest.fixture(scope="session")
def residual_model(keras):
    return build_residual_model(keras)


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory, plain_model, nested_model, residual_model) -> dict[str, Path]:
    """The three models saved as .keras files."""
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for model in (plain_model, nested_model, residual_model):
        path = folder / f"{model.name}.keras"
        model.save(path)
        paths[model.name] = path
    return paths


def write_images(folder: Path, classes=("cat", "dog"), per_class=2, size=(40, 48), seed=0) -> Path:
    """Random RGB PNGs in class subfolders."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            cv2.imwrite(str(folder / name / f"{name}_{k}.png"), image)
    return folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_images(tmp_path / "images")


@pytest.fixture(scope="session")
def shared_images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("shared") / "images", classes=("a", "b", "c"))


@pytest.fixture
def cli() -> Callable:
    """Invoke the CLI in-process; returns click's Result (exit_code, output, stderr)."""
    from click.testing import CliRunner

    from reportgen.cli import main

    def invoke(*args: str):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke
