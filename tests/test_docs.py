"""The documentation is tested like code.

* Every docstring example in the package runs under doctest, one test per module, so a
  broken ``>>>`` example fails CI. Examples may assume ``import torch``, ``import pyro``,
  ``import pyro.distributions as dist`` and ``import pyroflows`` (:data:`DOCTEST_GLOBALS`);
  anything else they import themselves.
* (slow) Every Python snippet of ``README.md`` and of the Sphinx pages in ``docs/`` runs, page
  by page in one namespace, with :func:`pyroflows.infer.fit` capped at two epochs (the
  snippets must run, not converge); the README's preset table names only registered presets.
* (slow) The Sphinx documentation builds with warnings as errors.
"""

from __future__ import annotations

import doctest
import importlib
import io
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows

os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

#: The names every docstring example may use without importing them.
DOCTEST_GLOBALS = {"torch": torch, "pyro": pyro, "dist": dist, "pyroflows": pyroflows}


def _module_names() -> list[str]:
    found = pkgutil.walk_packages(pyroflows.__path__, "pyroflows.", onerror=lambda name: None)
    return sorted({"pyroflows", *(info.name for info in found)})


def _import(name: str):  # noqa: ANN202
    """Import ``name``; skip when an optional third-party dependency is missing."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] != "pyroflows":
            pytest.skip(f"{name} needs {error.name}, which is not installed")
        raise


@pytest.mark.parametrize("name", _module_names())
def test_docstring_examples(name: str) -> None:
    module = _import(name)
    # Only objects defined in this module are searched, so re-exports are tested once.
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name, extraglobs=DOCTEST_GLOBALS)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    default_dtype = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        for test in sorted(tests, key=lambda t: t.name):
            runner.run(test, out=report.write)
    finally:
        torch.set_default_dtype(default_dtype)
        pyro.clear_param_store()
    result = runner.summarize(verbose=False)
    assert result.failed == 0, (
        f"{result.failed} docstring example(s) failed in {name}:\n{report.getvalue()}"
    )


# -- snippets of the README and the Sphinx pages ---------------------------------------------


def rst_python_blocks(text: str) -> list[str]:
    """The bodies of the ``.. code-block:: python`` directives of a reST text, dedented."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if re.fullmatch(r"\s*\.\. code-block:: python\s*", lines[i]):
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i][:1].isspace()):
                body.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(body)).strip() + "\n")
        else:
            i += 1
    return blocks


def markdown_python_blocks(text: str) -> list[str]:
    """The bodies of the ```` ```python ```` fences of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _pages() -> list[Path]:
    pages = [README] if README.exists() else []
    return pages + sorted(DOCS.glob("*.rst"))


def _blocks(page: Path) -> list[str]:
    text = page.read_text()
    return markdown_python_blocks(text) if page.suffix == ".md" else rst_python_blocks(text)


def test_snippet_extraction() -> None:
    rst = "Text\n\n.. code-block:: python\n\n   a = 1\n\n   b = a + 1\n\nAfter\n\n.. code-block:: bash\n\n   ls\n"
    assert rst_python_blocks(rst) == ["a = 1\n\nb = a + 1\n"]
    md = "# T\n\n```python\nx = 1\n```\n\n```bash\nls\n```\n"
    assert markdown_python_blocks(md) == ["x = 1\n"]


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in _pages() if _blocks(p)], ids=lambda p: p.name)
def test_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fit = pyroflows.infer.fit

    def quick_fit(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        kwargs["epochs"] = min(kwargs.get("epochs", 2), 2)
        kwargs.setdefault("progress", False)
        return fit(*args, **kwargs)

    monkeypatch.setattr(pyroflows.infer, "fit", quick_fit)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__snippet__"}
    try:
        for k, code in enumerate(_blocks(page)):
            exec(compile(code, f"{page.name}[python block {k + 1}]", "exec"), namespace)  # noqa: S102
    finally:
        pyro.clear_param_store()


def test_readme_preset_table_is_the_registry() -> None:
    if not README.exists():
        pytest.skip("no README.md")
    names = re.findall(r"^\| `([a-z0-9-]+)` \|", README.read_text(), flags=re.M)
    assert names, "README.md has no preset table"
    unknown = sorted(set(names) - set(pyroflows.flows.available()))
    assert not unknown, f"README.md lists presets that are not registered: {unknown}"
    missing = sorted(set(pyroflows.flows.available()) - set(names))
    assert not missing, f"registered presets missing from README.md's table: {missing}"


# -- the Sphinx build -------------------------------------------------------------------------


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    pytest.importorskip("furo")
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        "-d",
        str(tmp_path / "doctrees"),
        str(DOCS),
        str(tmp_path / "html"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, f"sphinx-build failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "html" / "index.html").exists()
