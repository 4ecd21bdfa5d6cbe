"""Command line of the exercises: check one student's work, grade a class, build the handout, restore the stubs.

    python -m exercises check N [--module FILE]   # exercise N (1-8) on exercises/exN_*.py or FILE
    python -m exercises check final [--dir DIR]   # your pieces of exercises 1-7 inside the decode loop
    python -m exercises check all [--dir DIR]     # 1-8, then final
    python -m exercises grade SUBMISSIONS/        # a class: one folder per student (table, CSV, JSON)
    python -m exercises handout OUT/              # the student copy: no solutions, no tests that quote them
    python -m exercises reset                     # the stubs back in exercises/ (changed files backed up)
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # model.py, tree.py, generate.py: the project

from exercises.core import EXERCISES, FINAL, HERE  # noqa: E402
from exercises.sandbox import Job, Outcome, run_jobs  # noqa: E402

LABELS = {"fail": "NOT YET", "error": "ERROR", "timeout": "TIMEOUT", "internal": "CHECKER ERROR"}


def title(target, source: Path) -> str:
    if target == FINAL:
        return f"Final check: your pieces of exercises 1-7 inside the decode loop ({source})"
    return f"Exercise {target} ({source})"


def report(target, source: Path, outcome: Outcome) -> str:
    """The report of one check: the sub-checks that passed, then "all good" or what went wrong."""
    lines = [title(target, source)] + [f"  ok  {p}" for p in outcome.passed]
    if outcome.status == "pass":
        lines.append("  all good")
    else:
        lines.append(f"  {LABELS[outcome.status]}: " + outcome.message.replace("\n", "\n  "))
    return "\n".join(lines)


def check(args, parser) -> int:
    if args.exercise == "all":
        if args.module:
            parser.error("--module names one file: use --dir with `check all`")
        targets = [*EXERCISES, FINAL]
    elif args.exercise == FINAL:
        targets = [FINAL]
    elif args.exercise.isdigit() and int(args.exercise) in EXERCISES:
        targets = [int(args.exercise)]
    else:
        print(f"error: there is no exercise {args.exercise!r} — give a number 1-{len(EXERCISES)}, {FINAL} or all")
        return 2
    folder = Path(args.dir)
    jobs = [Job(t, folder if t == FINAL else Path(args.module) if args.module else folder / EXERCISES[t])
            for t in targets]
    outcomes = run_jobs(jobs, args.timeout, on_done=lambda i, o: print(report(jobs[i].target, jobs[i].source, o),
                                                                         flush=True))
    return 0 if all(o.status == "pass" for o in outcomes) else 1


def positive(kind):
    """An argparse type: a number > 0 of the given kind, or a one-line error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
        return value
    return parse


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m exercises", description="The exercises' checker and grader.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="check your solution of an exercise")
    c.add_argument("exercise", help=f"1-{len(EXERCISES)}, {FINAL} (your pieces in the decode loop) or all")
    c.add_argument("--module", help="your file for exercise N (default: exercises/<the stub's name>)")
    c.add_argument("--dir", default=str(HERE), help="folder with your exN_*.py files (default: exercises/)")
    c.add_argument("--timeout", type=positive(float), default=20.0, help="seconds each sub-check may take (default 20)")
    g = sub.add_parser("grade", help="check every exercise of every student of a class")
    g.add_argument("submissions", help="a folder with one folder per student, holding their exN_*.py files")
    g.add_argument("--timeout", type=positive(float), default=20.0, help="seconds each sub-check may take (default 20)")
    g.add_argument("--jobs", type=positive(int), default=None,
                   help="checks run at once (default: the cores, at most 4)")
    g.add_argument("--out", help="folder for grades.csv and grades.json (default: SUBMISSIONS)")
    h = sub.add_parser("handout", help="write the student copy of the project (no solutions)")
    h.add_argument("out", help="a new folder, outside the project")
    sub.add_parser("reset", help="copy the stubs over exercises/exN_*.py (changed files are backed up first)")
    args = p.parse_args(argv)
    try:
        if args.command == "check":
            return check(args, p)
        if args.command == "grade":
            from exercises.grade import grade
            return grade(Path(args.submissions), args.timeout, args.jobs, Path(args.out) if args.out else None)
        from exercises.handout import handout, reset
        return handout(Path(args.out)) if args.command == "handout" else reset()
    except KeyboardInterrupt:
        print("\nstopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
