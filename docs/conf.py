"""Sphinx configuration of the pyroflows documentation (``make docs``).

Two pages are completed at build time from the code, so they never go stale:

* ``presets.rst``: the line ``.. pyroflows-presets::`` becomes a table and one section per name
  in :func:`pyroflows.flows.available`, each rendered from the preset's docstring;
* ``api.rst``: the line ``.. pyroflows-optional-modules::`` becomes an ``automodule`` for each
  module of :data:`OPTIONAL_MODULES` that exists (modules being written while these docs are);
* ``cli.rst``: each line ``.. pyroflows-cli-help:: COMMAND`` becomes the ``--help`` text of
  ``pyroflows COMMAND``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import pyroflows  # noqa: E402

project = "pyroflows"
author = "The pyroflows developers"
copyright = "2026, The pyroflows developers"  # noqa: A001
release = pyroflows.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

html_theme = "furo"
html_title = f"pyroflows {release}"
templates_path: list[str] = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
nitpicky = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": True}
autoclass_content = "class"
autodoc_inherit_docstrings = False

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

# Modules that the API page documents only when they exist.
OPTIONAL_MODULES = ["pyroflows.destructors", "pyroflows.rl", "pyroflows.plots", "pyroflows.cli"]


def _module_exists(name: str) -> bool:
    """True when ``name`` imports; a missing module is skipped, any other error is raised."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == name:
            return False
        raise
    return True


def _optional_modules_rst() -> str:
    blocks = []
    for name in OPTIONAL_MODULES:
        if _module_exists(name):
            title = f"``{name}``"
            # A package documents the names it re-exports (its __all__).
            package = hasattr(importlib.import_module(name), "__path__")
            options = "   :members:\n" + ("   :imported-members:\n" if package else "")
            blocks.append(f"{title}\n{'-' * len(title)}\n\n.. automodule:: {name}\n{options}")
    return "\n".join(blocks)


def _fast_direction(name: str) -> str:
    words = {"both": "both", "inverse": "density", "forward": "sampling"}
    try:
        flow = pyroflows.flows.build(name, 2)
    except Exception:  # noqa: BLE001  (a preset for images, say: see its docstring)
        return "see below"
    return words.get(flow.bijection.fast_direction, flow.bijection.fast_direction)


def _public_path(function) -> str:  # noqa: ANN001
    """``pyroflows.flows.maf`` when the function is exported there, its module path otherwise."""
    if getattr(pyroflows.flows, function.__name__, None) is function:
        return f"pyroflows.flows.{function.__name__}"
    return f"{function.__module__}.{function.__qualname__}"


def _presets_rst() -> str:
    names = pyroflows.flows.available()
    rows = []
    sections = []
    for name in names:
        function = pyroflows.flows.preset(name)
        doc = inspect.getdoc(function) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        path = _public_path(function)
        rows.append((f"``{name}``", f":func:`{function.__name__} <{path}>`",
                     _fast_direction(name), summary))
        title = f"``{name}``"
        sections.append(f"{title}\n{'-' * len(title)}\n\n.. autofunction:: {path}\n")
    table = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 12 14 10 64",
        "",
        "   * - name",
        "     - preset",
        "     - fast direction",
        "     - paper",
    ]
    for row in rows:
        table.append(f"   * - {row[0]}")
        table.extend(f"     - {cell}" for cell in row[1:])
    return "\n".join(table) + "\n\n" + "\n".join(sections)


def _cli_help(match: re.Match) -> str:
    command = match.group(1)
    if not _module_exists("pyroflows.cli"):
        return f"*(the help of* ``pyroflows {command}`` *appears here once pyroflows.cli exists)*"
    from pyroflows.cli import main

    buffer = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "96"
    try:
        with contextlib.redirect_stdout(buffer):
            main([command, "--help"])
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    text = buffer.getvalue().rstrip()
    return ".. code-block:: text\n\n" + "\n".join(f"   {line}".rstrip() for line in text.splitlines())


def _expand(app, docname: str, source: list[str]) -> None:  # noqa: ANN001
    text = source[0]
    if ".. pyroflows-presets::" in text:
        text = text.replace(".. pyroflows-presets::", _presets_rst())
    if ".. pyroflows-optional-modules::" in text:
        text = text.replace(".. pyroflows-optional-modules::", _optional_modules_rst())
    text = re.sub(r"^\.\. pyroflows-cli-help:: (\S+)[ \t]*$", _cli_help, text, flags=re.M)
    source[0] = text


def setup(app) -> dict:  # noqa: ANN001
    app.connect("source-read", _expand)
    return {"parallel_read_safe": True}
