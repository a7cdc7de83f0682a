"""Loading and saving 2-D numeric tables: ``.npy``, ``.npz``, ``.csv``, ``.tsv`` and ``.txt``.

:func:`load_array` returns a float64 array of shape (rows, features) or raises a ``ValueError``
that names the file and says what is wrong with it (and where, for text files: the line
number as an editor shows it), so the command line can report bad input in one line.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ARRAY_EXTENSIONS", "TEXT_EXTENSIONS", "load_array", "save_array"]

TEXT_EXTENSIONS = (".csv", ".tsv", ".txt")
ARRAY_EXTENSIONS = (".npy", ".npz", *TEXT_EXTENSIONS)
_SAVE_EXTENSIONS = (".npy", *TEXT_EXTENSIONS)


def _lines(rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:5])
    return shown + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def load_array(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Read a numeric table from ``path`` as a float64 array of shape (rows, features).

    Formats, chosen by the extension (case-insensitive):

    * ``.npy``: one array; ``.npz``: the only array in the archive, or the one named ``key``;
    * ``.csv``, ``.tsv``, ``.txt``: one row per line, values separated by commas (when the
      file has any) or else by whitespace. Blank lines and lines starting with ``#`` are
      skipped; a first row with no numeric cell is a header and is skipped too.

    One-dimensional data (a 1-D array, a one-column file) become a single column (n, 1).

    Args:
        path: the file.
        key: the array's name inside an ``.npz`` archive (needed when it holds several).

    Returns:
        A C-contiguous float64 array with at least one row and one column, all finite.

    Raises:
        ValueError: naming the file and the problem: missing or unreadable file, unknown
            extension, a cell that is not a number (with its line), rows of different lengths,
            no data, NaN or infinite values (with their rows), or an array of more than two
            dimensions.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "points.csv"
        >>> _ = path.write_text("x,y\\n1,2\\n3,4.5\\n")
        >>> load_array(path)
        array([[1. , 2. ],
               [3. , 4.5]])
    """
    name = os.fspath(path)
    p = Path(name)
    suffix = p.suffix.lower()
    if suffix not in ARRAY_EXTENSIONS:
        raise ValueError(
            f"{name}: unknown file type {p.suffix or '(no extension)'!r}; "
            f"use one of {', '.join(ARRAY_EXTENSIONS)}"
        )
    if key is not None and suffix != ".npz":
        raise ValueError(f"{name}: key={key!r} is only for .npz archives")
    if not p.exists():
        raise ValueError(f"{name}: no such file")
    if p.is_dir():
        raise ValueError(f"{name}: is a directory, not a data file")
    if suffix in TEXT_EXTENSIONS:
        return _load_text(p, name)
    array = _load_npz(p, name, key) if suffix == ".npz" else _load_npy(p, name)
    return _check_array(array, name)


def _load_npy(p: Path, name: str) -> Any:
    try:
        with open(p, "rb") as handle:
            magic = handle.read(6)
    except OSError as error:
        raise ValueError(f"{name}: cannot read it ({error.strerror or error})") from None
    if magic != b"\x93NUMPY":
        raise ValueError(f"{name}: not a readable .npy file (no NumPy header)")
    try:
        return np.load(p, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise ValueError(f"{name}: holds Python objects, not numbers") from None
        raise ValueError(f"{name}: not a readable .npy file ({error})") from None
    except (OSError, EOFError) as error:
        raise ValueError(f"{name}: not a readable .npy file ({error})") from None


def _load_npz(p: Path, name: str, key: str | None) -> Any:
    try:
        archive = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{name}: not a readable .npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a .npy file renamed to .npz
        return archive
    with archive:
        keys = list(archive.files)
        if key is None:
            if len(keys) != 1:
                listing = ", ".join(keys) if keys else "none"
                raise ValueError(
                    f"{name}: holds {len(keys)} arrays ({listing}); say which with a key"
                )
            key = keys[0]
        elif key not in keys:
            raise ValueError(
                f"{name}: no array named {key!r}; it holds: {', '.join(keys) or 'none'}"
            )
        try:
            return archive[key]
        except ValueError as error:
            raise ValueError(
                f"{name}: array {key!r} holds Python objects, not numbers ({error})"
            ) from None
        except (OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{name}: array {key!r} is unreadable ({error})") from None


def _check_array(array: Any, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        kind = "complex numbers" if array.dtype.kind == "c" else f"values of type {array.dtype}"
        raise ValueError(f"{name}: holds {kind}, not real numbers")
    if array.ndim == 0:
        raise ValueError(f"{name}: holds a single number, not a table of rows")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(
            f"{name}: has {array.ndim} dimensions, shape {array.shape}; expected a 2-D table "
            "(rows, features) — flatten each sample first, e.g. array.reshape(len(array), -1)"
        )
    if array.size == 0:
        raise ValueError(f"{name}: no data (shape {array.shape})")
    array = np.ascontiguousarray(array, dtype=np.float64)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad).tolist()
        raise ValueError(f"{name}: NaN or infinite values in rows {_lines(rows)} (counting from 0)")
    return array


def _cells(line: str, comma: bool) -> list[str]:
    if comma:
        return [c.strip() for c in next(csv.reader([line]))]
    return line.split()


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _load_text(p: Path, name: str) -> np.ndarray:
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not a text file (it is not valid UTF-8)") from None
    except OSError as error:
        raise ValueError(f"{name}: cannot read it ({error.strerror or error})") from None
    # Comments run from '#' to the end of the line, as in numpy.loadtxt.
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    content = [i for i, line in enumerate(lines) if line.strip()]
    if not content:
        raise ValueError(f"{name}: no data (the file is empty or holds only comments)")
    comma = any("," in lines[i] for i in content)
    header = all(_number(c) is None for c in _cells(lines[content[0]], comma))
    if header:
        content = content[1:]
        if not content:
            raise ValueError(f"{name}: no data (only a header line)")
    # Fast path: numpy's C parser. Anything it rejects is parsed again below, slowly, to say
    # exactly what is wrong and where.
    try:
        values = np.loadtxt(
            io.StringIO("\n".join(lines[i] for i in content)),
            delimiter="," if comma else None,
            ndmin=2,
            dtype=np.float64,
        )
        if values.shape[0] == len(content) and np.isfinite(values).all():
            return values
    except ValueError:
        pass
    first_line = content[0] + 1
    width = len(_cells(lines[content[0]], comma))
    values = np.empty((len(content), width))
    for row, i in enumerate(content):
        cells = _cells(lines[i], comma)
        if len(cells) != width:
            raise ValueError(
                f"{name}: line {i + 1} has {len(cells)} values but line {first_line} has {width} "
                "(rows must all have the same number of columns)"
            )
        for j, cell in enumerate(cells):
            value = _number(cell)
            if value is None:
                what = "an empty cell" if not cell else f"{cell[:40]!r} is not a number"
                hint = (
                    " (a header row must have no numeric cells)" if row == 0 and not header else ""
                )
                raise ValueError(f"{name}: line {i + 1}, column {j + 1}: {what}{hint}")
            values[row, j] = value
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        where = [content[row] + 1 for row in np.flatnonzero(bad)]
        raise ValueError(f"{name}: NaN or infinite values on lines {_lines(where)}")
    return values


def save_array(path: str | os.PathLike, array: Any) -> None:
    """Write a 2-D numeric array (or tensor) to ``.npy``, or as text to ``.csv`` / ``.tsv`` /
    ``.txt`` (comma, tab or space separated, full precision, no header).

    A 1-D array is written as one column, so :func:`load_array` reads back what was saved.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "points.csv"
        >>> save_array(path, np.array([[1.0, 2.0], [3.0, 4.5]]))
        >>> path.read_text()
        '1,2\\n3,4.5\\n'
    """
    name = os.fspath(path)
    suffix = Path(name).suffix.lower()
    if suffix not in _SAVE_EXTENSIONS:
        raise ValueError(
            f"{name}: cannot save as {Path(name).suffix or '(no extension)'!r}; "
            f"use one of {', '.join(_SAVE_EXTENSIONS)}"
        )
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"save_array takes real numbers, got an array of {array.dtype}")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"save_array takes a 1-D or 2-D array, got shape {array.shape}")
    if suffix == ".npy":
        with open(name, "wb") as handle:  # np.save(name) would append .npy to other names
            np.save(handle, array, allow_pickle=False)
        return
    fmt = "%d" if array.dtype.kind in "biu" else ("%.9g" if array.dtype.itemsize <= 4 else "%.17g")
    delimiter = {".csv": ",", ".tsv": "\t"}.get(suffix, " ")
    np.savetxt(name, array, fmt=fmt, delimiter=delimiter)
