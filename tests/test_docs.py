"""The documentation holds: the README stays short and starts with the two commands CI and users copy, every relative
link in the Markdown reaches a file, docs/options.md lists every option of `reportgen generate`, and the MkDocs site
builds in strict mode."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 260

# The README's first lines, word for word: users copy the first command, CI runs the second (.ci/run).
README_HEAD = """# reportgen

Install and run the demo (offline, writes `demo-report/index.html`):

```bash
python3 -m venv .venv && . .venv/bin/activate && pip install -e . && reportgen demo -o demo-report
```

Install and run the tests (what CI runs):

```bash
python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test,ray]" && python -m pytest -q
```
"""

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def markdown_files() -> list[Path]:
    return [README, ROOT / "benchmarks" / "README.md", *sorted(DOCS.glob("*.md"))]


def relative_links(text: str) -> list[str]:
    """Link and image targets outside code, without web addresses and in-page anchors."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    targets = [match.group(1) for match in LINK.finditer(prose)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE) and not t.startswith("#")]


def test_link_finder_sees_links_and_skips_code():
    text = "[a](x.md) ![b](img/y.png \"t\") [c](https://e.org) [d](#here)\n`[e](no.md)`\n```\n[f](no2.md)\n```\n"
    assert relative_links(text) == ["x.md", "img/y.png"]


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES, f"README.md has {len(text.splitlines())} lines"
    assert text.startswith(README_HEAD), "README.md must start with the install + demo and install + test commands"
    # tests/test_browser.py refreshes this screenshot; the README shows it.
    assert "](example_reports/shapes-screenshot.png)" in text


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file(path: Path):
    missing = []
    for target in relative_links(path.read_text(encoding="utf-8")):
        file = target.split("#", 1)[0]
        if file and not (path.parent / file).exists():
            missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_options_page_names_every_option_of_generate():
    from reportgen.cli import generate
    from reportgen.config import flag_name, option_fields

    text = (DOCS / "options.md").read_text(encoding="utf-8")
    for field in option_fields():
        assert f"`--{flag_name(field.name)}" in text, f"docs/options.md does not list --{flag_name(field.name)}"
    # Every option the command itself declares, read from click rather than from the generator.
    flags = [opt for param in generate.params if param.param_type_name == "option" for opt in param.opts]
    assert "--top-k" in flags and "--check" in flags  # the command really was inspected
    for flag in flags:
        assert re.search(rf"`[^`]*{re.escape(flag)}\b", text), f"docs/options.md does not list {flag}"


def test_options_page_tables_are_current():
    spec = importlib.util.spec_from_file_location("gen_options", DOCS / "gen_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (DOCS / "options.md").read_text(encoding="utf-8")
    assert module.updated(text) == text, "docs/options.md is stale: run python docs/gen_options.py"


def test_mkdocs_builds_strict(tmp_path: Path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it is in the test extra: pip install -e '.[test]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    pages = {p.stem for p in (tmp_path / "site").glob("*.html")}
    assert {p.stem for p in DOCS.glob("*.md")} <= pages
