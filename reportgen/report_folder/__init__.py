"""A report folder's files that are data: report.json and arrays.npz.

`schema` is report.json's layout as typed dataclasses (and its rules), `write` its only writer (render calls it),
`read` its only reader (check, diff, publish and the image finder call it). This package imports nothing from
reportgen but `errors`, so any layer may use it.
"""
