"""A mock class to try the grader on: one folder per student, each the solutions with a few typical mistakes, some
stubs left as they are, a missing file, an endless loop, a sys.exit or a refused import.

    python exercises/solutions/mock_class.py /tmp/class --students 30
    python -m exercises grade /tmp/class

Every student is drawn from a seeded generator, so the same command writes the same class. This file quotes the
solutions, so it is not in the student handout.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
from exercises.core import EXERCISES, STUBS  # noqa: E402

EDITS = [  # (exercise, solution text, a typical wrong version)
    (1, "for i in range(1, j + 1):", "for i in range(1, (n_streams if j else 0) + 1):"),
    (1, "mask[row, :t + 1] = True", "mask[row, :T] = True"),
    (2, ".tril()", ".triu()"),
    (2, "/ math.sqrt(hs)", ""),
    (2, "dim=1), dim=1)", "dim=1), dim=0)"),
    (3, "i = t + 1 + j", "i = t + max(j, 1)"),
    (3, "(1.0 if j == 0 else alpha)", "alpha"),
    (4, "return [cache_len + d for d in depths]", "return [cache_len + i for i in range(len(depths))]"),
    (4, "return [cache_len + d for d in depths]", "return [float(cache_len + d) for d in depths]"),
    (5, "tokens[node] == main_argmax[path[-1]]", "tokens[node] == main_argmax[node]"),
    (5, "torch.cat([entries[:cache_len], entries[accepted]])", "entries[:cache_len + len(path)]"),
    (6, "early_exit_probs[p, tokens[i]]", "early_exit_probs[i, tokens[i]]"),
    (6, "return [i for i, k in enumerate(kept) if k]", "return kept"),
    (7, "for node in path[1:]] + [bonus]", "for node in path[1:]]"),
    (7, "cache_len + len(path), done)", "cache_len + len(path) + 1, done)"),
    (8, "return min(1.0, p_x / q_x)", "return q_x"),
    (8, "return left / total if total > 0 else p", "return left"),
]
ACCIDENTS = [  # (exercise, solution text, what replaces it): code that breaks the check rather than an answer
    (4, "            a = parents[a]\n", ""),  # the walk up the tree never moves: an endless loop
    (1, "    size = (1 + n_streams) * T\n", "    import sys\n    sys.exit(0)\n"),
    (4, '"""Exercise 4', 'from tree import draft_tree as _unused  # noqa\n"""Exercise 4'),
]


def write_student(folder: Path, rng: random.Random) -> list[str]:
    """One student's files: the solutions with 0-3 mistakes, maybe a stub, a missing file or an accident.
    Returns what was done, for the teacher's eye."""
    folder.mkdir(parents=True)
    for name in EXERCISES.values():
        shutil.copy(HERE / name, folder / name)
    done = []
    for number, old, new in rng.sample(EDITS, rng.randint(0, 3)):
        path = folder / EXERCISES[number]
        path.write_text(path.read_text().replace(old, new))
        done.append(f"ex{number}: {new.strip()[:40]!r} instead of {old.strip()[:40]!r}")
    roll = rng.random()
    if roll < 0.12:
        number = rng.choice(list(EXERCISES))
        shutil.copy(STUBS / EXERCISES[number], folder / EXERCISES[number])
        done.append(f"ex{number}: the stub, not written")
    elif roll < 0.2:
        number = rng.choice(list(EXERCISES))
        (folder / EXERCISES[number]).unlink()
        done.append(f"ex{number}: no file")
    elif roll < 0.4:
        number, old, new = rng.choice(ACCIDENTS)
        path = folder / EXERCISES[number]
        path.write_text(path.read_text().replace(old, new, 1))
        done.append(f"ex{number}: {'endless loop' if not new else new.strip().splitlines()[-1][:40]}")
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write a mock class of students' exercise files.")
    p.add_argument("out", help="a new folder")
    p.add_argument("--students", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        print(f"error: {out} exists — give a new folder")
        return 2
    rng = random.Random(args.seed)
    for i in range(args.students):
        name = f"student{i + 1:02d}"
        print(f"{name}: {'; '.join(write_student(out / name, rng)) or 'all right'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
