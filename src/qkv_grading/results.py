"""What grading produces, as typed data that crosses processes and is stored: a ``Result`` per submission,
holding a ``TestResult`` per test cell."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields

# Terminal escape sequences (CSI, OSC), then single control characters (C0, DEL, C1) and the Unicode
# marks that reorder text as it is shown (bidirectional overrides and isolates).
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]{0,4096}(?:\x07|\x1b\\)?|"
                      r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def plain(text) -> str:
    """``text`` without control characters or terminal escapes (a tab or a line break becomes a space):
    what the grader writes in a note, a CSV cell or a message, whatever a kernel put in it."""
    return _CONTROL.sub("", str(text).replace("\t", " ").replace("\r", " ").replace("\n", " "))


def short(message: str, limit: int = 600) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


NOT_SUBMITTED = "not submitted"  # the student handed in nothing for the assignment: no score, not 0


@dataclass
class TestResult:
    """One test cell of one submission: its points, and what is wrong when it failed."""

    __test__ = False  # not a pytest test class, whatever its name

    id: str
    question: str
    max_points: float
    points: float = 0.0
    passed: bool = False
    message: str = ""


@dataclass
class WrittenAnswer:
    """One written answer of one submission, graded by hand (``qkv_grading.manual``): ``points`` is None
    while it waits for the instructor's mark."""

    id: str
    question: str
    max_points: float
    points: float | None = None


@dataclass
class Result:
    """One submission's grade. ``status``: "graded", "not submitted", or why nothing could be run
    ("missing", "unreadable", "rejected", "error"); ``notes``: what the grader noticed or repaired.
    ``executed`` (the executed notebook, outputs scrubbed, that the learner's feedback page shows) is
    never stored: the record holds what can be read back without running anything."""

    assignment: str
    status: str
    tests: list[TestResult]
    max_score: float
    notes: list[str] = field(default_factory=list)
    student: str = ""
    timestamp: str = ""
    key: str = ""  # what the submission was graded from: a re-run skips it while this is unchanged
    executed: object = field(default=None, repr=False, compare=False)
    written: list[WrittenAnswer] = field(default_factory=list)  # graded by hand: qkv_grading.manual
    autograded: str | None = field(default=None, repr=False, compare=False)  # for the formgrader; never stored

    @property
    def score(self) -> float:
        return sum(t.points for t in self.tests) + sum(w.points for w in self.written if w.points is not None)

    @property
    def waiting(self) -> float:
        """Points of written answers still waiting for the instructor: in neither score nor maximum."""
        return sum(w.max_points for w in self.written if w.points is None)

    @property
    def graded_max(self) -> float:
        """The maximum of what has been graded: the tests', and the written answers marked so far."""
        return self.max_score + sum(w.max_points for w in self.written if w.points is not None)

    @property
    def submitted(self) -> bool:
        return self.status != NOT_SUBMITTED

    @property
    def ran(self) -> bool:
        """Whether the notebook ran in a kernel and was judged (not missing, unreadable, or lost)."""
        return self.status == "graded"

    def questions(self) -> dict[str, tuple[float, float]]:
        """question -> (score, max_score), in the order the questions appear."""
        out: dict[str, list[float]] = {}
        for t in self.tests:
            acc = out.setdefault(t.question, [0.0, 0.0])
            acc[0] += t.points
            acc[1] += t.max_points
        for w in self.written:  # a written answer counts once it is marked, never as 0 while it waits
            if w.points is not None:
                out[w.question] = [w.points, w.max_points]
        return {q: (s, m) for q, (s, m) in out.items()}

    def needs_a_look(self) -> bool:
        """A submission an instructor should open: anything but a clean run (a sandbox stop, a timeout,
        a crash, a repaired or unreadable notebook)."""
        return (self.submitted and not self.ran) or bool(self.notes)

    def to_json(self) -> str:
        record = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("executed", "autograded")}
        record["tests"] = [asdict(t) for t in self.tests]
        record["written"] = [asdict(w) for w in self.written]
        record["score"] = self.score  # for whoever reads the file; computed again when loaded
        return json.dumps(record, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Result:
        record = json.loads(text)
        record.pop("score", None)
        record.pop("feedback", None)
        record.pop("autograded", None)
        record["tests"] = [TestResult(**t) for t in record["tests"]]
        record["written"] = [WrittenAnswer(**w) for w in record.get("written", [])]
        return cls(**record)


def tests_of(spec, **outcome) -> list[TestResult]:
    """A ``TestResult`` for every test of ``spec``, each with the same ``outcome`` (points, passed,
    message)."""
    return [TestResult(t["id"], t["question"], t["max_points"], **outcome) for t in spec.tests]


def not_submitted(spec, student: str) -> Result:
    """The record of an assignment a student did not hand in (no kernel runs, nothing is scored)."""
    return Result(spec.name, NOT_SUBMITTED, tests_of(spec), spec.max_score, student=student)
