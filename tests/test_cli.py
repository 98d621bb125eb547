"""The command line: help everywhere, exit codes (0 ok, 2 bad input or usage), messages without tracebacks."""

from __future__ import annotations

import json

import pytest

from reportgen import __version__
from reportgen.cli import main


def _commands():
    return sorted(main.commands)


def test_every_command_has_help(cli):
    result = cli("--help")
    assert result.exit_code == 0 and "generate" in result.output
    for command in _commands():
        result = cli(command, "--help")
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_python_dash_m_runs_the_same_cli():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "reportgen", "--version"], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0 and f"reportgen, version {__version__}" in result.stdout


def test_the_program_keeps_exit_codes_messages_and_exit_handlers(tmp_path):
    """`run` ends the process without the interpreter's teardown, yet exits as `main` would: its code, its
    message, output flushed, exit handlers run."""
    import subprocess
    import sys

    code = "import atexit, sys; atexit.register(lambda: print('handler ran')); from reportgen.cli import run; run()"
    shown = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, check=False,
                           timeout=120)
    assert shown.returncode == 0 and shown.stdout.split("\n")[-3:] == [f"reportgen, version {__version__}",
                                                                         "handler ran", ""], shown.stderr
    (tmp_path / "images").mkdir()
    bad = subprocess.run([sys.executable, "-m", "reportgen", "generate", str(tmp_path / "missing.keras"),
                          str(tmp_path / "images"), "-o", str(tmp_path / "out")], capture_output=True, text=True,
                         check=False, timeout=120)
    # The missing model is found first now, in the watching process, before TensorFlow (the empty folder only by
    # walking it, in the report).
    assert bad.returncode == 2 and bad.stderr.startswith("Error: ") and "missing.keras does not exist" in bad.stderr, \
        bad.stderr
    assert not (tmp_path / "out").exists()


def test_tensorflow_import_leaves_its_objects_frozen_and_the_collector_on():
    """The import's long-lived objects are out of the collector's view (no full pass rescans them), the collector
    still runs for the report's own objects, and what is created later is collectable."""
    import subprocess
    import sys

    code = "\n".join([
        "import gc, weakref",
        "from reportgen.startup import import_tensorflow",
        "import_tensorflow()",
        "frozen = gc.get_freeze_count()",
        "class Node: pass",
        "node = Node(); node.cycle = node; probe = weakref.ref(node); del node",
        "gc.collect()",
        "print(gc.isenabled(), frozen > 100000, probe() is None)",
    ])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert result.stdout.split() == ["True", "True", "True"], result.stderr[-2000:]


def test_tensorflow_import_leaves_keras_optional_imports_for_later():
    """pandas and matplotlib are not imported with TensorFlow and Keras, yet import normally afterwards; one the
    caller had already imported is left as it was."""
    pytest.importorskip("pandas", reason="pandas is not installed: Keras's optional import of it cannot be seen")
    import subprocess
    import sys

    code = "\n".join([
        "import sys",
        "import pandas",
        "from reportgen.startup import import_tensorflow",
        "import_tensorflow()",
        "from keras.src.trainers.data_adapters import array_slicing",
        "print('keras' in sys.modules, 'matplotlib' in sys.modules, array_slicing.pandas is pandas)",
        "import matplotlib.pyplot",
        "print(matplotlib.pyplot.figure() is not None)",
    ])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert result.stdout.split() == ["True", "False", "True", "True"], result.stderr[-2000:]


def test_progress_goes_to_stderr_and_quiet_silences_it(cli, saved_models, image_folder, tmp_path):
    loud = cli("generate", saved_models["plain"], image_folder, "-o", tmp_path / "loud", "--sections", "summary")
    assert loud.exit_code == 0, loud.output
    assert "summary: start" in loud.stderr and "Report written to" in loud.stderr
    # stdout carries only the path, so scripts can use it.
    assert loud.stdout.strip() == str(tmp_path / "loud" / "index.html")
    quiet = cli("generate", saved_models["plain"], image_folder, "-o", tmp_path / "quiet", "--sections", "summary",
                "--quiet")
    assert quiet.exit_code == 0
    # Quiet drops progress, not warnings: what is wrong with the input is still said.
    assert all(line.startswith("Warning: ") for line in quiet.stderr.splitlines())
    assert "class names are indices" in quiet.stderr
    assert quiet.stdout.strip() == str(tmp_path / "quiet" / "index.html")


def test_generate_ok_and_layers(cli, saved_models, image_folder, tmp_path):
    out = tmp_path / "report"
    result = cli("generate", saved_models["plain"], image_folder, "-o", out, "--quiet", "--sections", "summary")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "report.json").read_text())
    assert [s["kind"] for s in manifest["sections"]] == ["summary"]
    assert [image["label"] for image in manifest["images"]] == ["cat", "cat", "dog", "dog"]

    result = cli("layers", saved_models["nested"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("conv_base/block1_conv1"))
    assert "Conv2D" in line and "weights" in line and "(None, 30, 30, 8)" in line
    target = next(line for line in result.output.splitlines() if line.startswith("conv_base/block2_conv1"))
    assert target.rstrip().endswith(",cam")  # the last conv layer: where the class activation maps are taken
    assert "cam" not in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["generate", "{missing}", "{images}", "-o", "{out}"], "does not exist"),
        (["generate", "{model}", "{missing_images}", "-o", "{out}"], "does not exist"),
        (["generate", "{model}", "{images}", "-o", "{out}", "--image-size", "big"], "--image-size"),
        (["generate", "{model}", "{images}", "-o", "{out}", "--sections", "weights,nonsense"], "--sections"),
        (["generate", "{model}", "{images}", "-o", "{out}", "--class-names", "{bad_names}"],
         "has 2 names but the model predicts 3"),
        (["generate", "{model}", "{images}", "-o", "{out}", "--config", "{bad_config}"], "--config"),
        (["generate", "{model}", "{images}", "-o", "{out}", "--top-k", "0"], "--top-k"),
        (["generate", "{model}", "{images}", "-o", "{out}", "--preprocess", "magic"], "--preprocess"),
        (["generate", "{model}"], "Missing argument"),
        (["layers", "{missing}"], "does not exist"),
    ],
)
def test_bad_input_exits_2_without_traceback(cli, saved_models, image_folder, tmp_path, args, message):
    bad_names = tmp_path / "names.txt"
    bad_names.write_text("only\ntwo\n")
    bad_config = tmp_path / "config.toml"
    bad_config.write_text("sedd = 3\n")
    values = {"missing": tmp_path / "missing.keras", "missing_images": tmp_path / "no-images", "images": image_folder,
              "model": saved_models["plain"], "out": tmp_path / "out", "bad_names": bad_names,
              "bad_config": bad_config}
    result = cli(*[arg.format(**values) for arg in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_config_file_sets_options_and_flags_win(cli, saved_models, image_folder, tmp_path):
    config = tmp_path / "reportgen.toml"
    config.write_text('title = "From config"\nmodel-version = "1.2"\nseed = 7\nsections = ["summary"]\n')
    out = tmp_path / "report"
    result = cli("generate", saved_models["plain"], image_folder, "-o", out, "--config", config, "--seed", "3",
                 "--quiet")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "report.json").read_text())
    assert manifest["title"] == "From config" and manifest["model"]["version"] == "1.2"
    assert manifest["options"]["seed"] == 3  # the flag beats the file
    assert [s["kind"] for s in manifest["sections"]] == ["summary"]


def test_refuses_to_overwrite_a_folder_that_is_not_a_report(cli, saved_models, image_folder, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    result = cli("generate", saved_models["plain"], image_folder, "-o", precious, "--quiet")
    assert result.exit_code == 2 and "--force" in result.output
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_internal_errors_exit_1_with_a_hint(cli, saved_models, image_folder, tmp_path, monkeypatch):
    import reportgen.api

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(reportgen.api, "write_report", explode)
    result = cli("generate", saved_models["plain"], image_folder, "-o", tmp_path / "out", "--quiet",
                 "--sections", "summary")
    assert result.exit_code == 1
    assert "boom" in result.output and "--debug" in result.output and "Traceback" not in result.output
    debug = cli("--debug", "generate", saved_models["plain"], image_folder, "-o", tmp_path / "out", "--quiet",
                "--sections", "summary")
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.stderr and "RuntimeError: boom" in debug.stderr
    assert not (tmp_path / "out").exists()


def test_unreadable_model_file_exits_2(cli, saved_models, image_folder, tmp_path, monkeypatch):
    import reportgen.loading.models as models

    def denied(path):  # root, who runs CI, reads any file: fail the read itself
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(models, "file_sha256", denied)
    result = cli("generate", saved_models["plain"], image_folder, "-o", tmp_path / "out", "--quiet")
    assert result.exit_code == 2 and "cannot be read" in result.output and str(saved_models["plain"]) in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["fifo", "zero", "duplicates", "binary"])
def test_class_names_file_is_read_bounded(cli, saved_models, image_folder, tmp_path, kind):
    import os

    names = tmp_path / "names.txt"
    if kind == "fifo":
        os.mkfifo(names)  # opening it would wait for a writer forever
    elif kind == "zero":
        names = "/dev/zero"
    elif kind == "duplicates":
        names.write_text("cat\ndog\ncat\n")
    else:
        names.write_bytes(b"\xff\xfe\x00\x00" * 10)
    result = cli("generate", saved_models["plain"], image_folder, "-o", tmp_path / "out", "--class-names", names)
    assert result.exit_code == 2, result.output
    assert "--class-names" in result.output and "Traceback" not in result.output
    if kind == "duplicates":
        assert "'cat'" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,flag", [(["--classes", "cta"], "--classes"), (["--layers", "conv9"], "--layers"),
                                       (["--cam-layer", "conv9"], "--cam-layer"),
                                       (["--layers", "predictions"], "--layers"),
                                       (["--filter-indices", "0,99"], "--filter-indices")])
def test_every_option_is_checked_before_the_first_section(cli, saved_models, image_folder, tmp_path, monkeypatch,
                                                          args, flag):
    import dataclasses

    from reportgen import registry, report

    ran = []

    def recording(kind: registry.SectionKind) -> registry.SectionKind:
        kind = dataclasses.replace(kind)
        object.__setattr__(kind, "build", lambda: lambda analysis, earlier: ran.append(kind.name)
                           or report.SectionResult(()))
        return kind

    monkeypatch.setattr(registry, "SECTIONS", tuple(recording(kind) for kind in registry.SECTIONS))
    result = cli("generate", saved_models["plain"], image_folder, "-o", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert flag in result.output and "Traceback" not in result.output
    assert ran == [] and ": start" not in result.stderr


def _two_output_model(keras, path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    model = keras.Model(inputs, [keras.layers.Dense(2, name="left")(x), keras.layers.Dense(3, name="right")(x)])
    model.save(path)
    return path


def test_layers_offers_output_for_a_model_with_several(cli, keras, tmp_path):
    path = _two_output_model(keras, tmp_path / "two.keras")
    refused = cli("layers", path)
    assert refused.exit_code == 2 and "--output" in refused.output
    result = cli("layers", path, "--output", "right")
    assert result.exit_code == 0, result.output
    assert any(line.startswith("conv") for line in result.output.splitlines())


def test_layers_lists_an_application_without_its_weights(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty cache: no ImageNet weights here
    result = cli("layers", "mobilenetv2", "--image-size", "96x96")
    assert result.exit_code == 0, result.output
    assert "Conv1" in result.output and "parameters" in result.output


# ------------------------------------------------------------------------------------ answering before TensorFlow

# Generous: TensorFlow's import alone takes 2-5 s, an answer without it a few tenths (the target is 0.5 s), and a
# busy machine must not fail the test.
QUICK_SECONDS = 3.0
_BEFORE_TENSORFLOW = """
import json, sys
from reportgen.cli import main
seen = []
for args in json.loads(sys.argv[1]):
    try:
        main(args)
    except SystemExit as exc:
        seen.append([exc.code, 'tensorflow' in sys.modules, 'keras' in sys.modules])
print(json.dumps(seen))
"""


def test_help_and_usage_errors_answer_before_tensorflow(tmp_path, saved_models, image_folder):
    """`--help` everywhere and every check that needs no model (click's, the options', OUT's, IMAGES') end the
    command without importing TensorFlow or Keras."""
    import subprocess
    import sys
    import time

    model, out = str(saved_models["plain"]), str(tmp_path / "out")
    (tmp_path / "afile").write_text("not a folder")
    calls = [["--help"], *([command, "--help"] for command in sorted(main.commands)),
             ["generate", model, str(tmp_path / "nosuch"), "-o", out],  # IMAGES
             ["generate", model, str(image_folder), "-o", out, "--sections", "summary,nonsense"],
             ["generate", model, str(image_folder), "-o", out, "--seed", "abc"],  # click's type check
             ["generate", model, str(image_folder), "-o", out, "--top-k", "0"],  # ReportOptions' check
             ["generate", model, str(image_folder), "-o", out, "--check"],  # no rules
             ["generate", model, str(image_folder), "-o", str(tmp_path / "afile" / "out")],  # OUT
             ["demo", "-o", out, "--class-names", str(tmp_path / "nosuch.txt")],
             ["layers", model, "--image-size", "big"],
             ["generate", str(tmp_path / "nosuch.keras"), str(image_folder), "-o", out],  # MODEL
             ["layers", "models/nosuch.h5"]]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _BEFORE_TENSORFLOW, json.dumps(calls)], capture_output=True,
                          text=True, check=False, timeout=120)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert [code for code, _, _ in seen] == [0] * (1 + len(main.commands)) + [2] * (len(calls) - 1 - len(main.commands))
    assert [(tf, keras) for _, tf, keras in seen] == [(False, False)] * len(calls), list(zip(calls, seen, strict=True))
    assert "Traceback" not in done.stderr
    assert seconds < QUICK_SECONDS * 2, f"{len(calls)} commands took {seconds:.1f} s"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["--sections", "nonsense"], "Error: --sections: unknown section nonsense; choose from "),
    (["--seed", "abc"], "Error: Invalid value for '--seed': 'abc' is not a valid integer."),
    (["--help"], None),
])
def test_the_watching_parent_answers_without_starting_the_report(tmp_path, image_folder, args, message):
    """`reportgen generate` checks the command line in the watching process itself: neither it nor a child
    imports TensorFlow (PYTHONPROFILEIMPORTTIME, inherited by any child, lists every import on stderr)."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "reportgen", "generate", str(tmp_path / "model.keras"),
                           str(image_folder), "-o", str(tmp_path / "out"), *args], capture_output=True, text=True,
                          check=False, timeout=120, env=env)
    seconds = time.perf_counter() - started
    imported = [line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    said = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert imported.count("reportgen.cli") == 1  # one process: no child was started
    assert not {"tensorflow", "keras"} & set(imported)
    if message is None:
        assert done.returncode == 0 and "Usage: " in done.stdout and "--cam-layer" in done.stdout
    else:
        assert done.returncode == 2 and said[-1].startswith(message), said
        assert "Traceback" not in done.stderr
    assert seconds < QUICK_SECONDS, f"took {seconds:.1f} s"
    assert not (tmp_path / "out").exists()


def test_cam_layer_help_says_what_the_default_is():
    """The help describes `choose_target_layer`: a block output at least MIN_MAP_SIDE cells a side, not "the last
    conv layer" (a residual block's add is often chosen)."""
    from reportgen.config import option_fields
    from reportgen.techniques.cams.target_layer import MIN_MAP_SIDE

    text = next(field.metadata["help"] for field in option_fields() if field.name == "cam_layer")
    assert f"at least {MIN_MAP_SIDE}x{MIN_MAP_SIDE}" in text and "block output" in text
    assert "last conv layer" not in text


def test_uncached_imagenet_weights_are_named_and_never_fetched(tmp_path):
    """Offline, with an empty home: one line of reportgen's own naming the URL and the file to put where Keras
    looks, no "Downloading data from" of Keras's, and nothing created in the cache."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "KERAS_HOME"}
    env["HOME"] = str(tmp_path)  # Keras's cache is ~/.keras: read once, at its import, so in a process of its own
    done = subprocess.run([sys.executable, "-m", "reportgen", "layers", "mobilenetv2", "--weights", "imagenet",
                           "--image-size", "96x96"], capture_output=True, text=True, check=False, timeout=300,
                          env=env, cwd=tmp_path)
    expected = tmp_path / ".keras" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96.h5"
    assert done.returncode == 2 and done.stdout == ""
    assert "Downloading" not in done.stderr and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: mobilenetv2: the ImageNet weights are not cached and reportgen never downloads")
    assert f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{expected.name} to " \
           f"{expected} " in line
    assert not expected.parent.exists()


def test_damaged_cached_weights_are_named_and_left_alone(cli, tmp_path, monkeypatch):
    """A cached file Keras has no hash for (MobileNetV2's) that fails to load is named, not re-fetched."""
    from keras.src.backend import config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    expected = tmp_path / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96.h5"
    expected.parent.mkdir()
    expected.write_bytes(b"half a download")
    damaged = cli("layers", "mobilenetv2", "--weights", "imagenet", "--image-size", "96x96")
    assert damaged.exit_code == 2 and damaged.stdout == "" and "Downloading" not in damaged.output
    line = damaged.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: mobilenetv2: the ImageNet weights are cached but cannot be loaded (")
    assert f"{expected} " in line and "Traceback" not in damaged.output
    assert expected.read_bytes() == b"half a download"


def test_a_cached_file_is_given_only_when_its_hash_is_keras_s(tmp_path, monkeypatch, keras, capsys):
    """Within `_no_downloads`, Keras's get_file hands back a cached file whose hash matches, without a word, and
    refuses one whose hash does not, naming it."""
    import hashlib

    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    from reportgen.loading.applications import _DownloadRefused, _no_downloads

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    (tmp_path / "models").mkdir()
    weights = tmp_path / "models" / "w.h5"
    weights.write_bytes(b"weights")
    url, cached = "https://example.invalid/w.h5", []
    with _no_downloads(cached):
        given = file_utils.get_file("w.h5", url, cache_subdir="models",
                                    file_hash=hashlib.sha256(b"weights").hexdigest())
        with pytest.raises(_DownloadRefused) as refused:
            file_utils.get_file("w.h5", url, cache_subdir="models", file_hash=hashlib.sha256(b"other").hexdigest())
    assert given == str(weights) and cached == [(url, str(weights))]
    assert refused.value.filename == str(weights) and "damaged" in refused.value.state
    assert weights.read_bytes() == b"weights"  # Keras would have deleted it to download again
    assert capsys.readouterr().out == ""
    assert file_utils.get_file.__name__ == "get_file"  # put back
