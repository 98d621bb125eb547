"""`reportgen.keras.ReportCallback`: a versioned report of the in-training model per chosen epoch."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from reportgen.config import ReportOptions
from reportgen.errors import InputError
from reportgen.keras import ReportCallback, epoch_folder
from reportgen.sections import available_sections

OPTIONS = ReportOptions(sections=tuple(s for s in ("summary", "weights", "predictions") if s in available_sections()),
                        save_arrays=True)


@pytest.fixture
def training(keras, shared_images):
    """A fresh tiny classifier and some data to fit it on."""
    from conftest import build_plain_model

    model = build_plain_model(keras, seed=2)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((8, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 3, 8)
    return model, x, y


def test_reports_are_written_during_fit_of_the_model_as_it_was(keras, training, shared_images, tmp_path):
    model, x, y = training
    seen: dict[int, np.ndarray] = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch + 1] = self.model.get_layer("conv1").kernel.numpy().copy()

    archive = tmp_path / "archive"
    callback = ReportCallback([shared_images], archive, every_n_epochs=2, options=OPTIONS,
                              class_names=["a", "b", "c"])
    model.fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[Snapshot(), callback])

    assert sorted(p.name for p in archive.iterdir()) == ["epoch-0002", "epoch-0003"]  # every 2nd, and the end
    assert callback.written == [archive / "epoch-0002", archive / "epoch-0003"]
    for epoch in (2, 3):
        folder = archive / epoch_folder(epoch)
        manifest = json.loads((folder / "report.json").read_text())
        assert manifest["model"]["version"] == f"epoch-{epoch:04d}"
        assert manifest["class_names"] == ["a", "b", "c"]
        assert (folder / "index.html").is_file() and (folder / "summary.md").is_file()
        conv1 = next(s for s in manifest["sections"] if s.get("layer") == "conv1")
        key = conv1["data"]["tensors"][0]["array_keys"]["trained"]
        with np.load(folder / "arrays.npz") as arrays:
            np.testing.assert_array_equal(arrays[key], seen[epoch])  # the weights at the end of that epoch
    assert not np.array_equal(seen[2], seen[3])  # training went on between the two reports


def test_the_last_epoch_is_not_written_twice_and_random_states_are_kept(training, shared_images, tmp_path):
    model = training[0]
    callback = ReportCallback(shared_images, tmp_path / "archive", every_n_epochs=1,
                              options=ReportOptions(sections=("weights",), model_version="v7"))
    callback.set_model(model)
    random.seed(11)
    np.random.seed(11)
    expected = (random.random(), np.random.random())
    random.seed(11)
    np.random.seed(11)
    callback.on_epoch_end(0)
    callback.on_train_end()
    assert (random.random(), np.random.random()) == expected
    assert callback.written == [tmp_path / "archive" / "epoch-0001"]
    manifest = json.loads((tmp_path / "archive" / "epoch-0001" / "report.json").read_text())
    assert manifest["model"]["version"] == "v7-epoch-0001"
    with pytest.raises(InputError, match="every_n_epochs"):
        ReportCallback(shared_images, tmp_path, every_n_epochs=0)
