"""The command line: thin click commands over `reportgen.api`.

Bad input exits with code 2 and a one-line message; an internal error exits with 1 (`--debug` shows the
traceback). TensorFlow (seconds to import) is imported only when a command needs it and only after every check that
needs no model, so `--help` and every usage error answer at once. For `generate` and `demo`, which run in a watched
child process (`watchdog`), this process makes those checks before it starts the child (`run`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from reportgen import __version__
from reportgen.config import (
    ReportOptions,
    flag_name,
    option_fields,
    options_from,
    parse_image_size,
    read_config_file,
)
from reportgen.errors import InputError, ReportgenError
from reportgen.registry import resolve_sections
from reportgen.startup import import_tensorflow, sigterm_as_interrupt


class _Precheck:
    """`run`'s request to `main` (click's context object): parse the command line and make the command's checks
    that need no model, then stop before the work, which a watched child process does. `passed` says they did."""

    def __init__(self) -> None:
        self.passed = False


def _run(ctx: click.Context, action: Callable[..., Any], checks: Callable[[], Any] | None = None,
         tensorflow: bool = True, plots: bool = False) -> Any:
    """Run `checks` (the command's checks that need no model: no TensorFlow), then `action` (given what `checks`
    returned, when there are checks), turning reportgen errors into a message and an exit code instead of a
    traceback.

    `tensorflow=False` for commands that never load a model (publish), so they start instantly; `plots` for those
    that write a report, whose plotting worker then starts beside TensorFlow's import (`plot_worker.prestart`).
    """
    debug = bool(ctx.find_root().params.get("debug"))
    try:
        sigterm_as_interrupt()
        checked = checks() if checks is not None else None
        precheck = ctx.find_object(_Precheck)
        if precheck is not None:  # the watching parent (`run`): the child does the work
            precheck.passed = True
            return 0
        if plots:
            from reportgen.plot_worker import prestart

            prestart()
        if tensorflow:
            from reportgen import watchdog

            watchdog.beat("start", "importing TensorFlow")
            import_tensorflow(quiet=not debug)
        return action(checked) if checks is not None else action()
    except ReportgenError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        # Raised after the final swap (render.folder.swap_into_place holds signals during it), the report is complete.
        click.echo(f"Interrupted {exc.args[0]}." if exc.args else "Interrupted; nothing was written.", err=True)
        ctx.exit(130)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"Internal error: {type(exc).__name__}: {exc}. Run with --debug for the traceback and "
                   "report it.", err=True)
        ctx.exit(1)


def _flag(field: dataclasses.Field) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of a `ReportOptions` field: its flag, type, default and help from the field (`option`)."""
    meta, flag = field.metadata, "--" + flag_name(field.name)
    kind, default = meta["kind"], field.default
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    common: dict[str, Any] = {"help": meta["help"], "metavar": meta["metavar"]}
    if kind == "flag":
        declaration = [flag] if default is False else [f"{flag}/--no-{flag_name(field.name)}"]
        return click.option(*declaration, field.name, is_flag=True, default=default, show_default=default is True,
                            help=meta["help"])
    if kind == "choice":
        return click.option(flag, field.name, type=click.Choice(meta["choices"]), default=default, show_default=True,
                            help=meta["help"])
    if kind in ("list", "int_list"):
        common["metavar"] = common["metavar"] or "LIST"
    elif kind == "path":
        return click.option(flag, field.name, type=click.Path(path_type=Path, dir_okay=False), help=meta["help"])
    value_type = int if kind == "int" else None
    if shown is None or shown == "":
        return click.option(flag, field.name, type=value_type, **common)
    return click.option(flag, field.name, type=value_type, default=shown, show_default=True, **common)


def report_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by `generate` and `demo`: -o and --config, one flag per `ReportOptions` field (each also
    a TOML key in --config), and --force and --quiet."""
    options = [
        click.option("-o", "--output-dir", type=click.Path(path_type=Path, file_okay=False), required=True,
                     help="Folder to write the report to (replaced atomically)."),
        click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
                     help="TOML file of options; keys are the flags' names (e.g. seed = 3). Flags win."),
        *(_flag(field) for field in option_fields()),
        click.option("--force", is_flag=True, help="Replace OUT even if it is not an earlier report."),
        click.option("--quiet", is_flag=True, help="No progress on stderr."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _build_options(ctx: click.Context, params: dict[str, Any]) -> tuple[ReportOptions, bool, bool]:
    """Merge --config (TOML) under the flags, then build ReportOptions. Returns (options, force, quiet)."""
    values = dict(params)
    config_file = values.pop("config_file", None)
    if config_file is not None:
        for name, value in read_config_file(config_file).items():
            # A flag given on the command line wins over the file.
            if ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, None):
                values[name] = value
    force, quiet = bool(values.pop("force")), bool(values.pop("quiet"))
    return options_from(values), force, quiet


def _check_model(model: str) -> None:
    """A MODEL path that does not exist, answered before TensorFlow is imported (`loading.models.check_model_path`;
    h5py and NumPy come with it, not Keras)."""
    from reportgen.loading.models import check_model_path

    check_model_path(model)


def _check_report_inputs(options: ReportOptions, output_dir: Path, force: bool, images: tuple[str, ...] = ()) -> None:
    """`generate_report`'s checks that need no model, made before TensorFlow is imported (importing `reportgen.api`
    imports it): --sections, --class-names, that each of IMAGES exists, and OUT. `generate_report` makes them again,
    and looks into IMAGES' folders (a walk that takes seconds on a validation set is not repeated here)."""
    from reportgen.loading.labels import read_class_names_file

    resolve_sections(options.sections)
    if options.class_names is not None:
        read_class_names_file(options.class_names)
    # The cheap checks first: the error messages of IMAGES and OUT are in modules that import NumPy and OpenCV.
    missing = [item for item in images if not (Path(item).is_file() or Path(item).is_dir())]
    if missing:
        from reportgen.loading.images import discover_images

        discover_images(missing[:1])  # raises its "does not exist" error: the message is decided there
    from reportgen.render import check_output_dir

    check_output_dir(output_dir, force)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="reportgen")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
def main(debug: bool) -> None:
    """Show what a convolutional network learned: one static report from a Keras model and a folder of images."""


@main.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@report_options
@click.option("--check", "run_check", is_flag=True,
              help="Then evaluate the rules (--rules FILE, else the config's [check] table) as `reportgen check` "
                   "does: exit 3 when one fails.")
@click.option("--rules", "rules_file", type=click.Path(path_type=Path, dir_okay=False),
              help="With --check: TOML file of rules.")
@click.option("--baseline", type=click.Path(path_type=Path), help="With --check: the previous version's report.")
@click.option("--strict", is_flag=True, help="With --check: a rule the report cannot evaluate fails.")
@click.pass_context
def generate(ctx: click.Context, model: str, images: tuple[str, ...], output_dir: Path, **params: Any) -> None:
    """Write a report for MODEL (.keras, .h5 or a keras.applications name) on IMAGES (files or folders;
    subfolders named after classes label their images)."""
    checking = {name: params.pop(name) for name in ("run_check", "rules_file", "baseline", "strict")}

    def checks() -> tuple[Any, Any, ReportOptions, bool, bool]:
        # Bad rules fail before minutes of work; the baseline is read now, before OUT (which it may be) is replaced.
        rules, baseline = _check_rules(checking, params.get("config_file"))
        options, force, quiet = _build_options(ctx, {**params, "output_dir": output_dir})
        _check_report_inputs(options, output_dir, force, images)
        _check_model(model)  # after the options: the order `generate_report` finds them in
        return rules, baseline, options, force, quiet

    def action(checked: tuple[Any, Any, ReportOptions, bool, bool]) -> int:
        from reportgen.api import generate_report
        from reportgen.progress import Progress

        rules, baseline, options, force, quiet = checked
        result = generate_report(model, images, output_dir, options, force=force, progress=Progress(not quiet))
        _print_result(result, quiet)
        if rules is None:
            return 0
        from reportgen.check import check_report
        from reportgen.check_render import table_text

        outcome = check_report(output_dir, rules, baseline, checking["strict"])
        click.echo(table_text(outcome), err=True)
        return outcome.exit_code

    ctx.exit(_run(ctx, action, checks, plots=True))


def _check_rules(checking: dict[str, Any], config_file: Path | None) -> tuple[tuple[Any, ...] | None, Any]:
    """generate --check: the rules from --rules, else from the config's [check] table, and the --baseline report
    opened (or None); (None, None) without --check."""
    if not checking["run_check"]:
        given = [flag for flag, key in (("--rules", "rules_file"), ("--baseline", "baseline"), ("--strict", "strict"))
                 if checking[key]]
        if given:
            raise InputError(f"{', '.join(given)}: only with --check")
        return None, None
    from reportgen.check import read_baseline, read_config_rules, read_rules_file  # NumPy: only with --check

    if checking["rules_file"] is not None:
        rules = read_rules_file(checking["rules_file"])
    elif config_file is not None:
        rules = read_config_rules(config_file)
    else:
        raise InputError("--check: give --rules FILE or a --config file with a [check] table of rules")
    return rules, read_baseline(checking["baseline"]) if checking["baseline"] is not None else None


@main.command()
@report_options
@click.pass_context
def demo(ctx: click.Context, output_dir: Path, **params: Any) -> None:
    """Write the report of the bundled example: a small CNN trained on synthetic shapes (offline)."""

    def checks() -> tuple[ReportOptions, bool, bool]:
        options, force, quiet = _build_options(ctx, {**params, "output_dir": output_dir})
        _check_report_inputs(options, output_dir, force)
        return options, force, quiet

    def action(checked: tuple[ReportOptions, bool, bool]) -> None:
        from reportgen.api import generate_report
        from reportgen.example import example_images_dir, example_metadata, example_model_path
        from reportgen.progress import Progress

        options, force, quiet = checked
        metadata = example_metadata()
        if options.title is None:
            options = dataclasses.replace(options, title="Example: a small CNN trained on synthetic shapes")
        result = generate_report(example_model_path(), [example_images_dir()], output_dir, options,
                                 class_names=metadata["class_names"], force=force, progress=Progress(not quiet))
        _print_result(result, quiet)

    _run(ctx, action, checks, plots=True)


@main.command()
@click.argument("model")
@click.option("--image-size", metavar="WxH", help="Input size for models without a fixed one (default 224x224).")
@click.option("--weights", help="keras.applications names only: imagenet, none, or FILE (default none: listing "
                                "the layers needs no weights).")
@click.option("--output", "output_name", help="Output layer to explain when the model has several.")
@click.option("--unsafe", is_flag=True, help="Allow Lambda layers (runs code stored in the file).")
@click.pass_context
def layers(ctx: click.Context, model: str, image_size: str | None, weights: str | None, output_name: str | None,
           unsafe: bool) -> None:
    """List every layer of MODEL, nested ones by path, with the sections that show it."""

    def checks() -> tuple[int, int] | None:
        size = parse_image_size(image_size) if image_size else None
        _check_model(model)
        return size

    def action(size: tuple[int, int] | None) -> None:
        from reportgen.api import summarize_layers
        from reportgen.sections.summary import format_shape

        summary = summarize_layers(model, size, weights, output_name, unsafe)
        rows = [("layer", "type", "output shape", "params", "sections")]
        rows += [(r.path, r.type_name, format_shape(r.output_shape), f"{r.params:,}", ",".join(r.sections) or "-")
                 for r in summary.layers]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        click.echo(f"\n{summary.name}: {summary.total_params:,} parameters, {len(summary.layers)} layers")

    _run(ctx, action, checks)


@main.command()
@click.argument("report", type=click.Path(path_type=Path))
@click.argument("site", type=click.Path(path_type=Path))
@click.option("--name", help="Model folder in SITE (default: the model's name in report.json).")
@click.option("--version", "version", help="Version folder in SITE (default: --model-version of the report, "
                                           "else its creation date).")
@click.option("--force", is_flag=True, help="Replace a different report already published as MODEL/VERSION.")
@click.option("--quiet", is_flag=True, help="Print only the path of the site's index.html.")
@click.pass_context
def publish(ctx: click.Context, report: Path, site: Path, name: str | None, version: str | None, force: bool,
            quiet: bool) -> None:
    """Copy the report folder REPORT to SITE/MODEL/VERSION/ and rebuild SITE/index.html, the page listing every
    published model and version (a static site for GitHub Pages)."""

    def action() -> None:
        from reportgen.publish import publish_report

        result = publish_report(report, site, name=name, version=version, force=force)
        for warning in result.warnings:
            click.echo(f"Warning: {warning}", err=True)
        if not quiet:
            state = "published to" if result.changed else "already published, unchanged:"
            click.echo(f"{report} {state} {result.report_html}", err=True)
        click.echo(str(result.index_html))

    _run(ctx, action, tensorflow=False)


@main.command()
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("-o", "--output-dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder to write the diff report to (replaced atomically).")
@click.option("--title", help="Report title.")
@click.option("--images", "images_dir", type=click.Path(path_type=Path, file_okay=False),
              help="The images folder both reports were made on: shows each image beside its maps (the paths a "
                   "report.json names are never read).")
@click.option("--force", is_flag=True, help="Replace OUT even if it is not an earlier report.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.pass_context
def diff(ctx: click.Context, old: Path, new: Path, output_dir: Path, title: str | None, images_dir: Path | None,
         force: bool, quiet: bool) -> None:
    """Compare two reports of a model (OLD and NEW folders, both made with --save-arrays) on the same images:
    weights, predictions, class activation maps and filter patterns, side by side."""

    def action() -> None:
        from reportgen.diff.build import diff_reports
        from reportgen.progress import Progress

        result = diff_reports(old, new, output_dir, title=title, force=force, progress=Progress(not quiet),
                              images=images_dir)
        _print_result(result, quiet)

    _run(ctx, action)


@main.command()
@click.argument("report", type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(path_type=Path),
              help="The previous version's report, for the rules that compare (max_accuracy_drop, ...).")
@click.option("--rules", "rules_file", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML file of rules, at the top level or in a [check] table (so a --config file serves).")
@click.option("--strict", is_flag=True, help="A rule the report holds no number for fails instead of being "
                                              "reported as not evaluated.")
@click.option("--markdown", "markdown_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the result as Markdown (under 1 MiB: fit for $GITHUB_STEP_SUMMARY or a PR comment).")
@click.option("--json", "json_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the result as JSON.")
@click.option("--quiet", is_flag=True, help="Print nothing; the exit code says it.")
@click.pass_context
def check(ctx: click.Context, report: Path, baseline: Path | None, rules_file: Path | None, strict: bool,
          markdown_file: Path | None, json_file: Path | None, quiet: bool) -> None:
    """Evaluate rules on the report folder REPORT and print a table of rule, value, threshold and result.
    Exit 0 when every rule passes, 3 when one fails, 2 on bad input."""

    def action() -> int:
        import json

        from reportgen.check import check_report, read_rules_file
        from reportgen.check_render import as_json, markdown, table_text
        from reportgen.side_files import check_side_file, write_side_file

        reports = [report, *([baseline] if baseline is not None else [])]
        outputs = (("--markdown", markdown_file, lambda: markdown(outcome)),
                   ("--json", json_file, lambda: json.dumps(as_json(outcome), indent=2, ensure_ascii=False) + "\n"))
        for flag, path, _ in outputs:
            if path is not None:
                check_side_file(path, flag, reports)  # before the check's work
        rules = read_rules_file(rules_file) if rules_file is not None else ()
        outcome = check_report(report, rules, baseline, strict)
        for flag, path, text in outputs:
            if path is not None:
                write_side_file(path, text(), flag)
        if not quiet:
            click.echo(table_text(outcome))
        return outcome.exit_code

    ctx.exit(_run(ctx, action, tensorflow=False))  # check reads files only: no Keras, so it answers at once


def _print_result(result: Any, quiet: bool) -> None:
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if not quiet:
        click.echo(f"Report written to {result.index_html}", err=True)
    click.echo(str(result.index_html))


def run() -> None:
    """The `reportgen` program: `main` (for `generate` and `demo`, in a child process the watchdog watches), then
    an exit without the interpreter's teardown.

    Once a command has finished, tearing down the interpreter (every module's objects, TensorFlow's runtime)
    takes 0.2 s and does nothing the command's outcome needs. So the exit handlers run and the output streams are
    flushed as at a normal exit, and the process then ends at once. `main` itself exits normally, for callers in
    Python (click's test runner among them).
    """
    import atexit

    from reportgen import watchdog

    argv = sys.argv[1:]
    if watchdog.should_supervise(argv):
        # The report runs in a watched child process: a hang or a native crash ends with one line that names
        # the step, and OUT untouched (`watchdog`). First this process parses the command line and makes the
        # checks that need no model, without TensorFlow: --help and a typo answer at once, with no child started.
        # Then it only waits: nothing to tear down.
        precheck = _Precheck()
        code = _exit_code(lambda: main(obj=precheck))
        if precheck.passed:
            code = watchdog.supervise(argv)
    else:
        code = _exit_code(main)
        atexit._run_exitfuncs()  # what a normal exit runs before the teardown (Ray's shutdown, logging's flush)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe (| head) must not turn success into a traceback
            stream.flush()
    os._exit(code)


def _exit_code(command: Callable[[], Any]) -> int:
    """The exit code `command` (`main`, which exits through SystemExit) ends with, as sys.exit would give it: a
    message instead of a code is printed and becomes 1."""
    try:
        command()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # what sys.exit does with a message
        code = 1
    return code or 0


if __name__ == "__main__":  # pragma: no cover
    run()
