"""Options from flags and from a --config TOML file: every value typed and ranged like its flag (exit 2 naming
the key, the value and the expected type), sizes bounded, empty lists refused, all before any work."""

from __future__ import annotations

import pytest

from reportgen.config import MAX_PATTERN_SIZE, ReportOptions
from reportgen.errors import InputError


@pytest.mark.parametrize(
    "line,key",
    [
        ('unsafe = "no"', "unsafe"),
        ('force = "no"', "force"),
        ('save-arrays = "false"', "save-arrays"),
        ('quiet = 1', "quiet"),
        ('top-k = "3"', "top-k"),
        ('filters = [1, 2]', "filters"),
        ('seed = "abc"', "seed"),
        ('seed = true', "seed"),
        ('seed = 1.5', "seed"),
        ('title = 42', "title"),
        ('sections = 3', "sections"),
        ('cam-methods = [1]', "cam-methods"),
        ('filter-indices = ["a"]', "filter-indices"),
        ('image-size = true', "image-size"),
        ('class-names = 5', "class-names"),
        ('output-dir = "elsewhere"', "output-dir"),
        ('debug = true', "debug"),
        ('seed = -1', "seed"),
    ],
)
def test_config_values_are_typed(cli, saved_models, image_folder, tmp_path, line, key):
    config = tmp_path / "c.toml"
    config.write_text(line + "\n")
    out = tmp_path / "out"
    precious = tmp_path / "precious"
    result = cli("generate", saved_models["plain"], image_folder, "-o", out, "--config", config, "--quiet")
    assert result.exit_code == 2, result.output
    assert repr(key) in result.output or key in result.output
    assert "Traceback" not in result.output and not out.exists() and not precious.exists()


def test_a_string_force_never_replaces_a_folder(cli, saved_models, image_folder, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    config = tmp_path / "c.toml"
    config.write_text('force = "no"\n')
    result = cli("generate", saved_models["plain"], image_folder, "-o", precious, "--config", config, "--quiet")
    assert result.exit_code == 2 and "'force'" in result.output
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_typed_config_values_are_used(cli, saved_models, image_folder, tmp_path):
    import json

    config = tmp_path / "c.toml"
    config.write_text('seed = 4\nsections = "summary"\nfilter-indices = [0, 2]\nimage-size = [32, 32]\n'
                      'save-arrays = false\n')
    out = tmp_path / "out"
    result = cli("generate", saved_models["plain"], image_folder, "-o", out, "--config", config, "--quiet")
    assert result.exit_code == 0, result.output
    options = json.loads((out / "report.json").read_text())["options"]
    assert options["seed"] == 4 and options["filter-indices"] == [0, 2] and options["save-arrays"] is False


@pytest.mark.parametrize("content", [b"\x00\x01\x02\xff\xfe binary", "title = 'caf\u00e9'\n".encode("latin-1")])
def test_binary_or_non_utf8_config_is_exit_2(cli, saved_models, image_folder, tmp_path, content):
    config = tmp_path / "c.toml"
    config.write_bytes(content)
    result = cli("generate", saved_models["plain"], image_folder, "-o", tmp_path / "out", "--config", config)
    assert result.exit_code == 2, result.output
    assert "--config" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args,flag",
    [
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**32)], "--seed"),
        (["--image-size", "20000x20000"], "--image-size"),
        (["--pattern-size", "100000"], "--pattern-size"),
        (["--sections", ",,,"], "--sections"),
        (["--cam-methods", ","], "--cam-methods"),
        (["--layers", " , "], "--layers"),
        (["--directions", ","], "--directions"),
    ],
)
def test_out_of_range_and_empty_values_exit_2(cli, saved_models, image_folder, tmp_path, args, flag):
    result = cli("generate", saved_models["plain"], image_folder, "-o", tmp_path / "out", "--quiet", *args)
    assert result.exit_code == 2, result.output
    assert flag in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_option_bounds_in_the_api():
    with pytest.raises(InputError, match="--seed"):
        ReportOptions(seed=2**32)
    with pytest.raises(InputError, match="--image-size"):
        ReportOptions(image_size=(10000, 9000))
    with pytest.raises(InputError, match="--pattern-size"):
        ReportOptions(pattern_size=MAX_PATTERN_SIZE + 1)
    ReportOptions(seed=2**32 - 1, image_size=(8000, 10000), pattern_size=MAX_PATTERN_SIZE)


def test_every_option_is_one_flag_and_one_config_key_declared_by_its_field():
    """Each ReportOptions field declares its value kind and help once (`config.option`): the generate command has
    its flag with the field's default, and the flag's default text parses back to that default."""
    from reportgen import cli, config

    params = {p.name: p for p in cli.generate.params}
    for field in config.option_fields():
        assert field.metadata["kind"] in config.VALUE_KINDS and field.metadata["help"], field.name
        param = params[field.name]  # one flag per field, named after it
        assert param.opts[0] == "--" + config.flag_name(field.name)
        text = param.default if isinstance(param.default, str | int | bool) else None  # click's "no default"
        parsed = config.options_from({field.name: text})
        assert getattr(parsed, field.name) == field.default, field.name
        assert config._kind(field.name) is not None  # and a config key with its type
    assert config.options_from({}) == config.ReportOptions()
