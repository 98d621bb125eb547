"""`reportgen check` and `generate --check`: each rule passes and fails on reports made for it, against a baseline
from the same model trained further; every value is checked against a computation from report.json (and
arrays.npz) written out here by hand; exit codes 0, 2 and 3; the Markdown of a 2,000-image report stays under
1 MiB and shows hostile names as written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from reportgen.api import generate_report
from reportgen.check import RULES, check_report, parse_rules, read_rules_file
from reportgen.check_render import MARKDOWN_LIMIT, as_json, markdown
from reportgen.config import ReportOptions
from reportgen.errors import InputError

SIZE = (16, 16, 3)
CLASSES = ("blue", "green", "red")  # sorted: the class folders name the outputs in this order
OPTIONS = ReportOptions(sections=("summary", "feature_maps", "filter_patterns", "predictions", "cam"),
                        cam_methods=("gradcam", "gradcam++"), save_arrays=True, top_k=2, steps=4, filters=4)


def colour_images(folder: Path, per_class: int = 4, seed: int = 0, size: int = 16,
                  names: dict[str, str] | None = None) -> Path:
    """Noisy images whose dominant channel is their class: a tiny model learns them in a few epochs."""
    rng = np.random.default_rng(seed)
    for index, klass in enumerate(CLASSES):
        (folder / klass).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            rgb = rng.integers(0, 90, (size, size, 3))
            rgb[:, :, index] += rng.integers(60, 160)
            name = (names or {}).get(f"{klass}/{k}", f"{klass}_{k}")
            cv2.imwrite(str(folder / klass / f"{name}.png"), rgb.astype(np.uint8)[:, :, ::-1])
    return folder


def _pixels(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from reportgen.loading.images import discover_images, load_images

    loaded = load_images(discover_images([folder]), SIZE)
    labels = np.array([CLASSES.index(s.label) for s in loaded.sources])
    return (loaded.pixels / 255.0).astype(np.float32), labels


def _train(keras, model, x, y, epochs):
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=len(x), verbose=0)


@pytest.fixture(scope="module")
def reports(tmp_path_factory, keras):
    """`candidate`: a tiny CNN trained 2 epochs; `baseline`: the same model trained 60 epochs more (so the
    candidate is worse: its accuracy drops, predictions flip, maps change); `dead`: the candidate with four conv2
    filters switched off by a large negative bias; `blind`: with all of them off, so the maps at conv2 are empty
    and the randomisation check cannot pass."""
    from conftest import build_plain_model

    folder = tmp_path_factory.mktemp("check")
    images = colour_images(folder / "images")
    x, y = _pixels(images)
    candidate = build_plain_model(keras, input_shape=SIZE, seed=1)
    _train(keras, candidate, x, y, 2)
    baseline = keras.models.clone_model(candidate)
    baseline.set_weights(candidate.get_weights())
    _train(keras, baseline, x, y, 60)
    blind = keras.models.clone_model(candidate)  # every conv2 filter off: the maps are empty
    blind.set_weights(candidate.get_weights())
    blind.get_layer("conv2").bias.assign(np.full(16, -1e4, np.float32))
    dead = keras.models.clone_model(candidate)
    dead.set_weights(candidate.get_weights())
    bias = dead.get_layer("conv2").bias.numpy()
    bias[:4] = -1e4
    dead.get_layer("conv2").bias.assign(bias)
    out = {"images": images, "baseline_model": folder / "baseline.keras"}
    baseline.save(out["baseline_model"])
    for name, model, version in (("candidate", candidate, "2"), ("baseline", baseline, "1"),
                                 ("blind", blind, "0"), ("dead", dead, "3")):
        out[name] = folder / name
        generate_report(model, [images], out[name], dataclasses.replace(OPTIONS, model_version=version))
    out["no_predictions"] = folder / "no_predictions"
    generate_report(candidate, [images], out["no_predictions"],
                    dataclasses.replace(OPTIONS, sections=("summary",), save_arrays=False))
    return out


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_report_json_round_trips_through_the_reader(reports):
    """What the writer wrote (every section kind check reads) parses into the schema and serialises back to the
    same bytes; parsing the same dict again gives an equal typed report, whose fields are the dict's."""
    from reportgen.report_folder import write
    from reportgen.report_folder.read import read_report
    from reportgen.report_folder.schema import Report

    for name in ("candidate", "dead", "no_predictions"):
        text = (reports[name] / "report.json").read_text(encoding="utf-8")
        parsed = read_report(reports[name]).report
        assert write.manifest_text(parsed.raw) == text
        assert Report.from_dict(json.loads(text)) == parsed
        raw = parsed.raw
        assert [i.name for i in parsed.images] == [i["name"] for i in raw["images"]]
        assert [s.id for s in parsed.sections] == [s["id"] for s in raw["sections"]]
        assert parsed.model.name == raw["model"]["name"] and parsed.class_names == tuple(raw["class_names"])
        assert parsed.ece == (raw.get("evaluation") or {}).get("ece")
        for field in ("heatmaps", "filter_patterns", "feature_maps", "predictions"):
            assert len(getattr(parsed, field)) == len(raw.get(field, [])), field
    full = read_report(reports["candidate"]).report
    assert full.heatmaps and full.filter_patterns and full.feature_maps and full.predictions
    cams = [s.cam for s in full.sections if s.cam is not None]
    assert any(c.sanity for c in cams) and any(c.faithfulness for c in cams)


def _result(folder, rules, baseline=None, strict=False):
    return check_report(folder, parse_rules(rules), baseline, strict)


def _one(folder, name, threshold, baseline=None, source=None):
    results = [r for r in _result(folder, {name: threshold}, baseline).results if source in (None, r.source)]
    assert len(results) == 1, results
    return results[0]


def _pass_and_fail(folder, name, value, baseline=None, higher_is_better=False, step=1e-6, source=None,
                   scope=None):
    """The rule's value is `value`; it passes with the threshold at the value and fails just past it."""
    def threshold(t):
        return {scope: t} if scope else t

    # At the value, give or take the last digits of two computations of it.
    at_value = value if isinstance(value, int) else (value - 1e-9 if higher_is_better else value + 1e-9)
    at = _one(folder, name, threshold(at_value), baseline, source)
    assert at.status == "pass" and at.value == pytest.approx(value, rel=1e-9, abs=1e-12), at
    past = value + step if higher_is_better else value - step
    failed = _one(folder, name, threshold(past), baseline, source)
    assert failed.status == "fail", failed
    return at


# ------------------------------------------------------------------------------------ by hand, from report.json


def _top1(manifest):
    """Every image's top-1 prediction and label index, as report.json's images list records them."""
    names = manifest["class_names"]
    return {e["name"]: {"top_k": [e["prediction"]], "label_index": names.index(e["label"]) if e["label"] in names
                        else None} for e in manifest["images"]}


def _accuracy_by_hand(manifest, names=None):
    entries = [e for n, e in _top1(manifest).items() if e["label_index"] is not None and (names is None or n in names)]
    return sum(e["top_k"][0]["class_index"] == e["label_index"] for e in entries) / len(entries)


def test_min_accuracy(reports):
    assert _accuracy_by_hand(_manifest(reports["baseline"])) == 1.0  # trained further, it has learned the colours
    assert _one(reports["baseline"], "min_accuracy", 1.0).status == "pass"
    candidate = _accuracy_by_hand(_manifest(reports["candidate"]))
    assert 0 < candidate < 1
    _pass_and_fail(reports["candidate"], "min_accuracy", candidate, higher_is_better=True)


def test_max_accuracy_drop_against_the_model_trained_further(reports):
    old, new = _manifest(reports["baseline"]), _manifest(reports["candidate"])
    both = set(_top1(old)) & set(_top1(new))
    drop = _accuracy_by_hand(old, both) - _accuracy_by_hand(new, both)
    assert drop > 0.1  # two epochs against sixty-two
    _pass_and_fail(reports["candidate"], "max_accuracy_drop", drop, baseline=reports["baseline"])
    # The other way round the accuracy rises: a negative drop passes a zero threshold.
    reverse = _one(reports["baseline"], "max_accuracy_drop", 0.0, baseline=reports["candidate"])
    assert reverse.status == "pass" and reverse.value == pytest.approx(-drop)


def _ece_by_hand(manifest, bins=15):
    entries = [e for e in manifest["predictions"] if e["label_index"] is not None]
    confidence = np.array([e["top_k"][0]["probability"] for e in entries])
    correct = np.array([e["top_k"][0]["class_index"] == e["label_index"] for e in entries], float)
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = (confidence > low) & (confidence <= high) if b else (confidence <= high)
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return total


def test_max_ece(reports):
    expected = _ece_by_hand(_manifest(reports["candidate"]))
    assert expected > 0.001
    _pass_and_fail(reports["candidate"], "max_ece", expected)
    # The baseline has learned the images: every top-1 probability is close to 1 and right.
    baseline = _one(reports["baseline"], "max_ece", 0.01)
    assert baseline.status == "pass" and baseline.value == pytest.approx(_ece_by_hand(_manifest(reports["baseline"])))


def test_max_ece_is_not_evaluated_without_predictions_and_strict_fails(reports):
    result = _result(reports["no_predictions"], {"max_ece": 0.1, "min_accuracy": 0.5})
    assert [r.status for r in result.results] == ["not evaluated"] * 2 and result.exit_code == 0
    assert "no predictions section" in result.results[0].detail
    strict = _result(reports["no_predictions"], {"max_ece": 0.1}, strict=True)
    assert strict.exit_code == 3 and not strict.passed


def test_max_dead_filters_overall_and_per_layer(reports):
    manifest = _manifest(reports["dead"])
    channels = {e["layer"]: (e["dead_channels"], e["channels"]) for e in manifest["feature_maps"]}
    assert channels["conv2"][0] >= 4  # the four switched off
    overall = sum(d for d, _ in channels.values()) / sum(t for _, t in channels.values())
    worst = max(d / t for d, t in channels.values())
    _pass_and_fail(reports["dead"], "max_dead_filters", overall, source="feature maps")
    at = _pass_and_fail(reports["dead"], "max_dead_filters", worst, source="feature maps", scope="per_layer")
    assert at.scope == "per_layer"
    failed = _one(reports["dead"], "max_dead_filters", {"per_layer": worst - 1e-6}, source="feature maps")
    assert any(item.startswith("conv2:") for item in failed.items)
    # The filter-pattern search finds the same filters dead (those among the chosen ones).
    patterns: dict[str, dict[int, bool]] = {}
    for entry in manifest["filter_patterns"]:
        patterns.setdefault(entry["layer"], {})[entry["filter"]] = (
            patterns.get(entry["layer"], {}).get(entry["filter"], False) or entry["dead"])
    share = sum(sum(f.values()) for f in patterns.values()) / sum(len(f) for f in patterns.values())
    assert share > 0
    _pass_and_fail(reports["dead"], "max_dead_filters", share, source="filter patterns")
    # The candidate without the switched-off filters has fewer.
    clean = _one(reports["candidate"], "max_dead_filters", overall, source="feature maps")
    assert clean.status == "pass" and clean.value < overall


def test_cam_sanity(reports):
    def not_passed_by_hand(folder):
        return [s["data"]["method"] for s in _manifest(folder)["sections"]
                if s["kind"] == "cam" and (s.get("data") or {}).get("sanity") and s["data"]["sanity"]["flagged"]]

    assert not_passed_by_hand(reports["baseline"]) == []
    passed = _one(reports["baseline"], "cam_sanity", True)
    assert passed.status == "pass" and passed.value == 0
    failing = not_passed_by_hand(reports["blind"])
    assert failing == ["gradcam", "gradcam++"]  # nothing in the maps to survive or not survive
    failed = _one(reports["blind"], "cam_sanity", True)
    assert failed.status == "fail" and failed.value == len(failing)
    assert [item.split(":")[0] for item in failed.items] == failing
    assert parse_rules({"cam_sanity": False}) == ()  # false: not checked
    missing = _one(reports["no_predictions"], "cam_sanity", True)
    assert missing.status == "not evaluated"


def _matched_maps(old, new):
    def keyed(manifest):
        names = {i["id"]: i["name"] for i in manifest["images"]}
        return {(names[e["image"]], e["class_index"], e["method"]): e for e in manifest["heatmaps"]}

    old_maps, new_maps = keyed(old), keyed(new)
    return [(old_maps[k], new_maps[k], k) for k in new_maps if k in old_maps]


def test_max_deletion_auc_increase(reports):
    pairs = _matched_maps(_manifest(reports["baseline"]), _manifest(reports["candidate"]))
    assert pairs
    increases = {}
    for method in ("gradcam", "gradcam++"):
        mine = [(o["deletion_auc"], n["deletion_auc"]) for o, n, k in pairs if k[2] == method]
        increases[method] = np.mean([n for _, n in mine]) - np.mean([o for o, _ in mine])
    largest = max(increases.values())
    _pass_and_fail(reports["candidate"], "max_deletion_auc_increase", largest, baseline=reports["baseline"])
    same = _one(reports["candidate"], "max_deletion_auc_increase", 0.0, baseline=reports["candidate"])
    assert same.status == "pass" and same.value == 0.0


def test_max_flipped_predictions(reports):
    old, new = _top1(_manifest(reports["baseline"])), _top1(_manifest(reports["candidate"]))
    flipped = sorted(n for n in new
                     if n in old and new[n]["top_k"][0]["class_index"] != old[n]["top_k"][0]["class_index"])
    assert flipped
    at = _pass_and_fail(reports["candidate"], "max_flipped_predictions", len(flipped), baseline=reports["baseline"],
                        step=1)
    assert sorted(item.split(":")[0] for item in at.items) == flipped
    assert _one(reports["candidate"], "max_flipped_predictions", 0, baseline=reports["candidate"]).status == "pass"


def test_min_cam_correlation_from_both_arrays(reports):
    old_m, new_m = _manifest(reports["baseline"]), _manifest(reports["candidate"])
    with np.load(reports["baseline"] / "arrays.npz") as old_a, np.load(reports["candidate"] / "arrays.npz") as new_a:
        values = []
        for old_e, new_e, _ in _matched_maps(old_m, new_m):
            a, b = np.squeeze(old_a[old_e["array_key"]]), np.squeeze(new_a[new_e["array_key"]])
            assert a.shape == b.shape  # the same layer in both
            if a.std() > 0 and b.std() > 0:
                values.append(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    mean = float(np.mean(values))
    assert -1 < mean < 0.99
    _pass_and_fail(reports["candidate"], "min_cam_correlation", mean, baseline=reports["baseline"],
                   higher_is_better=True)
    same = _one(reports["candidate"], "min_cam_correlation", 0.999, baseline=reports["candidate"])
    assert same.status == "pass" and same.value == pytest.approx(1.0)
    no_arrays = _one(reports["candidate"], "min_cam_correlation", 0.5, baseline=reports["no_predictions"])
    assert no_arrays.status == "not evaluated" and "--save-arrays" in no_arrays.detail


def test_baseline_rules_without_a_baseline_are_not_evaluated(reports):
    rules = {"max_accuracy_drop": 0.0, "max_flipped_predictions": 0, "min_cam_correlation": 0.5,
             "max_deletion_auc_increase": 0.0}
    result = _result(reports["candidate"], rules)
    assert {r.status for r in result.results} == {"not evaluated"} and result.exit_code == 0
    assert _result(reports["candidate"], rules, strict=True).exit_code == 3


# ------------------------------------------------------------------------------------------------ the command


def _rules_file(tmp_path, text, name="rules.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_exit_codes_0_3_2(cli, reports, tmp_path):
    accuracy = _accuracy_by_hand(_manifest(reports["candidate"]))
    passing = _rules_file(tmp_path, f"min_accuracy = {accuracy}\nmax_flipped_predictions = 100\n", "pass.toml")
    result = cli("check", reports["candidate"], "--baseline", reports["baseline"], "--rules", passing)
    assert result.exit_code == 0, result.output
    assert "min_accuracy" in result.output and "pass" in result.output

    failing = _rules_file(tmp_path, "[check]\nmin_accuracy = 1.0\nmax_flipped_predictions = 0\n", "fail.toml")
    md, js = tmp_path / "out.md", tmp_path / "out.json"
    result = cli("check", reports["candidate"], "--baseline", reports["baseline"], "--rules", failing,
                 "--markdown", md, "--json", js)
    assert result.exit_code == 3, result.output
    data = json.loads(js.read_text())
    assert data["passed"] is False and data["exit_code"] == 3
    assert [r["status"] for r in data["results"]] == ["fail", "fail"]
    assert "❌" in md.read_text() and "min\\_accuracy" in md.read_text()

    # Bad input: not a report, a rules file that does not exist or is not TOML, no rules, a bad threshold.
    assert cli("check", tmp_path, "--rules", passing).exit_code == 2
    assert cli("check", reports["candidate"], "--rules", tmp_path / "missing.toml").exit_code == 2
    assert cli("check", reports["candidate"], "--rules", _rules_file(tmp_path, "min_accuracy = ", "bad.toml")
               ).exit_code == 2
    assert cli("check", reports["candidate"]).exit_code == 2
    for text in ("min_accuracy = 90", "max_flipped_predictions = 1.5", "cam_sanity = 1", 'max_ece = "low"',
                 "max_dead_filters = {each = 0.1}"):
        result = cli("check", reports["candidate"], "--rules", _rules_file(tmp_path, text, "bad.toml"))
        assert result.exit_code == 2, text
    result = cli("check", reports["candidate"], "--baseline", tmp_path, "--rules", passing)
    assert result.exit_code == 2 and "--baseline" in result.output


def test_unknown_rule_is_exit_2_with_the_list(cli, reports, tmp_path):
    rules = _rules_file(tmp_path, "min_accuracy = 0.5\nmax_accuracy = 0.9\n")
    result = cli("check", reports["candidate"], "--rules", rules)
    assert result.exit_code == 2
    assert "'max_accuracy'" in result.output
    for name in RULES:
        assert name in result.output
    with pytest.raises(InputError, match="unknown rule"):
        read_rules_file(rules)


def test_generate_check_writes_the_report_then_exits_with_the_rules(cli, reports, tmp_path):
    args = ("generate", reports["candidate"].parent / "model.keras", reports["images"], "--sections",
            "summary,predictions", "--quiet")
    # generate needs a model file: the baseline's model is not kept, so save a fresh tiny one.
    import keras
    from conftest import build_plain_model

    build_plain_model(keras, input_shape=SIZE, seed=1).save(args[1])
    failing = _rules_file(tmp_path, "min_accuracy = 1.0\n")
    out = tmp_path / "failed"
    result = cli(*args, "-o", out, "--check", "--rules", failing)
    assert result.exit_code == 3, result.output
    assert (out / "index.html").is_file()  # the report is written all the same
    assert "min_accuracy" in result.output

    # The rules in the config's [check] table; the config's other keys are options as before.
    config = _rules_file(tmp_path, "seed = 3\n\n[check]\nmin_accuracy = 0.0\nmax_flipped_predictions = 100\n",
                         "config.toml")
    out = tmp_path / "passed"
    result = cli(*args, "-o", out, "--config", config, "--check", "--baseline", reports["baseline"])
    assert result.exit_code == 0, result.output
    assert _manifest(out)["options"]["seed"] == 3
    assert "max_flipped_predictions" in result.output
    # Without --check the [check] table is accepted and not run.
    assert cli(*args, "-o", tmp_path / "unchecked", "--config", config).exit_code == 0

    # Bad rules are found before any work: exit 2, nothing written.
    unknown = _rules_file(tmp_path, "min_acc = 0.5\n", "unknown.toml")
    result = cli(*args, "-o", tmp_path / "never", "--check", "--rules", unknown)
    assert result.exit_code == 2 and not (tmp_path / "never").exists()
    assert cli(*args, "-o", tmp_path / "never", "--check").exit_code == 2  # no rules anywhere
    assert cli(*args, "-o", tmp_path / "never", "--rules", unknown).exit_code == 2  # --rules without --check
    assert not (tmp_path / "never").exists()


def test_generate_check_against_the_report_it_replaces(cli, reports, tmp_path):
    """`-o OUT --baseline OUT`: the rules compare with the report OUT held before, not with the new one."""
    import shutil

    import keras
    from conftest import build_plain_model

    out = shutil.copytree(reports["baseline"], tmp_path / "out")  # the last published version: 100% accuracy
    untrained = tmp_path / "untrained.keras"
    build_plain_model(keras, input_shape=SIZE, seed=1).save(untrained)
    rules = _rules_file(tmp_path, "max_flipped_predictions = 0\n")
    result = cli("generate", untrained, reports["images"], "-o", out, "--sections", "summary,predictions", "--quiet",
                 "--check", "--rules", rules, "--baseline", out)
    assert result.exit_code == 3, result.output
    assert _manifest(out)["model"].get("version") is None  # OUT holds the new report
    old, new = _top1(_manifest(reports["baseline"])), _top1(_manifest(out))
    flips = sum(new[n]["top_k"][0]["class_index"] != old[n]["top_k"][0]["class_index"] for n in new)
    assert flips > 0 and f"{flips} of {len(new)} images" in result.output


def test_swapping_two_image_folders_with_the_same_names_flips_nothing(cli, reports, tmp_path):
    """A/red/red_0.png and B/red/red_0.png are two images: `generate M A B` and `generate M B A` name them after
    their folders, so check pairs each with itself."""
    import shutil

    source = colour_images(tmp_path / "made", per_class=2, seed=7)
    a, b = tmp_path / "A", tmp_path / "B"
    shutil.copytree(source, a)
    for klass, other in zip(CLASSES, CLASSES[1:] + CLASSES[:1], strict=True):  # B's red/ holds blue images, ...
        (b / klass).mkdir(parents=True)
        for k in range(2):
            shutil.copy(source / other / f"{other}_{k}.png", b / klass / f"{klass}_{k}.png")
    args = ("--sections", "summary,predictions", "--quiet")
    assert cli("generate", reports["baseline_model"], a, b, "-o", tmp_path / "ab", *args).exit_code == 0
    names = [i["name"] for i in _manifest(tmp_path / "ab")["images"]]
    assert len(names) == len(set(names)) == 12 and "A/red/red_0.png" in names and "B/red/red_0.png" in names
    rules = _rules_file(tmp_path, "max_flipped_predictions = 0\n")
    result = cli("generate", reports["baseline_model"], b, a, "-o", tmp_path / "ba", *args, "--check", "--rules",
                 rules, "--baseline", tmp_path / "ab")
    assert result.exit_code == 0, result.output
    assert "0 of 12 images" in result.output


# ---------------------------------------------------------------------------------------------- the Markdown


HOSTILE = '<img src=x onerror=alert(1)> | **bold** [link](javascript:x) `code` _x_ #h'


def test_markdown_of_2000_images_stays_under_1_mib_and_escapes_names(keras, tmp_path):
    markdown_it = pytest.importorskip("markdown_it")
    from conftest import build_plain_model

    names = {f"red/{k}": f"{HOSTILE} {k}" for k in range(0, 700, 7)}
    images = colour_images(tmp_path / "images", per_class=667, seed=2, names=names)  # 2,001 images
    options = ReportOptions(sections=("predictions",), top_k=1)
    old_model = build_plain_model(keras, input_shape=SIZE, seed=1)
    new_model = build_plain_model(keras, input_shape=SIZE, seed=2)
    generate_report(old_model, [images], tmp_path / "old", options)
    generate_report(new_model, [images], tmp_path / "new", dataclasses.replace(options, model_version=HOSTILE))
    old, new = _top1(_manifest(tmp_path / "old")), _top1(_manifest(tmp_path / "new"))
    assert len(new) == 2001
    flips = sum(new[n]["top_k"][0]["class_index"] != old[n]["top_k"][0]["class_index"] for n in new)
    assert flips > 100

    result = check_report(tmp_path / "new", parse_rules({"max_flipped_predictions": 0, "min_accuracy": 0.99,
                                                         "max_ece": 0.0}), tmp_path / "old")
    text = markdown(result)
    assert len(text.encode("utf-8")) < MARKDOWN_LIMIT
    flipped = next(r for r in result.results if r.rule == "max_flipped_predictions")
    assert flipped.value == flips and len(flipped.items) == flips
    assert f"and {flips - 10} more" in text
    assert len(as_json(result)["results"][0]["items"]) == flips  # the JSON keeps every name

    html = markdown_it.MarkdownIt("commonmark").enable("table").render(text)
    assert "<img" not in html and "<strong>bold</strong>" not in html and "<a " not in html
    assert "<code>" not in html and "<h1" not in html
    assert "&lt;img src=x onerror=alert(1)&gt; | **bold** [link](javascript:x) `code` _x_ #h" in html
    # The table keeps five cells per row although names hold "|".
    rows = [line for line in html.splitlines() if line.startswith("<tr>")]
    assert len(rows) == 4  # the header and three rules
    assert html.count("<td>") == 3 * 5
