"""Command line of the exercise checker: `python -m exercises check N [--module FILE] [--dir FOLDER]`."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # model.py, tree.py, ... (the oracles)

import torch  # noqa: E402

from exercises.checker import CHECKS, EXERCISES, FINAL, HERE, run  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m exercises", description="Check your solution of an exercise.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="run the checks of one exercise")
    c.add_argument("exercise", help=f"1-{len(EXERCISES)}, {FINAL} (your pieces in the decode loop) or all")
    c.add_argument("--module", help="your file for exercise N (default: exercises/<the stub's name>)")
    c.add_argument("--dir", default=str(HERE), help="folder with your six files, for 7 and all (default: exercises/)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: one thread is the fastest
    if args.exercise == "all":
        numbers = [*CHECKS, FINAL]
        if args.module:
            p.error("--module names one file: use --dir with `check all`")
    elif args.exercise.isdigit():
        numbers = [int(args.exercise)]
    else:
        p.error(f"exercise {args.exercise!r}: give a number 1-{FINAL} or all")
    for n in numbers:
        ok, report = run(n, args.module, args.dir)
        print(report)
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
