"""Reading reports and rules files (`check`, `diff`, image discovery): every field a command reads is validated where
report.json is read; arrays.npz, report.json and rules files are bounded before they are loaded; names pair images
unambiguously. Reports here are written by hand (report.json and arrays.npz), no model runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from reportgen.check import check_report, parse_rules, read_rules_file
from reportgen.check_render import as_json, markdown, table_text
from reportgen.errors import InputError
from reportgen.report_folder import facts, read

CLASSES = ["cat", "dog"]
ALL_RULES = ("min_accuracy = 0.0\nmax_ece = 1.0\nmax_dead_filters = 1.0\ncam_sanity = true\n"
             "max_accuracy_drop = 1.0\nmax_deletion_auc_increase = 1.0\nmax_flipped_predictions = 100\n"
             "min_cam_correlation = -1.0\n")


def _map(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((4, 4)).astype(np.float32)


def manifest_of(names: list[str], predicted: list[int], classes: list[str] = CLASSES, layer: str = "conv") -> dict:
    """A report.json as render writes it, with every field check and diff read: each image labelled by the folder
    of its name, predicted `predicted[i]`; one gradcam map per image, one filter pattern, one feature-map layer."""
    ids = [f"img-{i}" for i in range(len(names))]
    images, predictions, heatmaps = [], [], []
    for image, name, klass in zip(ids, names, predicted, strict=True):
        label = name.split("/")[-2] if "/" in name else None
        top = {"class_index": klass, "class_name": classes[klass], "probability": 0.9}
        images.append({"id": image, "name": name, "path": f"/images/{name}", "label": label, "original_size": [8, 8],
                       "conversion": "", "prediction": top, "detail": True})
        predictions.append({"image": image, "name": name, "label": label, "label_index": None, "top_k": [top],
                            "correct": label == classes[klass] if label in classes else None})
        heatmaps.append({"method": "gradcam", "image": image, "class_index": klass, "class_name": classes[klass],
                         "layer": layer, "deletion_auc": 0.2, "array_key": f"cam.{image}", "shape": [4, 4]})
    return {
        "schema_version": 1, "generator": "reportgen", "created": "2024-01-01T00:00:00Z", "title": "fixture",
        "model": {"name": "fixture", "version": "1"}, "options": {"seed": 0}, "class_names": classes,
        "images": images, "predictions": predictions, "heatmaps": heatmaps,
        "filter_patterns": [{"layer": layer, "filter": 0, "direction": "ascent", "activation": 1.0,
                             "array_key": "patterns", "array_index": 0, "dead": False}],
        "feature_maps": [{"layer": layer, "channels": 4, "dead_channels": 1}],
        "sections": [
            {"id": "summary", "kind": "summary", "data": {"layers": [{"path": layer}]}, "figures": []},
            {"id": "cam-gradcam", "kind": "cam", "layer": layer,
             "data": {"method": "gradcam", "sanity": {"flagged": False, "correlation": 0.1, "status": "passes"}},
             "figures": []},
            {"id": f"weights-{layer}", "kind": "weights", "layer": layer, "figures": [],
             "data": {"type": "Conv2D", "tensors": [{"tensor": "kernel", "shape": [3, 3, 3, 4],
                                                     "array_keys": {"trained": f"weights.{layer}"}}]}},
        ],
        "warnings": [], "arrays": "arrays.npz",
    }


def write_report(folder: Path, manifest: dict, arrays: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(manifest))
    if arrays is None:
        arrays = {f"cam.{h['image']}": _map(i) for i, h in enumerate(manifest["heatmaps"])}
        arrays["patterns"] = np.zeros((1, 8, 8, 3), np.float32)
        arrays[f"weights.{manifest['sections'][0]['data']['layers'][0]['path']}"] = np.ones((3, 3, 3, 4), np.float32)
    np.savez_compressed(folder / "arrays.npz", **arrays)
    return folder


@pytest.fixture()
def good(tmp_path) -> Path:
    return write_report(tmp_path / "good", manifest_of(["cat/1.png", "dog/2.png"], [0, 1]))


def _rules(tmp_path: Path, text: str, name: str = "rules.toml") -> Path:
    path = tmp_path / name
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return path


def _refused(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Internal error" not in result.output and "Traceback" not in result.output
    for word in words:
        assert word in result.output, (word, result.output)


def test_the_fixture_is_a_report_every_rule_reads(cli, good, tmp_path):
    result = cli("check", good, "--baseline", good, "--rules", _rules(tmp_path, ALL_RULES))
    assert result.exit_code == 0, result.output
    assert "0 failed, 0 not evaluated" in result.output  # every rule found its numbers in the hand-written fields


# ------------------------------------------------------------------------------- tampered report.json / npz


def _header_only_npy(shape: tuple, dtype: str = "<f4") -> bytes:
    """An npy file whose header claims `shape` and that holds no data (as a hostile arrays.npz would)."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _drop(path: list):
    def edit(m):
        target = m
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return edit


def _set(path: list, value):
    def edit(m):
        target = m
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


TAMPERED = {  # name: (edit of report.json, words the message names)
    "no dead": (_drop(["filter_patterns", 0, "dead"]), "filter_patterns[0].dead"),
    "no dead_channels": (_drop(["feature_maps", 0, "dead_channels"]), "feature_maps[0].dead_channels"),
    "no flagged": (_drop(["sections", 1, "data", "sanity", "flagged"]), "sanity.flagged"),
    "no array_key": (_drop(["heatmaps", 0, "array_key"]), "heatmaps[0].array_key"),
    "no label": (_drop(["predictions", 0, "label"]), "predictions[0].label"),
    "no image id": (_drop(["images", 0, "id"]), "images[0].id"),
    "string probability": (_set(["images", 0, "prediction", "probability"], "0.9"), "prediction.probability"),
    "string class_index": (_set(["images", 1, "prediction", "class_index"], "1"), "prediction.class_index"),
    "string deletion_auc": (_set(["heatmaps", 0, "deletion_auc"], "low"), "heatmaps[0].deletion_auc"),
    "string channels": (_set(["feature_maps", 0, "channels"], "4"), "feature_maps[0].channels"),
    "string correlation": (_set(["sections", 1, "data", "sanity", "correlation"], "0.1"), "sanity.correlation"),
    "string array_index": (_set(["filter_patterns", 0, "array_index"], "x"), "filter_patterns[0].array_index"),
    "string filter": (_set(["filter_patterns", 0, "filter"], "0"), "filter_patterns[0].filter"),
    "dead over channels": (_set(["feature_maps", 0, "dead_channels"], 5), "at most its channels"),
    "negative channels": (_set(["feature_maps", 0, "channels"], -4), "feature_maps[0].channels"),
    "empty top_k": (_set(["predictions", 0, "top_k"], []), "predictions[0].top_k"),
    "number class name": (_set(["class_names", 1], 7), "class_names[1]"),
    "string shape": (_set(["sections", 2, "data", "tensors", 0, "shape"], "3x3"), "tensors[0].shape"),
    "model a string": (_set(["model"], "x"), "model"),
}


@pytest.mark.parametrize("name", sorted(TAMPERED))
def test_a_tampered_report_json_is_exit_2_naming_the_field(cli, good, tmp_path, name):
    edit, words = TAMPERED[name]
    manifest = json.loads((good / "report.json").read_text())
    edit(manifest)
    bad = write_report(tmp_path / "bad", manifest)
    rules = _rules(tmp_path, ALL_RULES)
    _refused(cli("check", bad, "--baseline", good, "--rules", rules), "report.json field", words)
    _refused(cli("check", good, "--baseline", bad, "--rules", rules), "--baseline", words)
    _refused(cli("diff", good, bad, "-o", tmp_path / "diff"), "NEW", words)
    assert not (tmp_path / "diff").exists()


def test_a_count_of_400_digits_is_exit_2(cli, good, tmp_path):
    text = (good / "report.json").read_text().replace('"dead_channels": 1', '"dead_channels": 1' + "0" * 400)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "report.json").write_text(text)
    _refused(cli("check", bad, "--rules", _rules(tmp_path, "max_dead_filters = 0.5\n")), "dead_channels")


def _with_npz_member(folder: Path, key: str, data: bytes) -> Path:
    """Replace the array `key` of folder/arrays.npz with raw npy bytes, deflated as np.savez_compressed does."""
    npz = folder / "arrays.npz"
    with zipfile.ZipFile(npz) as old:
        members = {n: old.read(n) for n in old.namelist() if n != f"{key}.npy"}
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as new:
        for member, content in members.items():
            new.writestr(member, content)
        new.writestr(f"{key}.npy", data)
    return folder


@pytest.mark.parametrize("case", ["strings", "3.6 TiB", "1 GiB map", "other shape", "objects"])
def test_arrays_are_checked_by_their_npy_header_before_loading(cli, good, tmp_path, case):
    import io

    bad = write_report(tmp_path / "bad", json.loads((good / "report.json").read_text()))
    if case == "strings":
        buffer = io.BytesIO()
        np.save(buffer, np.array(["a", "b"]))
        data, words = buffer.getvalue(), "not numbers"
    elif case == "objects":
        data, words = _header_only_npy((2,), "|O"), "not numbers"
    elif case == "3.6 TiB":
        data, words = _header_only_npy((1 << 40,)), "MiB an array of its kind may have"
    elif case == "1 GiB map":  # zeros deflate ~1000:1: such a member is a few MB; its header is what counts
        data, words = _header_only_npy((16384, 16384)), "MiB an array of its kind may have"
    else:
        buffer = io.BytesIO()
        np.save(buffer, _map(0).reshape(2, 8))
        data, words = buffer.getvalue(), "report.json (heatmaps[].shape) says (4, 4)"
    _with_npz_member(bad, "cam.img-0", data)
    rules = _rules(tmp_path, "min_cam_correlation = 0.0\n")
    tracemalloc.start()
    try:
        result = cli("check", bad, "--baseline", good, "--rules", rules)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _refused(result, "arrays.npz 'cam.img-0'", words)
    assert peak < 50 << 20
    _refused(cli("diff", good, bad, "-o", tmp_path / "diff"), "arrays.npz 'cam.img-0'")


def test_a_pattern_index_outside_its_stack_is_exit_2(cli, good, tmp_path):
    manifest = json.loads((good / "report.json").read_text())
    manifest["filter_patterns"][0]["array_index"] = 999
    bad = write_report(tmp_path / "bad", manifest)
    _refused(cli("diff", good, bad, "-o", tmp_path / "diff"), "filter_patterns[].array_index is 999", "1 patterns")


def test_a_baseline_read_before_its_folder_is_replaced_keeps_its_own_maps(good, tmp_path):
    """`generate -o OUT --check --baseline OUT`: the baseline is read before OUT is replaced (render swaps the
    folders and deletes the old one), and the rules still see its report.json and arrays.npz."""
    import shutil

    baseline = read.read_report(good, "--baseline")
    staging = write_report(tmp_path / "staging", manifest_of(["cat/1.png", "dog/2.png"], [1, 1]),
                           {"cam.img-0": -_map(0), "cam.img-1": -_map(1), "patterns": np.zeros((1, 8, 8, 3)),
                            "weights.conv": np.ones((3, 3, 3, 4), np.float32)})
    shutil.rmtree(good)
    staging.rename(good)
    result = check_report(good, parse_rules({"max_flipped_predictions": 0, "min_cam_correlation": 0.5}), baseline)
    flips, maps = result.results
    assert (flips.status, flips.value) == ("fail", 1)
    assert maps.status == "fail" and maps.value == pytest.approx(-1.0)  # the old maps against their negatives


def test_the_writer_builds_what_the_reader_reads(tmp_path):
    """report.json built by `write` from plain values (as render hands them over) reads back into the schema, and
    its dict is what was written; numpy scalars, tuples and NaN become plain JSON on the way."""
    from reportgen.report_folder import write
    from reportgen.report_folder.schema import TopClass

    fixture = manifest_of(["cat/1.png", "dog/2.png"], [0, 1])
    images = [write.image_entry(i["id"], i["name"], i["path"], i["label"], tuple(i["original_size"]), "",
                                {**i["prediction"], "class_index": np.int64(i["prediction"]["class_index"])}, True)
              for i in fixture["images"]]
    sections = [write.section_entry(s["id"], s["kind"], s["id"].title(), s.get("layer"), None,
                                    [write.figure_entry("f", "figures/f.png", "F", "", 4, 4, True)], s["data"],
                                    {"x": 1}) for s in fixture["sections"]]
    manifest = write.report_dict(
        versions={"reportgen": "0"}, created=fixture["created"], title=fixture["title"], model=fixture["model"],
        options=fixture["options"], images=images, class_names=CLASSES, sections=sections, warnings=["w"],
        seconds={"cam": np.float32(0.5)}, arrays="arrays.npz",
        extra={key: fixture[key] for key in ("predictions", "heatmaps", "filter_patterns", "feature_maps")}
        | {"evaluation": {"ece": float("nan")}, "title": "not this one"})
    assert list(manifest)[:2] == ["schema_version", "generator"] and manifest["title"] == "fixture"
    folder = write_report(tmp_path / "written", fixture)
    write.write_manifest(folder, manifest)
    parsed = read.read_report(folder).report
    assert parsed.raw == json.loads((folder / "report.json").read_text()) == manifest
    assert write.manifest_text(parsed.raw) == (folder / "report.json").read_text()
    assert parsed.images[0].prediction == TopClass(0, "cat", 0.9) and parsed.images[0].original_size == (8, 8)
    assert parsed.ece is None and parsed.warnings == ("w",) and manifest["sections"][0]["arrays"] == ["x"]
    assert [f.file for f in parsed.sections[0].figures] == ["figures/f.png"]
    assert facts.accuracy(parsed).text() == "100.0% (2 of 2)"
    assert facts.weight_tensors(parsed)[("conv", "kernel")].array_key == "weights.conv"


def test_only_the_last_array_is_kept(good):
    folder = read.read_report(good)
    first = folder.array("cam.img-0")
    assert folder.array("cam.img-0") is first  # asked again: not read again
    folder.array("cam.img-1")
    assert folder.array("cam.img-0") is not first  # read again: it was dropped


# ------------------------------------------------------------------------------------------- report.json size


def test_a_report_json_of_millions_of_empty_objects_is_refused_before_parsing(cli, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    with open(bad / "report.json", "wb") as file:  # 24 MB, 8 million values: parsed, about 600 MB
        file.write(b'{"schema_version": 1, "generator": "reportgen", "x": [')
        file.write(b"{}," * 8_000_000 + b"{}]}")
    rules = _rules(tmp_path, "min_accuracy = 0.5\n")
    tracemalloc.start()
    try:
        result = cli("check", bad, "--rules", rules)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _refused(result, "JSON values", "512 MiB")
    assert peak < 100 << 20  # the file's bytes, never their parse


def test_a_report_json_over_the_size_limit_is_never_read(cli, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    with open(bad / "report.json", "wb") as file:
        file.truncate(read.MAX_MANIFEST_BYTES + 1)  # sparse: no disk, and reading it would take seconds
    started = time.monotonic()
    _refused(cli("check", bad, "--rules", _rules(tmp_path, "min_accuracy = 0.5\n")), "128 MiB")
    assert time.monotonic() - started < 1


def test_recognising_a_report_among_the_images_parses_nothing(tmp_path, good, monkeypatch):
    import shutil

    from reportgen.loading.images import discover_images

    images = tmp_path / "images"
    (images / "cat").mkdir(parents=True)
    (images / "cat" / "1.png").write_bytes(b"png")
    shutil.copytree(good, images / "old-report")
    (images / "old-report" / "stray.png").write_bytes(b"png")
    big = images / "big"
    big.mkdir()
    with open(big / "report.json", "wb") as file:  # not a report: its images count
        file.truncate(300 << 20)
    (big / "x.png").write_bytes(b"png")
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("report.json parsed"))
    names = [s.name for s in discover_images([images])]
    assert names == ["big/x.png", "cat/1.png"]


# --------------------------------------------------------------------------------------------- rules files


def test_rules_from_dev_zero_are_refused_at_once_in_bounded_memory(good):
    # A fresh parent whose one child is the command, so the peak memory measured is that command's own.
    measure = ("import resource, subprocess, sys, time; started = time.monotonic(); "
               "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(done.returncode, time.monotonic() - started, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(done.stderr)")
    result = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "reportgen", "check", str(good),
                             "--rules", "/dev/zero"], capture_output=True, text=True, timeout=60)
    code, seconds, peak_kib = result.stdout.split("\n")[0].split()
    assert int(code) == 2 and "--rules" in result.stdout and "not a regular file" in result.stdout
    assert float(seconds) < 1.5  # the bound is a second of work; the rest is the interpreter starting under load
    assert int(peak_kib) < 200 << 10


@pytest.mark.parametrize("kind", ["fifo", "binary", "latin-1", "deep", "oversized", "folder"])
def test_rules_files_that_cannot_be_rules_are_exit_2(cli, good, tmp_path, kind):
    path = tmp_path / "rules.toml"
    if kind == "fifo":
        os.mkfifo(path)  # opened for reading, a FIFO would wait for a writer forever
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "latin-1":
        path.write_bytes("min_accuracy = 0.5 # précis\n".encode("latin-1"))
    elif kind == "deep":
        path.write_text("min_accuracy = " + "[" * 100_000)
    elif kind == "oversized":
        path.write_text("# " + "x" * (2 << 20) + "\nmin_accuracy = 0.5\n")
    else:
        path = tmp_path
    result = cli("check", good, "--rules", path)
    _refused(result, "--rules")


def test_rules_beside_a_check_table_are_an_error_not_ignored(cli, good, tmp_path):
    stray = _rules(tmp_path, "min_accuracy = 0.99\n\n[check]\nmax_ece = 0.99\n")
    _refused(cli("check", good, "--rules", stray), "'min_accuracy' is outside the [check] table")
    typo = _rules(tmp_path, "min_acuracy = 0.99\n\n[check]\nmax_ece = 0.99\n", "typo.toml")
    _refused(cli("check", good, "--rules", typo), "unknown key 'min_acuracy'")
    config = _rules(tmp_path, "seed = 3\nlayers = 'conv'\n\n[check]\nmax_ece = 0.0\n", "config.toml")
    assert [r.name for r in read_rules_file(config)] == ["max_ece"]  # a config's options stand beside it
    result = cli("check", good, "--rules", config)
    assert result.exit_code == 3 and "max_ece" in result.output  # confidence 90%, accuracy 100%: it counted


def test_a_rule_set_twice_or_only_switched_off_is_exit_2(cli, good, tmp_path):
    twice = _rules(tmp_path, "min_accuracy = 0.5\nmin-accuracy = 0.9\n")
    _refused(cli("check", good, "--rules", twice), "'min_accuracy' and 'min-accuracy' are the same rule")
    with pytest.raises(InputError, match="same rule"):
        parse_rules({"max_dead_filters": {"per_layer": 0.1, "per-layer": 0.2}})
    off = _rules(tmp_path, "cam_sanity = false\n", "off.toml")
    _refused(cli("check", good, "--rules", off), "cam_sanity = false switches off the only rule given")


def test_check_of_the_root_folder_refuses_without_walking(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(read.os, "walk", lambda *a, **k: pytest.fail("walked the file system"))
    _refused(cli("check", "/", "--rules", _rules(tmp_path, "min_accuracy = 0.5\n")), "not a reportgen report")


# --------------------------------------------------------------------------------- pairing and warnings


def test_a_baseline_of_an_unrelated_model_is_warned_about(cli, good, tmp_path):
    other = write_report(tmp_path / "other", manifest_of(["cat/1.png", "dog/2.png"], [0, 1], ["car", "bus"], "dense"))
    result = check_report(good, parse_rules({"max_flipped_predictions": 100}), other)
    expected = facts.unrelated_models(read.read_report(other).report, read.read_report(good).report,
                                     ("the baseline", "the report"), "the rules that compare them")
    assert result.warnings == (expected,)
    assert "different classes" in expected and "no layer in common" in expected
    assert "unrelated" in table_text(result) and as_json(result)["warnings"] == [expected]
    cli_result = cli("check", good, "--baseline", other, "--rules", _rules(tmp_path, "max_flipped_predictions = 100"))
    assert cli_result.exit_code == 0 and "look like unrelated models" in cli_result.output
    assert check_report(good, parse_rules({"min_accuracy": 0.0}), good).warnings == ()


def test_names_that_several_images_share_pair_nothing(good, tmp_path):
    # An earlier reportgen gave A/cat/1.png and B/cat/1.png the one name cat/1.png; their order decided the ids.
    old = write_report(tmp_path / "old", manifest_of(["cat/1.png", "cat/1.png", "dog/2.png"], [0, 1, 1]))
    new = write_report(tmp_path / "new", manifest_of(["cat/1.png", "cat/1.png", "dog/2.png"], [1, 0, 1]))
    result = check_report(new, parse_rules({"max_flipped_predictions": 0, "min_cam_correlation": -1.0}), old)
    flips, maps = result.results
    assert flips.status == "pass" and "0 of 1 images" in flips.detail  # dog/2.png only
    assert "mean over 1 maps" in maps.detail
    assert any("cat/1.png" in w and "not compared" in w for w in result.warnings)


def test_same_names_under_two_image_folders_are_named_after_their_folder(tmp_path):
    from reportgen.loading.images import discover_images

    for root, content in (("A", b"a"), ("B", b"b")):
        (tmp_path / root / "cat").mkdir(parents=True)
        (tmp_path / root / "cat" / "1.png").write_bytes(content)
    (tmp_path / "A" / "cat" / "2.png").write_bytes(b"only in A")
    ab = {s.name: s for s in discover_images([tmp_path / "A", tmp_path / "B"])}
    ba = {s.name: s for s in discover_images([tmp_path / "B", tmp_path / "A"])}
    assert set(ab) == {"A/cat/1.png", "B/cat/1.png", "cat/2.png"}
    assert {n: s.path for n, s in ab.items()} == {n: s.path for n, s in ba.items()}  # order changes nothing
    assert ab["A/cat/1.png"].label == "cat"  # the class is still the folder inside IMAGES
    # Two folders of the same name holding the same name cannot be told apart: bad input.
    (tmp_path / "x" / "A" / "cat").mkdir(parents=True)
    (tmp_path / "x" / "A" / "cat" / "1.png").write_bytes(b"c")
    with pytest.raises(InputError, match=r"would both be named 'A/cat/1\.png'"):
        discover_images([tmp_path / "A", tmp_path / "x" / "A"])


# -------------------------------------------------------------------------------------------- Markdown output


def test_control_characters_and_links_never_reach_the_markdown_or_terminal(good, tmp_path):
    hostile = "cat/\x1b[31mred\x07 mail a.b@example.com https://evil.example.png"
    old = write_report(tmp_path / "old", manifest_of([hostile, "dog/2.png"], [0, 1]))
    manifest = manifest_of([hostile, "dog/2.png"], [1, 1])
    manifest["model"]["name"] = "m\x1b]8;;http://x\x07odel"
    new = write_report(tmp_path / "new", manifest)
    result = check_report(new, parse_rules({"max_flipped_predictions": 0}), old)
    assert result.results[0].status == "fail" and "\x1b" in result.results[0].items[0]  # kept in the result
    for text in (markdown(result), table_text(result)):
        assert not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0 for c in text), repr(text)
        assert "[31mred" in text.replace("\\", "")  # the text stays, without the ESC that made it a command
    md = markdown(result)
    assert "a.b\u200b@example" in md and "https\u200b://" in md  # no address or URL for GitHub to link
    assert "\x1b" in as_json(result)["results"][0]["items"][0]  # the JSON keeps the name, escaped by JSON itself

