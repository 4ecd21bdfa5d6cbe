"""The student copy of the project (`python -m exercises handout OUT`, make handout OUT=dir) and restoring the stubs
(`python -m exercises reset`, make reset).

The handout is the project without what gives the answers away: the solutions and their fixture generator
(exercises/solutions/), the tests that quote them (tests/test_exercises.py) and the teacher's guide with its
walkthroughs (docs/TEACHING.md). The exercise files in it are fresh copies of the stubs, whatever the teacher's own
exercises/exN_*.py hold. The checker and its fixtures (expected values only) stay: students run it themselves.
"""
from __future__ import annotations

import filecmp
import shutil
import subprocess
import time
from pathlib import Path

from exercises.core import EXERCISES, HERE, ROOT, STUBS

LEFT_OUT = ("exercises/solutions/", "exercises/backup/", "tests/test_exercises.py", "docs/TEACHING.md")
SKIPPED_FOLDERS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", "checkpoints", "data"}


def project_files() -> list[str]:
    """The project's files, relative to its root: git's tracked files in a git checkout, else every file outside
    the virtual environment, caches, checkpoints and data."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [name for name in listed.decode().split("\0") if name and (ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(ROOT)) for p in sorted(ROOT.rglob("*")) if p.is_file()
                and not SKIPPED_FOLDERS & set(p.relative_to(ROOT).parts[:-1])]


def handout(out: Path) -> int:
    """Write the student copy to `out` (a new or empty folder); returns the exit code."""
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty — give a new folder for the student copy")
        return 2
    if out.resolve().is_relative_to(ROOT.resolve()):
        print(f"error: {out} is inside the project — give a folder outside it")
        return 2
    copied = 0
    for name in project_files():
        if name.replace("\\", "/").startswith(LEFT_OUT):
            continue
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
        copied += 1
    for stub in EXERCISES.values():  # fresh stubs, even if the teacher's own copies hold solutions
        shutil.copy2(STUBS / stub, out / "exercises" / stub)
    print(f"wrote the student copy to {out}: {copied} files, without {', '.join(LEFT_OUT[:1] + LEFT_OUT[2:])}")
    return 0


def reset(folder: Path = HERE) -> int:
    """Copy the stubs over exercises/exN_*.py; files that differ from their stub are first moved to
    exercises/backup/<time>/. Returns the exit code."""
    backup = folder / "backup" / time.strftime("%Y%m%d-%H%M%S")
    kept = []
    for name in EXERCISES.values():
        path = folder / name
        if path.is_file() and not filecmp.cmp(path, STUBS / name, shallow=False):
            backup.mkdir(parents=True, exist_ok=True)
            shutil.move(path, backup / name)
            kept.append(name)
        shutil.copy2(STUBS / name, path)
    print(f"restored the {len(EXERCISES)} stubs in {folder}"
          + (f"; your previous {', '.join(kept)} are in {backup}" if kept else " (they were unchanged)"))
    return 0
