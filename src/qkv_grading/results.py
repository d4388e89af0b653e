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
