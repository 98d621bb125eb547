"""Two small CNNs that the filter-pattern tests and `benchmarks/pattern_methods.py` train themselves in seconds
on the bundled synthetic shapes (fixed seeds), unlike the bundled model in shape:

- `rgb`: 32x32 RGB, pixels/255, three conv -> batch norm -> ReLU blocks (convs without activation or bias), the
  layout of ResNet and MobileNet blocks;
- `grey`: 32x32 greyscale, a mini-Xception: conv -> BN -> ReLU stem, a residual module of separable convs with a
  strided 1x1 shortcut, a separable conv -> BN -> ReLU and a class-score conv before global average pooling.
"""

from __future__ import annotations

import numpy as np

SIZE = 32
TRAIN_IMAGES = 1024
EPOCHS = 10


def _block(keras, x, filters: int, name: str, separable: bool = False):
    conv = keras.layers.SeparableConv2D if separable else keras.layers.Conv2D
    x = conv(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def build_rgb(keras):
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = _block(keras, inputs, 16, "b1")
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = _block(keras, x, 32, "b2")
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = _block(keras, x, 48, "b3")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="predictions")(x), name="rgb_bn")


def build_grey(keras):
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = _block(keras, inputs, 8, "stem")
    shortcut = keras.layers.Conv2D(16, 1, strides=2, use_bias=False, name="short_conv")(x)
    shortcut = keras.layers.BatchNormalization(momentum=0.9, name="short_bn")(shortcut)
    y = _block(keras, x, 16, "m1a", separable=True)
    y = keras.layers.SeparableConv2D(16, 3, padding="same", use_bias=False, name="m1b_conv")(y)
    y = keras.layers.BatchNormalization(momentum=0.9, name="m1b_bn")(y)
    y = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="m1_pool")(y)
    x = keras.layers.Add(name="m1_add")([y, shortcut])
    x = _block(keras, x, 32, "m2", separable=True)
    x = keras.layers.Conv2D(4, 3, padding="same", name="class_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Softmax(name="predictions")(x), name="mini_xception")


def train_model(keras, kind: str, seed: int = 0):
    """The `kind` ("rgb" or "grey") model trained for a few seconds on shapes; returns (model, accuracy on
    held-out images)."""
    from reportgen.example.shapes import generate

    keras.utils.set_random_seed(seed)
    model = build_rgb(keras) if kind == "rgb" else build_grey(keras)

    def inputs(images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32) / 255.0
        return x if kind == "rgb" else x @ np.array([[0.299], [0.587], [0.114]], np.float32)

    train = generate(TRAIN_IMAGES, seed=seed, size=SIZE)
    test = generate(256, seed=seed + 1000, size=SIZE)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(inputs(train.images), train.labels, epochs=EPOCHS, batch_size=32, verbose=0)
    accuracy = float(np.mean(np.argmax(model.predict(inputs(test.images), verbose=0), axis=1) == test.labels))
    return model, accuracy
