"""Every way a model arrives: .keras, legacy tf.keras 2 .h5 (Sequential, functional, nested base),
keras.applications names, and the files we refuse with a message."""

from __future__ import annotations

import numpy as np
import pytest

from reportgen.errors import ModelLoadError
from reportgen.loading.models import load_model


@pytest.fixture(scope="module")
def tf_keras():
    return pytest.importorskip("tf_keras")


@pytest.fixture(scope="module")
def legacy_files(tmp_path_factory, tf_keras):
    """Models written by tf.keras 2 itself, with their predictions on a fixed batch."""
    folder = tmp_path_factory.mktemp("legacy")
    tf_keras.utils.set_random_seed(0)
    layers = tf_keras.layers
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)

    sequential = tf_keras.Sequential([layers.Conv2D(4, 3, activation="relu", input_shape=(32, 32, 3), name="c1"),
                                      layers.MaxPooling2D(name="p1"), layers.Flatten(), layers.Dense(3)])
    inputs = tf_keras.Input((32, 32, 3))
    h = layers.Conv2D(4, 3, activation="relu", name="c1")(inputs)
    functional = tf_keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(h)), name="functional")
    base_in = tf_keras.Input((32, 32, 3))
    base_out = layers.MaxPooling2D(name="block1_pool")(layers.Conv2D(4, 3, activation="relu",
                                                                     name="block1_conv1")(base_in))
    base = tf_keras.Model(base_in, base_out, name="conv_base")
    nested = tf_keras.Sequential([base, layers.Flatten(), layers.Dense(3, activation="softmax")], name="transfer")

    files = {}
    for name, model in (("sequential", sequential), ("functional", functional), ("nested", nested)):
        path = folder / f"{name}.h5"
        model.save(path)
        files[name] = (path, x, model.predict(x, verbose=0))
    weights_only = folder / "weights_only.h5"
    functional.save_weights(weights_only)
    files["weights_only"] = (weights_only, x, None)
    return files


def test_keras_file(saved_models, plain_model):
    loaded = load_model(saved_models["plain"])
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(loaded.model(x), plain_model(x), atol=1e-6)
    assert loaded.file_format == "keras" and len(loaded.sha256) == 64 and loaded.input_shape == (32, 32, 3)


@pytest.mark.parametrize("name", ["sequential", "functional", "nested"])
def test_legacy_h5_files_predict_like_tf_keras(legacy_files, name):
    path, x, expected = legacy_files[name]
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.model(x), expected, atol=1e-5)
    if name == "nested":
        # Keras 3's own loader fails on this one ("Flatten receives a list"); ours rebuilds it.
        assert loaded.file_format == "h5-legacy"
        from reportgen.graph import walk_layers

        assert "conv_base/block1_conv1" in [node.path for node in walk_layers(loaded.model)]


def test_weights_only_h5_is_refused_with_advice(legacy_files):
    with pytest.raises(ModelLoadError, match=r"weights only.*model\.save\('model\.keras'\)"):
        load_model(legacy_files["weights_only"][0])


def test_saved_model_folder_gets_conversion_advice(tmp_path):
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"\x00")
    with pytest.raises(ModelLoadError, match=r"SavedModel.*tf_keras"):
        load_model(folder)


def test_missing_and_unknown(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.keras")
    with pytest.raises(ModelLoadError, match=r"keras\.applications"):
        load_model("not-a-model")
    text_file = tmp_path / "model.txt"
    text_file.write_text("hello")
    with pytest.raises(ModelLoadError, match="unsupported"):
        load_model(text_file)
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_model(garbage)


def test_application_name_with_random_weights():
    loaded = load_model("MobileNetV2", weights="none", image_size=(96, 96))
    assert loaded.file_format == "application" and loaded.family == "mobilenet_v2"
    assert loaded.input_shape == (96, 96, 3)
    # Random weights are drawn from the seed: the same seed, the same model (and report); another, another.
    again = load_model("MobileNetV2", weights="none", image_size=(96, 96))
    other = load_model("MobileNetV2", weights="none", image_size=(96, 96), seed=1)
    first_kernel = [w.numpy() for w in (loaded.model.weights[0], again.model.weights[0], other.model.weights[0])]
    np.testing.assert_array_equal(first_kernel[0], first_kernel[1])
    assert not np.array_equal(first_kernel[0], first_kernel[2])


@pytest.mark.parametrize(("name", "constructor", "family"), [
    ("mobilenetv3small", "MobileNetV3Small", "mobilenet_v3"),
    ("MobileNet-V3-Large", "MobileNetV3Large", "mobilenet_v3"),
    ("convnexttiny", "ConvNeXtTiny", "convnext"),
    ("efficientnetv2b0", "EfficientNetV2B0", "efficientnet_v2"),
    ("resnet50", "ResNet50", "resnet"),
    ("resnet50v2", "ResNet50V2", "resnet_v2"),
])
def test_application_names_come_from_the_constructors(name, constructor, family):
    """Found by its constructor, whose module gives the family, also where the family's submodule exports only
    preprocess_input (keras.applications.mobilenet_v3)."""
    from reportgen.loading.applications import find_application

    app = find_application(name)
    assert app is not None and (app.constructor, app.family) == (constructor, family)


def test_every_keras_applications_constructor_has_a_name_and_a_preprocessing():
    """Each uppercase constructor keras.applications offers is found, in a family whose preprocessing we know.
    (RegNets are tf.keras 2 only: Keras 3 has none, so `regnetx002` is not a name.)"""
    import keras

    from reportgen.loading.applications import FAMILY_PREPROCESS, find_application

    constructors = [name for name in dir(keras.applications) if name[:1].isupper()]
    assert len(constructors) >= 38
    for constructor in constructors:
        app = find_application(constructor)
        assert app is not None and app.constructor == constructor
        assert app.family in FAMILY_PREPROCESS, constructor
    assert find_application("regnetx002") is None or find_application("regnetx002").family == "regnet"


def test_application_imagenet_weights_never_download(tmp_path, monkeypatch):
    from keras.src.backend import config

    # Keras reads KERAS_HOME once, at import: point its cache itself at an empty folder.
    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"never downloads.*--weights none") as error:
        load_model("mobilenetv2", weights="imagenet", image_size=(96, 96))
    # The message names the exact file Keras looked for, so the user can put it there.
    assert str(tmp_path / "models") in str(error.value) and "https://" in str(error.value)
    assert not any(tmp_path.rglob("*.h5"))


def test_application_weights_file_is_loaded(tmp_path):
    random = load_model("mobilenetv2", weights="none", image_size=(64, 64)).model
    weights = tmp_path / "mine.weights.h5"
    random.save_weights(weights)
    loaded = load_model("mobilenetv2", weights=str(weights), image_size=(64, 64)).model
    x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), random.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ModelLoadError, match="--weights"):
        load_model("mobilenetv2", weights=str(tmp_path / "absent.h5"), image_size=(64, 64))


def test_unreadable_model_file_is_a_clear_input_error(saved_models, monkeypatch):
    import reportgen.loading.models as models

    def denied(path):  # chmod 000 means nothing to root, who runs CI: fail the read itself
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(models, "file_sha256", denied)
    with pytest.raises(ModelLoadError, match=r"cannot be read \(Permission denied\); check its permissions"):
        load_model(saved_models["plain"])


def test_summary_facts_match_the_file_and_the_model(saved_models):
    import hashlib

    loaded = load_model(saved_models["residual"])
    assert loaded.sha256 == hashlib.sha256(saved_models["residual"].read_bytes()).hexdigest()
    assert loaded.input_shape == (32, 32, 3)


def test_auto_preprocessing_follows_the_model(keras, saved_models):
    from reportgen.api import choose_preprocessing

    assert choose_preprocessing("auto", load_model("vgg16", weights="none")).mode == "caffe"
    assert choose_preprocessing("auto", load_model("mobilenetv2", weights="none", image_size=(64, 64))).mode == "tf"
    assert choose_preprocessing("auto", load_model(saved_models["plain"])).mode == "scale"
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    rescaling_first = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    assert choose_preprocessing("auto", load_model(rescaling_first)).mode == "none"
    # A pretrained base nested in a Sequential is recognised by the base's name.
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(64, 64, 3))
    transfer = keras.Sequential([keras.Input((64, 64, 3)), base, keras.layers.GlobalAveragePooling2D(),
                                 keras.layers.Dense(2)])
    assert choose_preprocessing("auto", load_model(transfer)).mode == "tf"
    assert choose_preprocessing("torch", load_model(transfer)).mode == "torch"  # an explicit mode wins


def test_lambda_layer_in_a_legacy_h5_needs_unsafe(tmp_path, tf_keras):
    layers = tf_keras.layers
    model = tf_keras.Sequential([tf_keras.Input((8, 8, 3)), layers.Lambda(lambda t: t * 3.0, name="triple"),
                                 layers.Conv2D(2, 3, name="conv"), layers.GlobalAveragePooling2D(), layers.Dense(2)])
    path = tmp_path / "lambda.h5"
    model.save(path)
    with pytest.raises(ModelLoadError, match=r"Lambda layer.*--unsafe"):
        load_model(path)
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(load_model(path, unsafe=True).model.predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_tensorflow_ops_in_a_legacy_h5_are_named_not_taken_for_a_lambda(tmp_path, tf_keras):
    """tf.keras 2 saves a TensorFlow op called on a Keras tensor as a TFOpLambda layer, which Keras 3 cannot build
    even with --unsafe: the message says so instead of advising --unsafe."""
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(2, 3)(inputs * 2.0)  # `inputs * 2.0` becomes a TFOpLambda layer
    path = tmp_path / "tf_ops.h5"
    tf_keras.Model(inputs, x).save(path)
    for unsafe in (False, True):
        with pytest.raises(ModelLoadError, match="TFOpLambda") as refused:
            load_model(path, unsafe=unsafe)
        assert "--unsafe" not in str(refused.value)


def test_legacy_h5_transfer_model_with_batch_norm_in_its_base(tmp_path, tf_keras):
    """tf.keras 2 writes BatchNormalization's axis as a list (`[3]`); inside a nested base Keras 3's deserialiser
    takes only an int. The model loads and predicts what tf_keras predicts."""
    layers = tf_keras.layers
    tf_keras.utils.set_random_seed(1)
    base_in = tf_keras.Input((16, 16, 3))
    base = tf_keras.Model(base_in, layers.BatchNormalization(name="bn")(layers.Conv2D(4, 3, name="conv")(base_in)),
                          name="base")
    model = tf_keras.Sequential([base, layers.Flatten(), layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    model.predict(x, verbose=0)
    path = tmp_path / "transfer_bn.h5"
    model.save(path)
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.model(x).numpy(), model(x).numpy(), atol=1e-5)


def test_lambda_layer_needs_unsafe(tmp_path, keras):
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    outputs = keras.layers.Conv2D(2, 3, name="conv")(outputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ModelLoadError, match="--unsafe"):
        load_model(path)
    assert load_model(path, unsafe=True).model.get_layer("double") is not None


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_missing_custom_class_is_named(keras, tmp_path, suffix, cli, image_folder):
    @keras.saving.register_keras_serializable(package="mine")
    class MyScale(keras.layers.Layer):
        def call(self, x):
            return x * 2

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(2, 3)(MyScale(name="scale")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    path = tmp_path / f"custom{suffix}"
    model.save(path)
    keras.saving.get_custom_objects().pop("mine>MyScale")  # a fresh process knows no such class
    with pytest.raises(ModelLoadError, match="MyScale") as caught:
        load_model(path)
    assert "register_keras_serializable" in str(caught.value)
    result = cli("generate", path, image_folder, "-o", tmp_path / "out", "--quiet")
    assert result.exit_code == 2 and "MyScale" in result.output and "Traceback" not in result.output


def test_h5_whose_model_config_is_not_json(tmp_path):
    import h5py

    path = tmp_path / "broken.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = "{not json"
    with pytest.raises(ModelLoadError, match="not JSON"):
        load_model(path)


def test_output_on_a_single_output_model_is_refused(saved_models):
    with pytest.raises(ModelLoadError, match="--output"):
        load_model(saved_models["plain"], output="nonsense")
    assert load_model(saved_models["plain"], output="predictions").output_name is None  # its own name is fine


def test_image_size_too_small_for_the_model(keras, tmp_path, cli, image_folder):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    path = tmp_path / "open.keras"
    model.save(path)
    result = cli("generate", path, image_folder, "-o", tmp_path / "out", "--quiet", "--image-size", "1x1")
    assert result.exit_code == 2, result.output
    assert "--image-size" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
