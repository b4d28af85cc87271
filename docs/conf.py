"""Sphinx configuration of the nequip-spectral docs (MyST markdown pages, autodoc).

Build (warnings are errors, as in CI of the docs):

    pip install -e ".[docs]"
    sphinx-build -W -b html docs /tmp/docs_html
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # autodoc reads the package from this checkout

project = "nequip-spectral"
author = "the nequip-spectral authors"
copyright = "the nequip-spectral authors, MIT license"
release = re.search(
    r'__version__ = "([^"]+)"', (ROOT / "nequip_spectral" / "_version.py").read_text()
).group(1)
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

root_doc = "index"
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: `[text](page.md#a-heading)` links to headings down to level 3
myst_heading_anchors = 3

# autodoc + napoleon: Google-style "Args:" sections, members in source order
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"nequip-spectral {release}"
html_static_path = []


def write_options_table() -> None:
    """``_options_table.md``: the ``spectral_probe:`` options as a table, from the class that
    parses them (``option_rows``), included by the reference."""
    from nequip_spectral.config import option_rows

    def markdown(text: str) -> str:
        text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)  # :meth:`force_rows` -> `force_rows`
        return text.replace("``", "`").replace("|", "\\|")

    lines = ["| option | default | values | meaning |", "|---|---|---|---|"]
    for name, default, values, meaning in option_rows():
        lines.append(f"| `{name}` | `{default}` | {markdown(values)} | {markdown(meaning)} |")
    (Path(__file__).parent / "_options_table.md").write_text("\n".join(lines) + "\n")


write_options_table()
exclude_patterns.append("_options_table.md")  # included by reference.md, not a page
