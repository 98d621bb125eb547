"""Reading finished report folders and comparing two of them.

`manifest` reads report.json defensively (every section kind optional); `compare` is the pure arithmetic of a
diff; `build` turns a comparison into report sections and writes the diff report. Nothing is imported here so
that `render` (which uses `manifest` for summary.md) can import this package without a cycle.
"""
