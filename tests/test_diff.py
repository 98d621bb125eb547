"""`reportgen diff`: a model against a further-trained copy shows which weights, predictions and maps changed;
synthetic reports check matching by name, what is listed as not compared, and the refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from reportgen.api import generate_report
from reportgen.config import ReportOptions
from reportgen.diff.build import diff_reports
from reportgen.diff.compare import correlation
from reportgen.errors import InputError
from reportgen.loading.images import discover_images, load_images
from reportgen.render import write_report
from reportgen.report import ImageEntry, Report, Section

# Every section a diff reads, at cheap settings.
OPTIONS = ReportOptions(sections=("summary", "weights", "predictions", "data_health", "filter_patterns", "cam"),
                        cam_methods=("gradcam",), save_arrays=True, top_k=2, steps=5, filters=2)


def _inputs(folder: Path) -> np.ndarray:
    return load_images(discover_images([folder]), (32, 32, 3)).pixels / 255.0  # the fixtures' preprocessing


@pytest.fixture(scope="module")
def versions(tmp_path_factory, keras, shared_images):
    """v1: the plain fixture model; v2: the same model trained further, towards labels shifted by one class so
    that predictions flip. Both reported with --save-arrays; then their diff."""
    from conftest import build_plain_model

    folder = tmp_path_factory.mktemp("diff")
    v1 = build_plain_model(keras, seed=0)
    v2 = keras.models.clone_model(v1)
    v2.set_weights(v1.get_weights())
    x = _inputs(shared_images).astype(np.float32)
    labels = np.arange(len(x)) % 3
    v2.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    v2.fit(x, labels, epochs=15, batch_size=len(x), verbose=0)
    reports = {}
    for name, model, version in (("old", v1, "1"), ("new", v2, "2")):
        reports[name] = folder / name
        generate_report(model, [shared_images], reports[name], dataclasses.replace(OPTIONS, model_version=version))
    reports["diff"] = folder / "diff"
    diff_reports(reports["old"], reports["new"], reports["diff"], images=shared_images)
    return {"models": (v1, v2), "x": x, **reports}


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in json"))


def _section(manifest: dict, section_id: str) -> dict:
    return next(s for s in manifest["sections"] if s["id"] == section_id)


def test_changed_weights_are_measured_per_tensor(versions):
    v1, v2 = versions["models"]
    manifest = _manifest(versions["diff"])
    layers = {s["layer"]: s for s in manifest["sections"] if s["kind"] == "weights_diff" and "layer" in s}
    assert set(layers) == {"conv1", "conv2", "predictions"}
    for path, section in layers.items():
        tensor = section["data"]["tensors"][0]
        old, new = v1.get_layer(path).kernel.numpy(), v2.get_layer(path).kernel.numpy()
        expected = np.linalg.norm(new.astype(np.float64) - old) / np.linalg.norm(old.astype(np.float64))
        assert tensor["relative_change"] == pytest.approx(expected, rel=1e-5) and expected > 0.01
        assert tensor["max_abs_change"] == pytest.approx(np.abs(new - old).max(), rel=1e-5)
        assert tensor["old"]["std"] == pytest.approx(old.std(), rel=1e-4)
        figures = [f["file"] for f in section["figures"]]
        assert any(f.endswith("-histogram.png") for f in figures)
        if old.ndim == 4:
            assert any(f.endswith("-change.png") for f in figures)
        for figure in figures:
            assert (versions["diff"] / figure).is_file()


def test_flipped_predictions_are_the_images_whose_top_class_changed(versions):
    v1, v2 = versions["models"]
    x = versions["x"]
    before = np.argmax(v1.predict(x, verbose=0), axis=1)
    after = np.argmax(v2.predict(x, verbose=0), axis=1)
    manifest = _manifest(versions["diff"])
    names = [image["name"] for image in _manifest(versions["new"])["images"]]
    expected = {names[i] for i in np.flatnonzero(before != after)}
    assert expected, "the further training should flip some predictions"
    data = _section(manifest, "predictions-diff")["data"]
    assert {i["name"] for i in data["images"] if i["flipped"]} == expected
    assert data["flipped"] == len(expected) == len(manifest["diff"]["predictions"]["flipped"])
    classes = _manifest(versions["new"])["class_names"]
    for image in data["images"]:
        i = names.index(image["name"])
        assert (image["old"], image["new"]) == (classes[before[i]], classes[after[i]])
    html = (versions["diff"] / "index.html").read_text()
    assert html.count("FLIPPED (") == len(expected)  # each flip marked in the all-images table
    summary = (versions["diff"] / "summary.md").read_text()
    assert f"| Flipped predictions | {len(expected)} of {len(names)}" in summary
    assert "[Full report](index.html)" in summary


def test_cam_changes_are_correlations_of_the_stored_maps(versions):
    manifest = _manifest(versions["diff"])
    old, new = _manifest(versions["old"]), _manifest(versions["new"])
    maps = _section(manifest, "cam-diff")["data"]["maps"]

    def keys(report: dict) -> set:
        names = {image["id"]: image["name"] for image in report["images"]}
        return {(names[h["image"]], h["class_index"], h["method"]) for h in report["heatmaps"]}

    # Maps are made for each image's top prediction and label, so a flip leaves maps that exist on one side only.
    both = keys(old) & keys(new)
    assert {(m["image"], m["class_index"], m["method"]) for m in maps} == both and both
    only = _section(manifest, "not-compared")["data"]["class activation maps"]
    assert len(only["only_old"]) == len(keys(old) - both) and len(only["only_new"]) == len(keys(new) - both)
    with np.load(versions["old"] / "arrays.npz") as old_arrays, np.load(versions["new"] / "arrays.npz") as new_arrays:
        for entry in maps:
            a, b = old_arrays[_heatmap(old, entry)["array_key"]], new_arrays[_heatmap(new, entry)["array_key"]]
            expected = correlation(a, b)
            assert entry["correlation"] == pytest.approx(expected, abs=1e-6) or (
                entry["correlation"] is None and not np.isfinite(expected))
    assert manifest["diff"]["cams"]["compared"] == len(maps)
    # Each compared map is drawn image | old | new | new - old; further training changed some maps.
    differences = [_difference_tile(versions["diff"], f) for f in _cam_figures(manifest)]
    assert differences and any((np.abs(tile - tile[0, 0]).max(axis=2) > 8).mean() > 0.05 for tile in differences)


def _cam_figures(manifest: dict) -> list[dict]:
    return [f for s in manifest["sections"] if s["kind"] == "cam_diff" for f in s["figures"]]


def _difference_tile(folder: Path, figure: dict) -> np.ndarray:
    """The last tile (new - old) of a map figure: four 128 px tiles side by side, 2 px apart."""
    import cv2

    pixels = cv2.imread(str(folder / figure["file"]), cv2.IMREAD_COLOR)
    assert pixels.shape[1] == 2 + 4 * (128 + 2)  # image, old, new, difference
    return pixels[2:130, 2 + 3 * 130:2 + 3 * 130 + 128].astype(np.float32)


def test_filter_patterns_of_both_versions_side_by_side(versions):
    manifest = _manifest(versions["diff"])
    old = _manifest(versions["old"])
    assert manifest["diff"]["filter_patterns"]["compared"] == len(old["filter_patterns"]) > 0
    for layer in {e["layer"] for e in old["filter_patterns"]}:
        section = _section(manifest, f"filter-patterns-diff-{layer}")
        files = {f["key"]: (versions["diff"] / f["file"]).read_bytes() for f in section["figures"]}
        assert set(files) == {f"filter-patterns-diff-{layer}-{direction}-{side}"
                              for direction in ("ascent", "descent") for side in ("old", "new")}
        # Further training moved the filters, so their patterns moved too.
        key = f"filter-patterns-diff-{layer}-ascent"
        assert files[f"{key}-old"] != files[f"{key}-new"]


def _heatmap(manifest: dict, entry: dict) -> dict:
    """The report's heatmap entry for the diff's (image name, class, method)."""
    image = next(image["id"] for image in manifest["images"] if image["name"] == entry["image"])
    return next(h for h in manifest["heatmaps"] if (h["image"], h["class_index"], h["method"]) ==
                (image, entry["class_index"], entry["method"]))


def test_a_report_against_itself_shows_no_change(versions, tmp_path, shared_images):
    out = tmp_path / "same"
    diff_reports(versions["new"], versions["new"], out, images=shared_images)
    manifest = _manifest(out)
    assert manifest["diff"]["weights"]["largest"]["relative_change"] == 0
    assert manifest["diff"]["predictions"]["flipped"] == []
    maps = _section(manifest, "cam-diff")["data"]["maps"]
    assert maps and all(m["correlation"] == pytest.approx(1.0) for m in maps if m["correlation"] is not None)
    differences = [_difference_tile(out, f) for f in _cam_figures(manifest)]
    assert differences and all((tile == tile[0, 0]).all() for tile in differences)  # no change: one flat colour
    assert "not-compared" not in [s["id"] for s in manifest["sections"]]


# ------------------------------------------------------------------------------------- synthetic reports


def _fake_report(out: Path, image_names: list[str], layers: dict[str, np.ndarray], heatmaps: dict[str, np.ndarray],
                 patterns: dict[tuple[str, int], np.ndarray]) -> Path:
    """A report folder as reportgen writes it, with chosen arrays: weights per layer, one gradcam map per image
    (class 0), one ascent pattern per (layer, filter)."""
    ids = {name: name.replace("/", "-").replace(".", "-") for name in image_names}
    sections, extra = [], {"heatmaps": [], "filter_patterns": []}
    for path, kernel in layers.items():
        key = f"weights-{path}.trained"
        sections.append(Section(id=f"weights-{path}", kind="weights", title=path, blocks=(), layer=path,
                                data={"type": "Conv2D", "tensors": [{"tensor": "kernel", "shape": list(kernel.shape),
                                                                     "array_keys": {"trained": key}}]},
                                arrays={key: kernel}))
    maps = {}
    for name, heatmap in heatmaps.items():
        key = f"cam.{ids[name]}.class-0"
        maps[key] = heatmap
        extra["heatmaps"].append({"method": "gradcam", "image": ids[name], "class_index": 0, "class_name": "zero",
                                  "layer": "conv", "array_key": key})
    stacks = {}
    for (layer, number), pattern in patterns.items():
        key = f"filter_patterns.{layer}.ascent"
        stacks.setdefault(key, []).append(pattern)
        extra["filter_patterns"].append({"layer": layer, "filter": number, "direction": "ascent", "activation": 1.0,
                                         "array_key": key, "array_index": len(stacks[key]) - 1, "dead": number == 9})
    arrays = {**maps, **{key: np.stack(value) for key, value in stacks.items()}}
    sections.append(Section(id="extra", kind="cam", title="maps", blocks=(), arrays=arrays))
    report = Report(
        title="fake", created="2024-01-01T00:00:00Z", model={"name": "fake", "preprocess": "scale"},
        options={"seed": 0}, class_names=("zero", "one"), sections=tuple(sections), warnings=(), seconds={},
        images=tuple(ImageEntry(ids[n], n, f"/images/{n}", None, (8, 8)) for n in image_names),
        versions={"reportgen": "0", "tensorflow": "0", "keras": "0"}, extra=extra)
    return write_report(report, out, save_arrays=True)


def test_what_differs_is_listed_and_what_matches_is_compared(tmp_path):
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    heat = rng.random((4, 4)).astype(np.float32)
    pattern = rng.random((8, 8, 3)).astype(np.float32)
    old = _fake_report(tmp_path / "old", ["a/x.png", "a/y.png"], {"conv": kernel, "gone": kernel},
                       {"a/x.png": heat, "a/y.png": heat}, {("conv", 0): pattern, ("conv", 9): pattern})
    new = _fake_report(tmp_path / "new", ["a/y.png", "b/z.png"], {"conv": kernel * 2, "added": kernel},
                       {"a/y.png": -heat[::1, :, None], "b/z.png": heat},  # a (4, 4, 1) map: channel axis dropped
                       {("conv", 0): 1 - pattern, ("conv", 9): pattern})
    diff_reports(old, new, tmp_path / "diff")
    manifest = _manifest(tmp_path / "diff")
    [only] = [s for s in manifest["sections"] if s["id"] == "not-compared"]
    assert only["data"]["images"] == {"only_old": ["a/x.png"], "only_new": ["b/z.png"]}
    assert only["data"]["weight tensors"] == {"only_old": ["gone kernel"], "only_new": ["added kernel"]}
    assert [i["name"] for i in manifest["images"]] == ["a/y.png"]
    weights = _section(manifest, "weights-diff-conv")["data"]["tensors"][0]
    assert weights["relative_change"] == pytest.approx(1.0)  # ||2k - k|| / ||k||
    [cam] = _section(manifest, "cam-diff")["data"]["maps"]
    assert cam["image"] == "a/y.png" and cam["correlation"] == pytest.approx(-1.0)
    patterns = _section(manifest, "filter-patterns-diff-conv")
    assert {f["key"] for f in patterns["figures"]} == {"filter-patterns-diff-conv-ascent-old",
                                                       "filter-patterns-diff-conv-ascent-new"}
    html = (tmp_path / "diff" / "index.html").read_text()
    assert "only in OLD" in html and "OLD and NEW have no predictions" in html  # said, not skipped silently


def test_reports_without_arrays_are_refused(versions, tmp_path, cli, shared_images, saved_models):
    bare = tmp_path / "bare"
    generate_report(saved_models["plain"], [shared_images], bare, ReportOptions(sections=("summary",)))
    with pytest.raises(InputError, match="--save-arrays"):
        diff_reports(versions["old"], bare, tmp_path / "out")
    result = cli("diff", bare, versions["new"], "-o", tmp_path / "out")
    assert result.exit_code == 2 and "OLD" in result.output and "--save-arrays" in result.output
    result = cli("diff", tmp_path, versions["new"], "-o", tmp_path / "out")
    assert result.exit_code == 2 and "not a reportgen report" in result.output
    result = cli("diff", versions["old"], versions["new"], "-o", versions["old"])
    assert result.exit_code == 2 and "is the OLD report" in result.output
    assert not (tmp_path / "out").exists()
    result = cli("diff", versions["old"], versions["new"], "-o", tmp_path / "cli", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "index.html").is_file()


def test_the_diff_reads_no_path_a_report_names(versions, tmp_path, cli):
    import shutil

    import cv2
    import numpy as np

    private = tmp_path / "private.png"
    cv2.imwrite(str(private), np.full((64, 64, 3), (0, 0, 255), np.uint8))  # pure red, nowhere in the reports
    new = tmp_path / "new"
    shutil.copytree(versions["new"], new)
    manifest = json.loads((new / "report.json").read_text())
    for image in manifest["images"]:
        image["path"] = str(private)
    (new / "report.json").write_text(json.dumps(manifest))
    import reportgen.diff.build as build

    reads = []
    real = cv2.imread
    cv2.imread = lambda *a, **k: reads.append(a) or real(*a, **k)
    try:
        result = cli("diff", versions["old"], new, "-o", tmp_path / "diff", "--quiet")
    finally:
        cv2.imread = real
    assert result.exit_code == 0, result.output
    assert not reads
    assert build is not None


def test_the_diff_shows_images_only_from_the_folder_given(versions, tmp_path, cli, shared_images):
    result = cli("diff", versions["old"], versions["new"], "-o", tmp_path / "diff", "--quiet", "--images",
                 shared_images)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "diff" / "report.json").read_text())
    figures = _cam_figures(manifest)
    assert figures and all(_tile_count(tmp_path / "diff", f) == 4 for f in figures)  # image, old, new, change
    bare = tmp_path / "bare"
    assert cli("diff", versions["old"], versions["new"], "-o", bare, "--quiet").exit_code == 0
    assert all(_tile_count(bare, f) == 3 for f in _cam_figures(_manifest(bare)))  # no image without --images


def _tile_count(folder: Path, figure: dict) -> int:
    import cv2

    return (cv2.imread(str(folder / figure["file"]), cv2.IMREAD_COLOR).shape[1] - 2) // 130


def test_a_diff_of_unrelated_models_warns_at_the_top(tmp_path):
    import numpy as np

    kernel = np.ones((3, 3, 3, 4), np.float32)
    old = _fake_report(tmp_path / "old", ["a/x.png"], {"conv": kernel}, {}, {})
    new = _fake_report(tmp_path / "new", ["a/x.png"], {"other": kernel}, {}, {})
    manifest = json.loads((new / "report.json").read_text())
    manifest["class_names"] = ["car", "bus", "van"]
    (new / "report.json").write_text(json.dumps(manifest))
    diff_reports(old, new, tmp_path / "diff")
    warnings = _manifest(tmp_path / "diff")["warnings"]
    assert warnings and "unrelated" in warnings[0]


def test_changed_predictions_are_drawn_on_the_map_and_in_a_gallery(versions):
    """The diff marks on the new version's map (its data health layout in arrays.npz) exactly the images whose top
    prediction changed, and shows them (from --images) in a gallery."""
    manifest = _manifest(versions["diff"])
    section = _section(manifest, "predictions-diff")
    flipped = section["data"]["flipped"]
    assert flipped > 0
    keys = {f["key"]: f for f in section["figures"]}
    assert f"the {flipped} images whose top prediction changed" in keys["predictions-diff-map"]["caption"]
    assert "predictions-diff-gallery" in keys
    new = _manifest(versions["new"])
    health = next(s for s in new["sections"] if s["id"] == "data-health")
    with np.load(versions["new"] / "arrays.npz") as arrays:
        layout = arrays[health["data"]["layout_array_key"]]
    assert layout.shape == (len(new["images"]), 2) and np.isfinite(layout).all()
