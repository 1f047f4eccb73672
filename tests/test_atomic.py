"""Atomic writes: the target appears whole or not at all, with the mode a plain open() would give."""
import os

import pytest

from snnet import SNNetError
from snnet._atomic import atomic_path, atomic_write_text, together


def test_written_file_has_the_usual_mode_and_no_temp_is_left(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "hello")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(SNNetError, match=f"^cannot write {tmp_path / 'a.txt'}: killed$"):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_files_written_together_replace_the_old_ones_together_or_not_at_all(tmp_path):
    for name in ("a.txt", "b.txt"):
        atomic_write_text(tmp_path / name, "old")
    with pytest.raises(SNNetError, match="b.txt: disk full"):
        with together():
            atomic_write_text(tmp_path / "a.txt", "new")
            assert (tmp_path / "a.txt").read_text() == "old"  # written, not yet in place
            with atomic_path(tmp_path / "b.txt") as tmp:
                raise OSError(28, "disk full")
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["old", "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    with together():
        atomic_write_text(tmp_path / "a.txt", "new")
        with together():  # an inner block joins the outer one
            atomic_write_text(tmp_path / "b.txt", "new")
        assert (tmp_path / "b.txt").read_text() == "old"
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["new", "new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
