"""Small networks of the shapes real trained classifiers have, and a quick way to train them on the shapes data.

Each builder is seeded and tiny, so tests can train one in seconds and check what the report says about it.
"""

from __future__ import annotations

import cv2
import numpy as np

from reportgen.example.shapes import generate


def build_mini_xception(keras, input_shape=(48, 48, 1), classes=4, seed=0, width=16):
    """The layout of the mini-Xception that ships with the `fer` package, scaled down: a conv -> BN -> ReLU stem,
    residual blocks of separable convs with a strided 1x1 shortcut, and a class-score conv before global average
    pooling and a softmax (no Dense layer)."""
    layers = keras.layers
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i in (1, 2):
        x = layers.Conv2D(width, 3, use_bias=False, name=f"stem_conv{i}")(x)
        x = layers.BatchNormalization(name=f"stem_bn{i}")(x)
        x = layers.Activation("relu", name=f"stem_relu{i}")(x)
    for block, channels in enumerate((2 * width, 4 * width, 8 * width), start=1):
        shortcut = layers.Conv2D(channels, 1, strides=2, padding="same", use_bias=False, name=f"b{block}_short")(x)
        shortcut = layers.BatchNormalization(name=f"b{block}_short_bn")(shortcut)
        x = layers.SeparableConv2D(channels, 3, padding="same", use_bias=False, name=f"b{block}_sep1")(x)
        x = layers.BatchNormalization(name=f"b{block}_bn1")(x)
        x = layers.Activation("relu", name=f"b{block}_relu1")(x)
        x = layers.SeparableConv2D(channels, 3, padding="same", use_bias=False, name=f"b{block}_sep2")(x)
        x = layers.BatchNormalization(name=f"b{block}_bn2")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"b{block}_pool")(x)
        x = layers.Add(name=f"b{block}_add")([x, shortcut])
    x = layers.Conv2D(classes, 3, padding="same", name="class_conv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Activation("softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="mini_xception")


def shapes_arrays(n: int, seed: int, size: int, gray: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shapes images as uint8 pixels (n, size, size, 1 or 3), their labels and boxes."""
    data = generate(n, seed=seed, size=size)
    images = data.images
    if gray:
        images = np.stack([cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in images])[..., None]
    return images, data.labels, data.boxes


def train_on_shapes(keras, model, n=2000, epochs=12, seed=0, batch_size=32):
    """Fit `model` (taking pixels / 255) on generated shapes; returns its accuracy on held-out images."""
    # Seeded, not bit-for-bit deterministic: op determinism is a process-wide switch that would change the
    # arithmetic of every later test in the session.
    keras.utils.set_random_seed(seed)
    size, channels = model.input_shape[1], model.input_shape[3]
    images, labels, _ = shapes_arrays(n, seed, size, gray=channels == 1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(images.astype("float32") / 255.0, labels, batch_size=batch_size, epochs=epochs, verbose=0)
    test, test_labels, _ = shapes_arrays(200, seed + 1000, size, gray=channels == 1)
    predicted = np.argmax(model.predict(test.astype("float32") / 255.0, verbose=0), axis=1)
    return float(np.mean(predicted == test_labels))
