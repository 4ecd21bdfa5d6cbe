"""Grading a class: `python -m exercises grade SUBMISSIONS/`, one folder per student holding their exN_*.py files.

Every exercise of every student is checked on its own (a failure never hides another), in child processes, one per
core at a time. Prints a table (student x exercise: pass / fail / timeout / error) and each student's first hint per
exercise, and writes grades.csv and grades.json. The exit code is 0 whatever the students' results; 2 for a bad
command, 3 when the checker itself failed somewhere (the table says where).
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
import time
from pathlib import Path

from exercises.core import EXERCISES, FINAL
from exercises.sandbox import Job, Outcome, run_jobs

COLUMNS = [*EXERCISES, FINAL]


def label(column: int | str) -> str:
    return f"ex{column}" if isinstance(column, int) else column


def first_hint(message: str, width: int | None = None) -> str:
    """The hint of a message: its "Hint:" or "Rule:" part when it has one, else its first line (cut to width). The
    final check's report of another exercise's own check ("Check N alone ...") is left out."""
    message = re.split(r" Check \d alone", message)[0]
    for marker in ("Hint: ", "Rule: "):
        if marker in message:
            message = message[message.index(marker) + len(marker):]
            break
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line if width is None or len(line) <= width else line[:width - 3] + "..."


def student_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def table(names: list[str], results: dict[tuple[str, int | str], Outcome]) -> str:
    """The grade table, then each student's first hint for every exercise that did not pass."""
    width = max(len("student"), *(len(n) for n in names))
    lines = [f"{'student':<{width}}  " + "  ".join(f"{label(c):<7}" for c in COLUMNS) + "  passed"]
    for name in names:
        row = [results[name, c].status for c in COLUMNS]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{s:<7}" for s in row)
                     + f"  {row.count('pass')}/{len(COLUMNS)}")
    lines += ["", "First hint of every check that did not pass:"]
    for name in names:
        for c in COLUMNS:
            o = results[name, c]
            if o.status != "pass":
                lines.append(f"  {name:<{width}}  {label(c):<5}  {o.status:<7}  {first_hint(o.message, 150)}")
    return "\n".join(lines)


def write(out: Path, names: list[str], results: dict, timeout: float, seconds: float) -> None:
    """grades.csv (one row per student and exercise) and grades.json (everything, sub-checks included)."""
    with open(out / "grades.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "exercise", "status", "subchecks_passed", "seconds", "first_hint"])
        for name in names:
            for c in COLUMNS:
                o = results[name, c]
                w.writerow([name, label(c), o.status, len(o.passed), f"{o.seconds:.2f}", first_hint(o.message)])
    report = {"timeout_per_subcheck_s": timeout, "total_s": round(seconds, 1), "students": {
        name: {label(c): dict(status=results[name, c].status, passed=results[name, c].passed,
                              message=results[name, c].message, seconds=round(results[name, c].seconds, 2))
               for c in COLUMNS} for name in names}}
    (out / "grades.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


def grade(folder: Path, timeout: float = 20.0, workers: int | None = None, out: Path | None = None) -> int:
    """Grade every student folder under `folder`; returns the exit code."""
    if not folder.is_dir():
        print(f"error: {folder} is not a folder — give the folder that holds one folder per student")
        return 2
    students = student_folders(folder)
    if not students:
        print(f"error: no student folders in {folder} — put each student's exN_*.py files in a folder of their own")
        return 2
    out = out or folder
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(4, os.cpu_count() or 1)
    keys = [(s.name, c) for s in students for c in COLUMNS]
    jobs = [Job(c, folder / name if c == FINAL else folder / name / EXERCISES[c]) for name, c in keys]
    start, finished = time.monotonic(), [0]

    def progress(index: int, outcome: Outcome):
        finished[0] += 1
        if sys.stderr.isatty():
            print(f"\rchecked {finished[0]}/{len(jobs)}", end="", file=sys.stderr, flush=True)

    outcomes = run_jobs(jobs, timeout, workers, quiet=True, on_done=progress)
    seconds = time.monotonic() - start
    print(f"\r{len(students)} students x {len(COLUMNS)} checks in {seconds:.0f} s ({workers} at a time)",
          file=sys.stderr)
    results = dict(zip(keys, outcomes))
    names = [s.name for s in students]
    print(table(names, results))
    write(out, names, results, timeout, seconds)
    print(f"\nwrote {out / 'grades.csv'} and {out / 'grades.json'}")
    internal = [k for k, o in results.items() if o.status == "internal"]
    if internal:
        where = ", ".join(f"{n} {label(c)}" for n, c in internal[:5])
        print(f"error: the checker itself failed on {len(internal)} check(s) ({where}) — their messages are in "
              f"grades.json; please report them")
        return 3
    return 0
