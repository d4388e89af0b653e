"""What grading produces, as data that crosses processes and is stored: a result per submission."""

from __future__ import annotations

import json


def short(message: str, limit: int = 600) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def questions(result: dict) -> dict[str, tuple[float, float]]:
    """question -> (score, max_score), in the order the questions appear."""
    out: dict[str, list[float]] = {}
    for t in result["tests"]:
        acc = out.setdefault(t["question"], [0.0, 0.0])
        acc[0] += t["points"]
        acc[1] += t["max_points"]
    return {q: (s, m) for q, (s, m) in out.items()}


def result_json(result: dict) -> str:
    return json.dumps(result, indent=1, sort_keys=True)


NOT_SUBMITTED = "not submitted"  # the student handed in nothing for the assignment: no score, not 0


def not_submitted(spec, student: str) -> dict:
    """The record of an assignment a student did not hand in (no kernel runs, nothing is scored)."""
    tests = [dict(t, points=0.0, passed=False, message="") for t in spec.tests]
    return {"student": student, "assignment": spec.name, "status": NOT_SUBMITTED, "notes": [],
            "tests": tests, "score": 0.0, "max_score": spec.max_score, "timestamp": ""}


def needs_a_look(result: dict) -> bool:
    """A submission an instructor should open: anything but a clean run (a sandbox stop, a timeout, a
    crash, a repaired or unreadable notebook)."""
    return result["status"] not in ("graded", NOT_SUBMITTED) or bool(result["notes"])
