"""The verdict at the top of the report: each check against a case whose answer is known.

- Untrained: every tiny zoo architecture, freshly built, looks untrained against another fresh draw; the same
  architecture after a few optimisation steps does not (the keras.applications families are checked on their zoo
  reports, built with --weights none: tests/test_zoo.py).
- Preprocessing: a model trained on `tf` inputs, reported with the automatic choice (pixels / 255), gets a finding
  that names `tf`; reported with `--preprocess tf`, none.
- Sample sizes: 12 labelled images give the evaluation's n and caveat, and no reliability diagram.
- The verdict is the same list on the page, in summary.md and in report.json, and user text in it is escaped.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from reportgen.api import generate_report
from reportgen.config import ReportOptions


def _evidence(model, seed: int = 0):
    from reportgen.graph import walk_layers
    from reportgen.techniques.untrained import training_evidence, variable_pairs
    from reportgen.techniques.weights import fresh_copy

    return training_evidence(variable_pairs(walk_layers(model), walk_layers(fresh_copy(model, seed))), seed)


def test_every_tiny_zoo_architecture_untrained_is_called_untrained_and_trained_is_not(keras):
    from test_zoo import TINY_MODELS, shapes_images, train_briefly

    images, labels = shapes_images(32, 48, seed=1)
    for name, build in TINY_MODELS.items():
        keras.utils.set_random_seed(3)
        model = build(keras)
        untrained = _evidence(model)
        assert untrained.looks_untrained, (name, untrained)
        assert untrained.unchanged_constants == untrained.constant_variables > 0, name
        binary = model.output_shape[-1] == 1
        loss = ("binary_crossentropy" if binary else
                keras.losses.SparseCategoricalCrossentropy(from_logits=name == "logits"))
        train_briefly(model, images, (labels == 1).astype("float32") if binary else labels, loss, 1 / 255)
        trained = _evidence(model)
        assert not trained.looks_untrained, (name, trained)
        assert trained.changed_constants, name


def test_the_distance_to_the_initialiser_is_a_ks_test():
    """Two draws of one distribution: within the critical distance; a distribution scaled by 1.5 (what training
    does to a kernel's spread): far outside. Against scipy's two-sample KS statistic where scipy is installed."""
    from reportgen.techniques.untrained import initialiser_distance

    rng = np.random.default_rng(0)
    a, b = rng.uniform(-0.1, 0.1, 20_000), rng.uniform(-0.1, 0.1, 30_000)
    same = initialiser_distance(a, b)
    assert same.indistinguishable and same.statistic < same.critical
    wide = initialiser_distance(1.5 * a, b)
    assert not wide.indistinguishable and wide.statistic > 5 * wide.critical
    # The statistic of two uniform ranges of widths 0.3 and 0.2 at equal centres is 1/6 in theory.
    assert wide.statistic == pytest.approx(1 / 6, abs=0.02)
    stats = pytest.importorskip("scipy.stats")
    assert wide.statistic == pytest.approx(stats.ks_2samp(1.5 * a, b).statistic, abs=1e-9)


def _brightness_folder(folder: Path, count: int) -> Path:
    from test_preprocess_probe import CLASSES, brightness_images

    pixels, labels = brightness_images(count, seed=5)
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        (folder / f"level{label}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"level{label}" / f"{i}.png"), image.round().astype(np.uint8))
    assert len(set(labels)) == CLASSES
    return folder


@pytest.fixture(scope="module")
def tf_trained(tmp_path_factory, keras) -> tuple[Path, Path, list[str]]:
    from test_preprocess_probe import CLASSES, train

    folder = tmp_path_factory.mktemp("probe")
    path = folder / "tf_trained.keras"
    train(keras, "tf").save(path)
    return path, _brightness_folder(folder / "images", 120), [f"level{k}" for k in range(CLASSES)]


def _verdict(out: Path) -> list[dict]:
    return json.loads((out / "report.json").read_text())["verdict"]


def test_the_probe_names_the_preprocessing_a_model_was_trained_with(tf_trained, tmp_path):
    model, images, names = tf_trained
    options = ReportOptions(sections=("predictions",), seed=0)
    generate_report(model, [images], tmp_path / "auto", options, class_names=names)
    finding = next(f for f in _verdict(tmp_path / "auto") if f["check"] == "preprocessing")
    assert finding["severity"] == "caution" and "--preprocess tf" in finding["evidence"], finding

    generate_report(model, [images], tmp_path / "tf", ReportOptions(sections=("predictions",), preprocess="tf"),
                    class_names=names)
    finding = next(f for f in _verdict(tmp_path / "tf") if f["check"] == "preprocessing")
    assert finding["severity"] == "ok", finding


def test_few_labelled_images_carry_their_n_and_no_reliability_diagram(saved_models, shared_images, tmp_path):
    result = generate_report(saved_models["plain"], [shared_images], tmp_path / "out",
                             ReportOptions(sections=("predictions", "evaluation")))
    manifest = result.manifest_data
    labelled = manifest["evaluation"]["labelled"]
    assert 0 < labelled < 20
    sizes = [f for f in manifest["verdict"] if f["check"] == "sample_size"]
    assert sizes and f"Only {labelled} labelled images" in sizes[0]["title"]
    evaluation = next(s for s in manifest["sections"] if s["kind"] == "evaluation")
    assert not any(f["key"] == "evaluation-reliability" for f in evaluation["figures"])
    page = result.index_html.read_text()
    assert f"From {labelled} images only" in page and "No reliability diagram" in page
    # The conftest model is random: the verdict says so, first.
    assert manifest["verdict"][0]["check"] == "training" and manifest["verdict"][0]["severity"] == "problem"


def test_the_verdict_is_one_list_on_the_page_in_summary_md_and_report_json(saved_models, shared_images, tmp_path):
    hostile = "<b>*x*</b>"
    result = generate_report(saved_models["plain"], [shared_images], tmp_path / "out",
                             ReportOptions(sections=("predictions", "evaluation")),
                             class_names=[f"{hostile}{k}" for k in range(3)])
    manifest = result.manifest_data
    page = result.index_html.read_text()
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert page.index('id="verdict"') < page.index('id="predictions"')
    for finding in manifest["verdict"]:
        from markupsafe import escape as html_escape

        from reportgen.summary_md import escape as md_escape

        assert str(html_escape(finding["title"])) in page
        assert md_escape(finding["title"]) in summary
    assert "<b>" not in page.split('id="verdict"')[1].split("</section>")[0]
    assert summary.index("**") < summary.index("| |")  # the findings come before the table


def test_the_verdict_reuses_the_weights_sections_distances(keras):
    """The weights section measures each kernel's distance under the key the verdict looks it up by: with them
    handed over, every kernel is found (none measured again) and the evidence is the same."""
    from test_zoo import conv_bn_relu

    from reportgen.graph import walk_layers
    from reportgen.techniques.untrained import training_evidence, variable_pairs
    from reportgen.techniques.weights import compare_weights, fresh_copy

    keras.utils.set_random_seed(4)
    model = conv_bn_relu(keras)
    trained, fresh = walk_layers(model), walk_layers(fresh_copy(model, 0))
    known = {f"{c.layer}/{c.tensor}": c.distance for c in compare_weights(trained, fresh, 0)}
    pairs = variable_pairs(trained, fresh)
    assert known and set(known) <= {f"{p.layer}/{p.name}" for p in pairs}
    assert training_evidence(pairs, 0, known) == training_evidence(pairs, 0)
