"""What grading one assignment needs: its released and instructor notebooks, its tests and their points,
and the scrubber that keeps hidden test code out of what a learner sees. Prepared once per process."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np

from qkv_grading import cells
from qkv_grading.judge import Judge
from qkv_grading.course import (instructor_notebook, read_notebook, release_notebook, release_path, source_path,
                               split_hidden)
from qkv_grading.manual import is_written, written_answers
from qkv_grading.results import WrittenAnswer


GRADER_VERSION = "2"


@dataclass
class Spec:
    """What grading one assignment needs, prepared once per process and reused for every submission."""

    name: str
    released: nbformat.NotebookNode
    runnable: nbformat.NotebookNode
    fingerprint: str

    @property
    def tests(self) -> list[dict]:
        return [{"id": cells.grade_id(cell), "question": question_of(cells.grade_id(cell)),
                 "max_points": cells.points(cell)} for cell in self.runnable.cells if cells.is_test(cell)]

    @property
    def max_score(self) -> float:
        return sum(t["max_points"] for t in self.tests)

    @property
    def written(self) -> list[WrittenAnswer]:
        """The written answers, graded by hand (``qkv_grading.manual``), each waiting for its mark."""
        return written_answers(self.runnable)

    @functools.cached_property
    def scrub(self) -> Scrubber:
        return Scrubber(self.runnable, self.released)

    @functools.cached_property
    def judge(self) -> Judge:
        """Built where the points are awarded, on first use (never in a worker, never in a kernel)."""
        return Judge(self.name, self.runnable)

    def __getstate__(self):  # sent to workers: the data, without the judge's namespace of live objects
        return {k: v for k, v in self.__dict__.items() if k not in ("judge", "scrub")}


HIDDEN_REMOVED = "[hidden test code removed]"


class Scrubber:
    """Takes hidden test code out of text a learner will see: outputs, error messages, notes.

    The hidden tests run in the learner's kernel, so code there can get at their source (a frame's code,
    ``linecache``, ``inspect``) and print it or put it in an exception. Every line between the hidden-test
    markers that the released notebook does not show anyway, and that is long enough to mean something, is
    looked for in the text with whitespace ignored, also as ``repr()`` or JSON would escape it, and replaced
    by ``HIDDEN_REMOVED``. (Code that encodes what it reads can still get it out; that is visible to an
    instructor who reads the submission.)
    """

    MIN_CHARS = 8  # a hidden line shorter than this without whitespace (`))`, `else:`) says nothing

    def __init__(self, runnable: nbformat.NotebookNode, released: nbformat.NotebookNode):
        public = "\n".join(_compact(cell.source)[0] for cell in released.cells)  # shown anyway: left alone
        hidden: set[str] = set()
        for cell in runnable.cells:
            if not cells.is_test(cell):
                continue
            hidden.update(line.strip() for line in split_hidden(cell.source)[1])
        variants = set()
        for line in hidden:
            for form in (line, line.replace("\\", "\\\\").replace("'", "\\'"),
                         line.replace("\\", "\\\\").replace('"', '\\"'),
                         json.dumps(line)[1:-1], json.dumps(line, ensure_ascii=False)[1:-1]):
                compact = _compact(form)[0]
                if len(compact) >= self.MIN_CHARS and compact not in public:
                    variants.add(compact)
        self.lines = sorted(variants, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not self.lines or not text:
            return text
        compact, where = _compact(text)
        spans = []
        for line in self.lines:
            start = compact.find(line)
            while start >= 0:
                spans.append((int(where[start]), int(where[start + len(line) - 1]) + 1))
                start = compact.find(line, start + 1)
        if not spans:
            return text
        out, pos = [], 0
        for begin, end in sorted(spans):
            if begin >= pos and not (out and not text[pos:begin].strip()):
                out += [text[pos:begin], HIDDEN_REMOVED]
            pos = max(pos, end)  # spans that overlap, or only whitespace apart, get one marker
        out.append(text[pos:])
        return "".join(out)

    def outputs(self, cell) -> None:
        """Scrub every text a code cell's outputs hold, in place."""
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = self(str(out["text"]))
            for key, value in out.get("data", {}).items():
                if isinstance(value, str):
                    out["data"][key] = self(value)
            for key in ("ename", "evalue"):
                if key in out:
                    out[key] = self(str(out[key]))
            if "traceback" in out:
                out["traceback"] = [self(str(line)) for line in out["traceback"]]


_IS_SPACE = np.zeros(0x110000, dtype=bool)  # by code point: str.isspace (every such one is below 0x3001)
_IS_SPACE[[c for c in range(0x3001) if chr(c).isspace()]] = True


def _compact(text: str) -> tuple[str, np.ndarray]:
    """``text`` without whitespace, and where each character kept was in ``text``: four bytes of
    code point and a few of index per character (a list of Python ints took 46 bytes a character)."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    kept = ~_IS_SPACE[codes]
    where = np.flatnonzero(kept).astype(np.int32 if len(codes) < 2**31 else np.int64)
    return codes[kept].tobytes().decode("utf-32-le", "surrogatepass"), where


def question_of(grade_id: str) -> str:
    return grade_id.split("_", 1)[0]


def load_spec(root: Path, name: str, hidden: bool = True) -> Spec:
    """``hidden=True``: tests with hidden tests, from solutions/ (grading). ``hidden=False``: the released
    notebook alone (a learner's self-check, which works without solutions/)."""
    src = source_path(root, name)
    if hidden:
        source = read_notebook(src)
        released, runnable = release_notebook(source), instructor_notebook(source)
        text = src.read_bytes()
    else:
        rel = release_path(root, name)
        if rel.is_file():
            released = read_notebook(rel)
            text = rel.read_bytes()
        else:
            released = release_notebook(read_notebook(src))
            text = nbformat.writes(released).encode()
        runnable = released
    digest = hashlib.sha256(text + GRADER_VERSION.encode() + (b"h" if hidden else b"v")).hexdigest()[:16]
    return Spec(name, released, runnable, digest)
