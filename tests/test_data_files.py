"""File loaders: formats, headers, shapes and every error case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyroflows.data import load_array, save_array

TABLE = np.array([[1.0, -2.5], [3.25, 4.0], [5.0, 6e-3]])


def write(path, text: str):  # noqa: ANN001, ANN201
    path.write_text(text)
    return path


# -- happy paths -------------------------------------------------------------------------------


def test_npy_round_trip(tmp_path):
    save_array(tmp_path / "a.npy", TABLE)
    out = load_array(tmp_path / "a.npy")
    assert out.dtype == np.float64 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, TABLE)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt", ".CSV"])
def test_text_round_trip_is_exact(tmp_path, suffix):
    x = np.random.default_rng(0).normal(size=(20, 3))
    save_array(tmp_path / f"a{suffix}", x)
    np.testing.assert_array_equal(load_array(tmp_path / f"a{suffix}"), x)


def test_save_accepts_tensors_and_1d(tmp_path):
    save_array(tmp_path / "t.csv", torch.arange(4.0))
    out = load_array(tmp_path / "t.csv")
    assert out.shape == (4, 1)
    np.testing.assert_array_equal(out[:, 0], [0, 1, 2, 3])


def test_npy_1d_becomes_a_column_and_ints_become_float(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(5))
    out = load_array(tmp_path / "v.npy")
    assert out.shape == (5, 1) and out.dtype == np.float64


def test_npz_single_array_and_key(tmp_path):
    np.savez(tmp_path / "one.npz", data=TABLE)
    np.testing.assert_array_equal(load_array(tmp_path / "one.npz"), TABLE)
    np.savez(tmp_path / "two.npz", train=TABLE, test=TABLE[:1] * 2)
    np.testing.assert_array_equal(load_array(tmp_path / "two.npz", key="test"), TABLE[:1] * 2)


def test_csv_with_header_comments_blank_lines_and_spaces(tmp_path):
    path = write(tmp_path / "h.csv", "# exported\n\nx, y\n1, -2.5\n 3.25,4  # note\n\n5,6e-3\n")
    np.testing.assert_array_equal(load_array(path), TABLE)


def test_quoted_csv_and_bom(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('\ufeff"x","y"\n"1","-2.5"\n"3.25","4"\n"5","6e-3"\n', encoding="utf-8")
    np.testing.assert_array_equal(load_array(path), TABLE)


def test_whitespace_separated_txt(tmp_path):
    path = write(tmp_path / "w.txt", "a\tb\n1 -2.5\n3.25\t 4\n5   6e-3\n")
    np.testing.assert_array_equal(load_array(path), TABLE)


def test_single_column_text(tmp_path):
    path = write(tmp_path / "c.txt", "value\n1\n2\n3\n")
    assert load_array(path).shape == (3, 1)


# -- errors ------------------------------------------------------------------------------------


def error(path, match: str, **kwargs) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match) as info:
        load_array(path, **kwargs)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    error(tmp_path / "nope.csv", "no such file")


def test_directory(tmp_path):
    (tmp_path / "d.npy").mkdir()
    error(tmp_path / "d.npy", "directory")


def test_unknown_extension(tmp_path):
    error(write(tmp_path / "a.xlsx", "1,2\n"), "unknown file type '.xlsx'")
    error(write(tmp_path / "noext", "1,2\n"), "no extension")


def test_key_only_for_npz(tmp_path):
    error(write(tmp_path / "a.csv", "1,2\n"), "only for .npz", key="x")


def test_npz_needs_key_when_ambiguous_or_wrong(tmp_path):
    np.savez(tmp_path / "two.npz", train=TABLE, test=TABLE)
    error(tmp_path / "two.npz", r"holds 2 arrays \(.*train.*\); say which")
    error(tmp_path / "two.npz", "no array named 'val'", key="val")


def test_corrupt_binary_files(tmp_path):
    error(write(tmp_path / "bad.npy", "not numpy"), "not a readable .npy")
    error(write(tmp_path / "bad.npz", "not a zip"), "not a readable .npz")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81\x00")
    error(tmp_path / "bin.csv", "not valid UTF-8")


def test_object_and_string_arrays(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    error(tmp_path / "obj.npy", "Python objects")
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    error(tmp_path / "str.npy", "not real numbers")


def test_non_numeric_cell_names_line_and_column(tmp_path):
    error(
        write(tmp_path / "a.csv", "x,y\n1,2\n3,oops\n"), r"line 3, column 2: 'oops' is not a number"
    )
    error(write(tmp_path / "b.csv", "1,2\n3,,\n"), r"line 2 has 3 values")
    error(write(tmp_path / "c.csv", "1,2\n3,\n"), r"line 2, column 2: an empty cell")


def test_mixed_first_row_is_an_error_not_a_header(tmp_path):
    error(write(tmp_path / "a.csv", "x,2\n1,2\n"), r"line 1, column 1: 'x'.*header")


def test_ragged_rows(tmp_path):
    error(write(tmp_path / "r.txt", "1 2 3\n4 5 6\n7 8\n"), r"line 3 has 2 values but line 1 has 3")


def test_empty_data(tmp_path):
    error(write(tmp_path / "e.csv", ""), "no data")
    error(write(tmp_path / "c.csv", "# only a comment\n\n"), "no data")
    error(write(tmp_path / "h.csv", "x,y\n"), "only a header")
    np.save(tmp_path / "e.npy", np.zeros((0, 3)))
    error(tmp_path / "e.npy", "no data")


def test_nan_and_inf_rows_are_named(tmp_path):
    error(write(tmp_path / "n.csv", "x,y\n1,2\n3,nan\n4,5\n6,inf\n"), r"lines 3, 5")
    x = np.ones((6, 2))
    x[1, 0], x[4, 1] = np.nan, -np.inf
    np.save(tmp_path / "n.npy", x)
    error(tmp_path / "n.npy", r"rows 1, 4")


def test_too_many_dimensions_and_scalars(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((4, 28, 28)))
    error(tmp_path / "img.npy", r"3 dimensions.*\(4, 28, 28\).*reshape")
    np.save(tmp_path / "s.npy", np.float64(3.0))
    error(tmp_path / "s.npy", "single number")


def test_save_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot save as '.json'"):
        save_array(tmp_path / "a.json", TABLE)
    with pytest.raises(ValueError, match="1-D or 2-D"):
        save_array(tmp_path / "a.npy", np.zeros((2, 2, 2)))
