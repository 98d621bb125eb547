"""Render a Report to a folder: index.html (self-contained), figures/*.png, report.json, summary.md, arrays.npz.

This is the only package that encodes images or writes output files (the published site's too). Writing is
atomic: everything is built in a hidden folder beside OUT and moved into place at the end, so a failure leaves
OUT as it was. The same report gives the same bytes: nothing time-dependent but `created` (which
SOURCE_DATE_EPOCH pins) reaches index.html, summary.md or arrays.npz; report.json also holds `seconds`.

The package: `encode` (figures to PNG and WebP on a thread pool, plots through the plotting worker), `page`
(index.html within its budget), `folder` (checks, leftovers, the atomic swap), `write` (a report folder) and `site`
(the published site). Their public names are handed on here.
"""

from reportgen.render.encode import (
    ENCODER_BACKLOG_BYTES,
    PLOT_BACKLOG_BYTES,
    FigureEncoder,
    encode_image,
    encode_png,
    encode_webp,
)
from reportgen.render.folder import (
    LEFTOVER_KINDS,
    check_output_dir,
    check_writable_target,
    is_report_dir,
    raise_if_disk_full,
    swap_into_place,
    sweep_leftovers,
)
from reportgen.render.page import PAGE_BUDGET, EncodedFigure, budget_note, encode_figures, environment, templates_dir
from reportgen.render.site import SITE_GENERATOR, is_site_index, render_site_index, write_site
from reportgen.render.write import SUMMARY_MD, write_report

__all__ = [
    "ENCODER_BACKLOG_BYTES",
    "LEFTOVER_KINDS",
    "PAGE_BUDGET",
    "PLOT_BACKLOG_BYTES",
    "SITE_GENERATOR",
    "SUMMARY_MD",
    "EncodedFigure",
    "FigureEncoder",
    "budget_note",
    "check_output_dir",
    "check_writable_target",
    "encode_figures",
    "encode_image",
    "encode_png",
    "encode_webp",
    "environment",
    "is_report_dir",
    "is_site_index",
    "raise_if_disk_full",
    "render_site_index",
    "swap_into_place",
    "sweep_leftovers",
    "templates_dir",
    "write_report",
    "write_site",
]
