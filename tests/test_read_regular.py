"""``discover.read_regular``: a submitted file is opened one folder at a time without following a link,
so a link anywhere in its path (put there after discover looked, say) is refused, never followed."""

from __future__ import annotations

import os

import pytest

from qkv_grading.discover import collected, read_regular


@pytest.fixture
def tree(tmp_path):
    base = tmp_path.resolve()
    (base / "subs" / "ada" / "01").mkdir(parents=True)
    (base / "outside").mkdir()
    (base / "outside" / "secret.txt").write_text("the grader's")
    (base / "subs" / "ada" / "01" / "01.ipynb").write_text("{}")
    return base


def test_a_regular_file_is_read(tree):
    assert read_regular(tree / "subs" / "ada" / "01" / "01.ipynb", 100) == b"{}"


@pytest.mark.parametrize("where", ["leaf", "folder", "student"])
def test_a_link_anywhere_in_the_path_is_refused(tree, where):
    if where == "leaf":
        (tree / "subs" / "ada" / "01" / "timestamp.txt").symlink_to(tree / "outside" / "secret.txt")
        path = tree / "subs" / "ada" / "01" / "timestamp.txt"
    elif where == "folder":
        (tree / "subs" / "ada" / "02").symlink_to(tree / "outside", target_is_directory=True)
        path = tree / "subs" / "ada" / "02" / "secret.txt"
    else:
        (tree / "subs" / "bob").symlink_to(tree / "outside", target_is_directory=True)
        path = tree / "subs" / "bob" / "secret.txt"
    assert path.read_text() == "the grader's"  # what following the link would give
    with pytest.raises(OSError):
        read_regular(path, 100)
    assert collected(path.parent / "x.ipynb", path.name) is None


def test_a_fifo_is_refused_at_once_and_a_large_file_too(tree):
    fifo = tree / "subs" / "ada" / "01" / "pipe.ipynb"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        read_regular(fifo, 100)  # no writer: a plain open() would wait for one forever
    with pytest.raises(OSError, match="larger than 1 bytes"):
        read_regular(tree / "subs" / "ada" / "01" / "01.ipynb", 1)
