"""Comparing two report folders (read with `reportgen.report_folder.read`).

`compare` is the pure arithmetic of a diff; `build` turns a comparison into report sections and writes the diff
report. Nothing is imported here, so importing `compare` (as `check` does) does not import `build`'s figures.
"""
