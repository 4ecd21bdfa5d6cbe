"""The checks: one module per exercise (exN.py, a generator of the sub-checks that pass, raising CheckFailed at the
first that does not) and the final check (final.py, the pieces of exercises 1-7 inside the decode loop)."""
from pathlib import Path
from typing import Iterator

from exercises.checks import ex1, ex2, ex3, ex4, ex5, ex6, ex7, ex8, final
from exercises.core import FINAL, load_module

CHECKS = {1: ex1.check, 2: ex2.check, 3: ex3.check, 4: ex4.check, 5: ex5.check, 6: ex6.check, 7: ex7.check,
          8: ex8.check}


def run(target: int | str, source: Path) -> Iterator[str]:
    """The sub-checks of exercise `target` on the file `source`, or of the final check on the folder `source`."""
    if target == FINAL:
        yield from final.check(source)
    else:
        yield from CHECKS[target](load_module(source, target))
