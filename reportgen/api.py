"""`generate_report`: the one entry point the CLI, the Keras callback and the tests call."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.analysis import Analysis
from reportgen.config import ReportOptions
from reportgen.dataset import DatasetPass, PassPlan, pass_batch_size
from reportgen.errors import ImageError, InputError
from reportgen.graph import without_graph_rewrites
from reportgen.loading.applications import FAMILY_PREPROCESS
from reportgen.loading.images import LoadedImages, discover_images, display_text
from reportgen.loading.labels import read_class_names_file, resolve_class_names
from reportgen.loading.models import LoadedModel, load_model
from reportgen.loading.preprocess import Preprocessor, range_mismatch
from reportgen.loading.stream import ImageReader
from reportgen.outlock import output_lock
from reportgen.precision import SMALL_MODEL_FLOPS
from reportgen.progress import Progress
from reportgen.registry import resolve_sections, section_kind
from reportgen.render import FigureEncoder, check_output_dir, sweep_leftovers, write_report
from reportgen.report import ImageEntry, Report, Section, SectionResult
from reportgen.techniques.detail import choose_detail
from reportgen.techniques.predictions import output_classes
from reportgen.verdict import build_verdict


@dataclass(frozen=True)
class ReportResult:
    """Where the report went, and what it holds."""

    out_dir: Path
    sections: tuple[Section, ...]
    warnings: tuple[str, ...]

    @property
    def index_html(self) -> Path:
        return self.out_dir / "index.html"

    @property
    def manifest(self) -> Path:
        return self.out_dir / "report.json"

    @cached_property
    def manifest_data(self) -> dict[str, Any]:
        """report.json, parsed: every number behind the page."""
        from reportgen.report_folder.read import read_report

        return dict(read_report(self.out_dir).report.raw)

    def _repr_html_(self) -> str:
        """The whole report inline in Jupyter: an iframe whose srcdoc is the page (so its CSP holds)."""
        from reportgen.notebook import inline_frame

        return inline_frame(self.index_html.read_text(encoding="utf-8"))

    def show(self, section: str) -> Any:
        """One part of the report inline in Jupyter: a section id (`weights-conv1`), a kind (`cam`) or a layer."""
        from reportgen.notebook import InlineReport, section_ids, section_page

        ids = section_ids(self.manifest_data, section)
        return InlineReport(section_page(self.index_html.read_text(encoding="utf-8"), ids))


def versions() -> dict[str, str]:
    import keras
    import numpy
    import tensorflow

    from reportgen import __version__

    return {"reportgen": __version__, "tensorflow": tensorflow.__version__, "keras": keras.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def creation_time() -> str:
    """Now in UTC, or SOURCE_DATE_EPOCH when set (reproducible builds)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def choose_preprocessing(mode: str, loaded: LoadedModel) -> Preprocessor:
    """`auto`: a keras.applications model gets its own preprocessing; a model that starts by rescaling takes
    raw pixels; anything else pixels/255. The Preprocessor says why (`reason`)."""
    reason = f"chosen with --preprocess {mode}"
    if mode == "auto":
        if loaded.family is not None:
            mode = FAMILY_PREPROCESS.get(loaded.family, "scale")
            reason = (f"auto: a keras.applications {loaded.family} model takes what its own preprocess_input "
                      f"does ({mode})")
        elif _starts_with_rescaling(loaded.model):
            mode = "none"
            reason = "auto: the model starts with a Rescaling layer, so it takes raw pixels"
        else:
            mode = "scale"
            reason = ("auto: a model of no known family takes pixels / 255, the usual choice for hand-trained "
                      "models; set --preprocess if it was trained otherwise")
    return Preprocessor(mode, channels=loaded.input_shape[2], reason=reason)


def _starts_with_rescaling(model: Any) -> bool:
    import keras

    from reportgen.graph import walk_layers

    nodes = walk_layers(model)
    return bool(nodes) and isinstance(nodes[0].layer, keras.layers.Rescaling)


def summarize_layers(model: str, image_size: tuple[int, int] | None, weights: str | None, output: str | None,
                     unsafe: bool) -> Any:
    """`reportgen layers`: every layer of `model` with its output shape at `image_size` and the sections that
    show it (`techniques.summary.ModelSummary`). A keras.applications name is built without weights unless
    `weights` says otherwise: the architecture is the same whatever the weights, and nothing is fetched."""
    from reportgen.graph import block_outputs, layer_output_shapes, walk_layers
    from reportgen.loading.applications import find_application
    from reportgen.loading.images import target_size
    from reportgen.techniques.cams import choose_target_layer
    from reportgen.techniques.summary import summarize_model

    if image_size is not None:
        ReportOptions(image_size=image_size)  # the same bounds as generate
    if weights is None and not Path(model).exists() and find_application(model) is not None:
        weights = "none"
    loaded = load_model(model, weights=weights, image_size=image_size, output=output, unsafe=unsafe)
    (height, width), _ = target_size(loaded.input_shape, image_size)
    shape = (height, width, loaded.input_shape[2])
    nodes = walk_layers(loaded.model)
    shapes = layer_output_shapes(loaded.model, shape)
    target = choose_target_layer(nodes, shapes, blocks=block_outputs(loaded.model, shape),
                                 classes=output_classes(loaded.model))
    return summarize_model(loaded.model, nodes, shapes, target.path if target else None)


def run_dataset_pass(analysis: Analysis, reader: ImageReader, wanted: Sequence[str]) -> None:
    """Stream every image through the model once for the dataset sections, then load the detail sample."""
    options = analysis.options
    labels = np.array([-1 if (i := analysis.class_names.index_of(s.label)) is None else i
                       for s in analysis.all_sources], np.int64)
    if not any(section_kind(kind).dataset_pass for kind in wanted):  # no section needs every image: the sample only
        detail = list(range(min(options.detail, len(reader.sources))))
        analysis.use_detail(*_load_detail(reader, detail))
        return
    plan = pass_plan(analysis, wanted)
    shapes = analysis.layer_shapes
    paths = [*(n.path for n in plan.stat_layers), *(output for _, output, _ in plan.example_layers),
             *([plan.cam_layer] if plan.cam_layer else []), *([plan.embedding_layer] if plan.embedding_layer else [])]
    batch_size = pass_batch_size(shapes, paths, options.batch_size)
    from reportgen.techniques.predictions import final_layer

    dataset_pass = DatasetPass(analysis.model, analysis.preprocessor, len(analysis.class_names.names), plan, shapes,
                               final_layer(analysis.model).activation)
    counter = analysis.progress.counter("dataset", len(reader.sources))
    workers = 1
    if options.engine == "ray":
        from reportgen.ray_engine import run_on_ray

        result, workers = run_on_ray(analysis, dataset_pass, reader, labels, batch_size, counter)
        reader.skipped.update(result.skipped)  # the detail sample is read here: skip what the workers could not
        reader.warnings.extend(w for w in result.warnings if w not in reader.warnings)
    else:
        result = dataset_pass.run(reader, labels, batch_size, counter)
    counter.close()
    if result.images == 0:
        raise ImageError("no usable image: every file failed to decode (" + "; ".join(reader.warnings[-3:]) + ")")
    analysis.dataset = result
    names = [s.name for s in analysis.all_sources]
    detail = choose_detail(names, result.labels, result.predicted, result.confidence, options.detail, options.seed,
                           options.detail_images)
    analysis.use_detail(*_load_detail(reader, detail))
    analysis.dataset_manifest = {
        "images": result.images, "listed": result.listed, "labelled": int(np.count_nonzero(result.labels >= 0)),
        "detail_images": [analysis.all_image_ids[i] for i in analysis.detail_indices],
        "seconds": round(result.seconds, 3), "images_per_second": round(result.images_per_second, 2),
        "batch_size": batch_size, "probabilities": result.probability_method, "engine": options.engine,
        "workers": workers, "engine_startup_seconds": round(result.startup_seconds, 3),
        **({"worker_images_per_second": [round(r, 2) for r in result.worker_images_per_second],
            "merge_seconds": round(result.merge_seconds, 3)} if options.engine == "ray" else {})}


def _load_detail(reader: ImageReader, indices: Sequence[int]) -> tuple[LoadedImages, list[int]]:
    images = reader.load(indices)
    kept = [i for i in indices if i not in reader.skipped]
    return images, kept


def pass_plan(analysis: Analysis, wanted: Sequence[str]) -> PassPlan:
    """Which layers the dataset pass reduces, for the sections that will run."""
    from reportgen.layer_kinds import is_spatial as spatial
    from reportgen.techniques.feature_maps import select_layers
    from reportgen.techniques.filter_patterns import choose_filters

    options = analysis.options
    shapes = analysis.layer_shapes
    stat_layers = tuple(select_layers(analysis.layers, shapes, options.layers)) if "feature_maps" in wanted else ()
    examples: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    if "dataset_examples" in wanted:
        from reportgen.sections.filter_patterns import pattern_layers

        # The same layers, filters and quantity as the patterns: each filter's mean at its block's output.
        examples = tuple((t.layer, t.output, choose_filters(int(shapes[t.output][3]), options.filters,
                                                           options.filter_indices, t.layer))
                         for t in pattern_layers(analysis) if spatial(shapes.get(t.output)))
    target = analysis.cam_target if "class" in wanted else None
    # Data health embeds each image by the pooled output of the last conv block (the CAM layer's choice): tried
    # on a small CNN, pooled conv features ranked every re-encoded duplicate first, the penultimate dense layer
    # some of them 1,500th.
    embedding = analysis.cam_target if "data_health" in wanted else None
    return PassPlan(stat_layers, examples, target.path if target else None, options.examples, options.batch_size,
                    embedding.path if embedding else None, options.seed)


def arithmetic(analysis: Analysis) -> dict[str, Any]:
    """report.json's `arithmetic`: what this machine computed in, and why two machines' reports may differ."""
    from reportgen.precision import fast_bfloat16, ranking_dtype

    return {
        "cpu_bfloat16": fast_bfloat16(),
        "ranking_passes": ranking_dtype(analysis.model, analysis.layer_shapes),
        "note": ("Passes whose outputs are only ranked or averaged (the filter-pattern search steps, the CAM "
                 "deletion and insertion curves) run in bfloat16 on CPUs with native bfloat16 when the model has "
                 "enough arithmetic per activation to gain from it (each section's data names its dtype); every "
                 "other number is float32, and a pattern's numbers are re-evaluated in float32. Another CPU, or "
                 "TensorFlow with oneDNN off, rounds differently: patterns and curve areas may differ in their last "
                 "digits between machines, and a score near a flag's threshold may cross it."),
    }


def image_entries(analysis: Analysis) -> tuple[ImageEntry, ...]:
    """Every image of the set for report.json: its id, label and, after a dataset pass, its prediction."""
    dataset = analysis.dataset
    names = analysis.class_names.names
    detail = set(analysis.detail_indices)
    entries = []
    for i, (image_id, source) in enumerate(zip(analysis.all_image_ids, analysis.all_sources, strict=True)):
        if dataset is None and i not in detail:
            continue
        if dataset is not None and i in dataset.skipped:
            continue
        if dataset is not None:
            size = tuple(int(v) for v in dataset.sizes[i])
            conversion = dataset.conversions[i]
        else:
            position = analysis.detail_indices.index(i)
            size, conversion = analysis.images.original_sizes[position], analysis.images.conversions[position]
        prediction = None
        if dataset is not None:
            predicted = int(dataset.predicted[i])
            prediction = {"class_index": predicted, "class_name": names[predicted],
                          "probability": float(dataset.confidence[i])}
        entries.append(ImageEntry(id=image_id, name=source.name, path=display_text(str(source.path)),
                                  label=source.label, original_size=size, conversion=conversion, prediction=prediction,
                                  detail=i in detail))
    return tuple(entries)


def _check_unambiguous(names: Sequence[str], requested: Sequence[str]) -> None:
    """`--detail-images` values are fnmatch globs, and a value equal to an image's name picks that image: a value
    that is both (`c/[x]*.png`, a file of that name, also matches `c/x.png`) is refused, with the escaped form
    (each glob character in brackets: `[[]`, `[*]`, `[?]`) that picks only the file."""
    import re
    from fnmatch import fnmatchcase

    present = set(names)
    for pattern in requested:
        if pattern in present:
            others = [n for n in names if n != pattern and fnmatchcase(n, pattern)]
            if others:
                escaped = re.sub(r"([*?[])", r"[\1]", pattern)
                shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
                raise InputError(f"--detail-images: {pattern!r} is the name of an image and also a glob matching "
                                 f"{shown}; give {escaped!r} to pick only that image (a glob character in brackets "
                                 "matches itself)")


def check_options(analysis: Analysis, wanted: Sequence[str]) -> None:
    """The options that need the model and the images, checked before any section runs: the input size fits the
    model's layers, and --layers, --cam-layer, --classes and --filter-indices name what the model has."""
    from reportgen.techniques.feature_maps import select_layers
    from reportgen.techniques.predictions import resolve_classes

    options = analysis.options

    def read(option: str) -> bool:
        """True when `option` is given and a wanted section reads it."""
        return bool(getattr(options, option)) and any(option in section_kind(k).model_options for k in wanted)

    if options.detail_images:
        from reportgen.techniques.detail import check_requested

        check_requested([s.name for s in analysis.all_sources], options.detail_images)
        _check_unambiguous([s.name for s in analysis.all_sources], options.detail_images)
    try:
        analysis.layer_shapes  # noqa: B018 - computes every layer's output shape at the images' size
    except InputError:
        raise
    except Exception as exc:
        height, width = analysis.size
        cause = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ImageError(f"--image-size: {width}x{height} is too small for {analysis.loaded.name} (its layers "
                         f"cannot run on it: {cause[:300]}); choose a larger size") from None
    if read("layers"):
        select_layers(analysis.layers, analysis.layer_shapes, options.layers)
    if read("cam_layer"):
        analysis.cam_target  # noqa: B018 - raises InputError naming --cam-layer
    if read("classes"):
        resolve_classes(options.classes, analysis.class_names.names)
    if read("filter_indices"):
        from reportgen.layer_kinds import PATTERN_TYPES
        from reportgen.techniques.filter_patterns import choose_filters

        for node in analysis.layers:
            if isinstance(node.layer, PATTERN_TYPES):
                choose_filters(int(analysis.layer_shapes[node.path][-1]), options.filters, options.filter_indices,
                               node.path)


def generate_report(
    model: str | Path | Any,
    images: Sequence[str | Path],
    out_dir: str | Path,
    options: ReportOptions | None = None,
    *,
    class_names: Sequence[str] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ReportResult:
    """Run every selected technique on `model` (file, keras.applications name or keras.Model) and `images`
    (files or folders) and write the report folder `out_dir`."""
    options = options or ReportOptions()
    progress = progress or Progress(enabled=False)
    # Every check that needs no model comes first, then those that need the model and images: a typo in any
    # option fails in seconds, before the first section, never after minutes of work.
    out = check_output_dir(Path(out_dir), force)
    # One run at a time into OUT: the sweep below would otherwise delete a running run's staging folder.
    with output_lock(out):
        sweep_leftovers(out)
        wanted = resolve_sections(options.sections)
        if options.engine == "ray":
            from reportgen.ray_engine import check_engine

            check_engine(options)  # Ray importable, --ray-address answering: seconds, before the model loads
        if options.class_names is not None:
            read_class_names_file(options.class_names)
        discovery_warnings: list[str] = []
        sources = discover_images(images, exclude=[out], warnings=discovery_warnings,
                                  follow_links=options.follow_links)

        # The plotting worker starts now, so it imports matplotlib while the model loads and the images stream.
        with FigureEncoder(plots=any(section_kind(kind).plots for kind in wanted)) as encoder:
            progress("load", f"model {model if not hasattr(model, 'name') else model.name}")
            loaded = load_model(model, weights=options.weights, image_size=options.image_size, output=options.output,
                                unsafe=options.unsafe, seed=options.seed)
            progress("load", f"{len(sources)} images")
            reader = ImageReader(sources, loaded.input_shape, options.image_size)
            preprocessor = choose_preprocessing(options.preprocess, loaded)
            mismatch = range_mismatch(preprocessor, loaded.model)
            names, name_warnings = resolve_class_names(
                output_classes(loaded.model), options.class_names, [s.label for s in sources], builtin=class_names
            )
            early_warnings = [*discovery_warnings, *name_warnings, *([mismatch] if mismatch else [])]
            report = _analyse(loaded, reader, preprocessor, names, sources, early_warnings, len(discovery_warnings),
                              wanted, options, progress, encoder)
            progress("render", str(out))
            write_report(report, out, force=force, save_arrays=options.save_arrays, encoder=encoder)
    progress("done", f"{out / 'index.html'}")
    return ReportResult(Path(out_dir), report.sections, report.warnings)


def _analyse(loaded: Any, reader: ImageReader, preprocessor: Preprocessor, names: Any, sources: Sequence[Any],
             early_warnings: list[str], discovered: int, wanted: Sequence[str], options: ReportOptions,
             progress: Progress, encoder: FigureEncoder) -> Report:
    """The checks that need the model, the dataset pass and every section: the report model, not yet written.
    `early_warnings` come first in the report, the reader's (skipped files) after the first `discovered`."""
    empty = LoadedImages((), np.zeros((0, reader.height, reader.width, reader.channels), np.float32), (), ())
    analysis = Analysis(loaded=loaded, images=empty, preprocessor=preprocessor, class_names=names,
                        options=options, progress=progress, encode=encoder, plot=encoder.plot,
                        warnings=list(early_warnings),
                        all_sources=tuple(sources), input_size=(reader.height, reader.width), reader=reader)
    check_options(analysis, wanted)
    seconds: dict[str, float] = {}
    sections: list[Section] = []
    # A small model's report is tracing, not arithmetic: TensorFlow's graph optimiser would cost more than it saves.
    small = analysis.image_flops <= SMALL_MODEL_FLOPS
    with without_graph_rewrites() if small else contextlib.nullcontext():
        run_dataset_pass(analysis, reader, wanted)
        analysis.warnings[discovered:discovered] = reader.warnings  # skipped files early
        results: dict[str, SectionResult] = {}
        for kind in wanted:
            started = time.perf_counter()
            progress(kind, "start")
            earlier = {name: results[name] for name in section_kind(kind).after if name in results}
            result = results[kind] = section_kind(kind).build()(analysis, earlier)
            for section in result.sections:
                encoder.prefetch(section)  # its plots compress while the next section computes
            sections.extend(result.sections)
            seconds[kind] = round(time.perf_counter() - started, 3)

    warnings = tuple(dict.fromkeys([*analysis.warnings, *(w for r in results.values() for w in r.warnings)]))
    with without_graph_rewrites() if small else contextlib.nullcontext():
        progress("verdict", "start")
        verdict = build_verdict(analysis, results, warnings)
    report = Report(
        title=options.title or f"{loaded.name}: what the network learned",
        created=creation_time(),
        model={
            "name": loaded.name,
            "version": options.model_version,
            "source": loaded.source,
            "format": loaded.file_format,
            "sha256": loaded.sha256,
            "family": loaded.family,
            "input_shape": list(loaded.input_shape),
            "output": loaded.output_name,
            "classes": len(names.names),
            "class_names_from": names.source,
            "preprocess": preprocessor.mode,
            "preprocess_formula": preprocessor.formula(),
            "preprocess_reason": preprocessor.reason,
            "params": int(loaded.model.count_params()),
        },
        options={**options.to_manifest(), "sections": list(wanted)},
        images=image_entries(analysis),
        class_names=names.names,
        sections=tuple(sections),
        warnings=warnings,
        seconds=seconds,
        versions=versions(),
        extra={**({"dataset": analysis.dataset_manifest} if analysis.dataset_manifest is not None else {}),
               **{k: v for r in results.values() for k, v in r.manifest.items()},
               "arithmetic": arithmetic(analysis)},
        verdict=verdict,
    )
    return report
