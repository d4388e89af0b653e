"""The outputs an instructor reads: grades.csv, questions.csv, report.csv and report.png."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from qkv_grading.course import ASSIGNMENTS
from qkv_grading.results import questions


def load_results(out: Path) -> list[dict]:
    results = []
    for path in sorted((out / "results").glob("*/*.json")):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(results, key=lambda r: (r["student"], r["assignment"]))


def write_tables(out: Path, results: list[dict], ignored: list[str], notices: list[str] = ()) -> None:
    with open(out / "grades.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", "score", "max_score"])
        for r in results:
            w.writerow([r["student"], r["assignment"], f"{r['score']:g}", f"{r['max_score']:g}"])
    with open(out / "questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", "question", "score", "max_score"])
        for r in results:
            for q, (s, m) in questions(r).items():
                w.writerow([r["student"], r["assignment"], q, f"{s:g}", f"{m:g}"])
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", "score", "max_score", "status", "notes"])
        for r in results:
            w.writerow([r["student"], r["assignment"], f"{r['score']:g}", f"{r['max_score']:g}", r["status"],
                        "; ".join(r["notes"])])
        for path in ignored:
            w.writerow(["", "", "", "", "ignored", path])
        for notice in notices:
            w.writerow(["", "", "", "", "no sandbox", notice])


def write_figure(out: Path, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [a for a in ASSIGNMENTS if any(r["assignment"] == a for r in results)]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.4), squeeze=False,
                             sharey=True)
    rng = np.random.default_rng(0)
    for ax, name in zip(axes[0], names):
        per_q: dict[str, list[float]] = {}
        for r in results:
            if r["assignment"] == name:
                for q, (s, m) in questions(r).items():
                    per_q.setdefault(q, []).append(s / m if m else 0.0)
        for x, (q, fractions) in enumerate(per_q.items()):
            ys = np.array(fractions)
            ax.scatter(x + rng.uniform(-0.15, 0.15, len(ys)), ys, s=12, alpha=0.5, color="tab:blue")
            ax.plot([x - 0.3, x + 0.3], [ys.mean()] * 2, color="tab:red", lw=2)
        ax.set_xticks(range(len(per_q)), list(per_q))
        ax.set_title(f"{name}\n({sum(r['assignment'] == name for r in results)} submissions)", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("score / max per question (red: mean)")
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=100)
    plt.close(fig)
