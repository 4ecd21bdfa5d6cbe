"""What every check shares: the list of exercises, loading a student's file safely, calling its functions, checking
what they return, and the committed expected values (fixtures).

A check never trusts the student's code: a missing function, an exception, `sys.exit`, an import of the project's
own implementation, a float where an id is due, a NaN or a wrong shape all become a `CheckFailed` whose message says
what happened in words. The checks themselves run in a child process (exercises/sandbox.py), which also stops
endless loops.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import math
import numbers
import traceback
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STUBS, FIXTURES = HERE / "stubs", HERE / "fixtures"
EXERCISES = {  # number -> the file the student fills in (its statement has the same name, with .md)
    1: "ex1_msa_mask.py",
    2: "ex2_stream_attention.py",
    3: "ex3_targets_and_loss.py",
    4: "ex4_tree_drafting.py",
    5: "ex5_verification.py",
    6: "ex6_pruning.py",
    7: "ex7_decode_step.py",
    8: "ex8_sampling.py",
}
FUNCTIONS = {  # number -> the functions the student writes
    1: ("msa_mask",),
    2: ("init_streams", "stream_attention"),
    3: ("eq5_targets", "eq5_loss"),
    4: ("draft_tree", "tree_attention_mask", "position_ids"),
    5: ("verify_greedy", "compact_cache"),
    6: ("prune_tree",),
    7: ("draft_depth", "commit_step"),
    8: ("accept_probability", "residual", "sibling_distributions", "verify_children"),
}
FINAL = "final"  # the student's pieces of exercises 1-7 inside the real decode loop
PROJECT_MODULES = {p.stem for p in ROOT.glob("*.py")} | {"benchmarks", "solutions"}


class CheckFailed(Exception):
    """A wrong answer, said in words. status: "fail" (wrong or missing) or "error" (the student's code crashed)."""

    status = "fail"


class StudentError(CheckFailed):
    """The student's code raised an exception, exited or was interrupted."""

    status = "error"


listener: Callable[[tuple], None] = lambda event: None  # the sandbox sets it: ("call", name) before each call
_last_call: list[str] = [""]


def tell(event: tuple) -> None:
    """Send one progress event to the parent process (a no-op outside the sandbox)."""
    listener(event)


# ---------------------------------------------------------------------------------------------------------------
# loading and calling the student's code
# ---------------------------------------------------------------------------------------------------------------

def forbidden_import(tree: ast.Module) -> tuple[int, str] | None:
    """(line, module) of the first import of one of the project's own modules, or None."""
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")):
            names = [node.args[0].value]
        for name in names:
            parts = name.split(".")
            if parts[0] in PROJECT_MODULES or "solutions" in parts:
                return node.lineno, name
    return None


def load_module(path: str | Path, number: int) -> ModuleType:
    """Import a student's file for exercise `number` by path, as a module of its own, after refusing a file that
    imports the project's own modules (they hold the answers)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise CheckFailed(f"{path} does not exist: give the path of your .py file (the stub is "
                          f"exercises/{EXERCISES[number]}; `python -m exercises reset` restores the stubs)")
    source = path.read_text(errors="replace")
    try:
        found = forbidden_import(ast.parse(source))
    except SyntaxError as e:
        raise StudentError(f"{path.name} is not valid Python: {e.msg} (line {e.lineno}: {(e.text or '').strip()})")
    if found:
        line, name = found
        code = source.splitlines()[line - 1].strip()
        raise CheckFailed(f"refused: {path.name} imports `{name}` (line {line}: {code}). An exercise file may use "
                          f"torch, math and Python's standard library, not the project's own modules: they hold the "
                          f"answers. Write {', '.join(FUNCTIONS[number])} yourself.")
    spec = importlib.util.spec_from_file_location(f"student_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    tell(("call", f"importing {path.name}"))
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too: the student's code ran
        raise StudentError(f"{path.name} could not be imported: {what_happened(e)}{where(e, path)}") from None
    for name in FUNCTIONS[number]:
        fn = getattr(module, name, None)
        if fn is not None and not (inspect.isfunction(fn) and Path(fn.__code__.co_filename).resolve() == path):
            origin = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
            raise CheckFailed(f"refused: `{name}` in {path.name} is {origin}, not a function written in your file. "
                              f"Write {name} yourself.")
    return module


def what_happened(e: BaseException) -> str:
    """An exception in words, with SystemExit and KeyboardInterrupt said plainly."""
    if isinstance(e, SystemExit):
        return (f"it called sys.exit({e.code!r}), which would end the whole program: a function returns its "
                f"result instead")
    if isinstance(e, KeyboardInterrupt):
        return "it raised KeyboardInterrupt"
    return f"{type(e).__name__}: {e}"


def where(e: BaseException, path: Path) -> str:
    """' (line N of file.py: code)' for the innermost frame of the student's file, if any."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path]
    if not frames:
        return ""
    f = frames[-1]
    return f" (line {f.lineno} of {path.name}: {f.line})"


def call(module: ModuleType, name: str, *args):
    """Call the student's function `name`; a missing function, NotImplementedError, any exception, sys.exit or
    KeyboardInterrupt becomes a failure that names the function and, for exceptions, the student's line."""
    path = Path(module.__file__).resolve()
    fn = getattr(module, name, None)
    if not callable(fn):
        raise CheckFailed(f"{path.name} has no function `{name}`: keep the names and signatures of the stub")
    if _last_call[0] != name:
        _last_call[0] = name
        tell(("call", name))
    try:
        return fn(*args)
    except NotImplementedError:
        raise CheckFailed(f"`{name}` is not written yet (it raises NotImplementedError): replace the `raise` line "
                          f"of {path.name} with your code") from None
    except BaseException as e:  # noqa: BLE001 - see what_happened
        shown = ", ".join(describe(a) for a in args)
        raise StudentError(f"`{name}({shown})` failed: {what_happened(e)}{where(e, path)}") from None


# ---------------------------------------------------------------------------------------------------------------
# what the student returned
# ---------------------------------------------------------------------------------------------------------------

def describe(x) -> str:
    """A short description of any value, for messages (never raises)."""
    if isinstance(x, torch.Tensor):
        if x.numel() <= 12 and x.dim() <= 2:
            return f"tensor({x.tolist()}, dtype={x.dtype})"
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    try:
        text = repr(x)
    except Exception:  # noqa: BLE001 - a student's object whose repr fails
        text = f"<a {type(x).__name__}>"
    return text if len(text) <= 90 else text[:87] + "..."


def kind(x) -> str:
    """'a list', 'a 2-D float32 tensor', 'None', ...: what a value is, for messages."""
    if x is None:
        return "None"
    if isinstance(x, torch.Tensor):
        return f"a {x.dim()}-D {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__} ({describe(x)})"


def int_list(x, what: str, length: int | None = None, bools: str = "") -> list[int]:
    """A list of ints returned by the student (a list, tuple or 1-D integer tensor), or a failure that says what
    is wrong: floats (ids and positions index tables), booleans (`bools` explains what was meant), anything else."""
    if isinstance(x, torch.Tensor):
        if x.dim() != 1:
            raise CheckFailed(f"{what} should be a list of integers (or a 1-D tensor), got {kind(x)}")
        values = x.tolist()
        if x.dtype == torch.bool:
            values = [bool(v) for v in values]
    elif isinstance(x, (list, tuple)):
        values = [v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in x]
    else:
        raise CheckFailed(f"{what} should be a list of integers, got {kind(x)}")
    for i, v in enumerate(values):
        if type(v).__name__ in ("bool", "bool_"):
            raise CheckFailed(f"{what} is a list of booleans ({describe(values)}): {bools or 'integers are expected'}")
        if not isinstance(v, numbers.Integral):
            noun = "a float" if isinstance(v, numbers.Real) else kind(v)
            raise CheckFailed(f"{what} should hold integers, got {describe(v)} ({noun}) at index {i}: token ids, "
                              f"node indices and positions index tables and lists, so they must be ints "
                              f"(use dtype=torch.long, or int(...))")
    values = [int(v) for v in values]
    if length is not None and len(values) != length:
        raise CheckFailed(f"{what} should have {length} entries, got {len(values)}: {describe(values)}")
    return values


def as_tensor(x, what: str, shape: tuple, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Check a returned tensor's type, shape, dtype (bool / long when given; else any floating type) and values
    (no NaN or inf); returns it detached (float64 when floating)."""
    if not isinstance(x, torch.Tensor):
        raise CheckFailed(f"{what} should return a torch tensor of shape {tuple(shape)}, got {kind(x)}")
    if tuple(x.shape) != tuple(shape):
        raise CheckFailed(f"{what} returned shape {tuple(x.shape)}, expected {tuple(shape)}")
    if dtype is not None and x.dtype != dtype:
        hint = {torch.bool: " (True = may attend: build it with dtype=torch.bool, or call .bool())",
                torch.long: " (token ids are integers: use dtype=torch.long)"}.get(dtype, "")
        raise CheckFailed(f"{what} returned dtype {x.dtype}, expected {dtype}{hint}")
    if dtype is None and not x.is_floating_point():
        raise CheckFailed(f"{what} returned dtype {x.dtype}, expected a floating-point tensor")
    x = x.detach()
    if x.is_floating_point():
        bad = (~torch.isfinite(x)).nonzero()
        if len(bad):
            at = tuple(bad[0].tolist())
            raise CheckFailed(f"{what} returned {float(x[at])} at index {list(at)} (of shape {tuple(shape)}): "
                              f"every value should be a finite number")
        x = x.double()
    return x


def as_float(x, what: str) -> float:
    """A number returned by the student (a Python number or a one-element tensor), finite."""
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise CheckFailed(f"{what} should return a number, got {kind(x)}")
    x = float(x)
    if not math.isfinite(x):
        raise CheckFailed(f"{what} returned {x}: it should be a finite number")
    return x


def as_int(x, what: str) -> int:
    """An integer returned by the student (a Python int or a one-element integer tensor)."""
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_floating_point() and x.dtype != torch.bool:
        x = x.item()
    if type(x).__name__ in ("bool", "bool_") or not isinstance(x, numbers.Integral):
        raise CheckFailed(f"{what} should be an integer, got {kind(x)}")
    return int(x)


def as_bool(x, what: str) -> bool:
    """A truth value returned by the student (True/False, or a one-element bool tensor)."""
    if isinstance(x, torch.Tensor) and x.numel() == 1 and x.dtype == torch.bool:
        x = x.item()
    if type(x).__name__ not in ("bool", "bool_"):
        raise CheckFailed(f"{what} should be True or False, got {kind(x)}")
    return bool(x)


def fmt(values, digits: int = 3) -> str:
    """A list of floats, rounded, for messages."""
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values) + "]"


# ---------------------------------------------------------------------------------------------------------------
# fixtures: the expected values, committed as JSON (tensors as {"tensor": nested lists, "dtype": name})
# ---------------------------------------------------------------------------------------------------------------

def encode(value):
    """Tensors -> JSON-ready dicts, recursively (floats keep every digit: JSON writes repr)."""
    if isinstance(value, torch.Tensor):
        return {"tensor": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(value):
    """The inverse of `encode`."""
    if isinstance(value, dict):
        if set(value) == {"tensor", "dtype"}:
            return torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def fixture(number: int) -> dict:
    """The committed cases of exercise `number`: inputs, expected outputs and what typical wrong versions return."""
    return decode(json.loads((FIXTURES / f"ex{number}.json").read_text()))


def same(got, expected, atol: float = 1e-9) -> bool:
    """Equal values: tensors of the same shape within atol, floats within atol, lists item by item, else ==."""
    if isinstance(expected, torch.Tensor):
        return (isinstance(got, torch.Tensor) and got.shape == expected.shape
                and torch.allclose(got.double(), expected.double(), atol=atol, rtol=0))
    if isinstance(expected, float):
        return isinstance(got, (int, float)) and abs(got - expected) <= atol
    if isinstance(expected, (list, tuple)):
        return (isinstance(got, (list, tuple)) and len(got) == len(expected)
                and all(same(g, e, atol) for g, e in zip(got, expected)))
    return type(got) is type(expected) and got == expected


def matching_mistake(outputs: list, variants: dict[str, list], hints: dict[str, str], atol: float = 1e-9) -> str:
    """The hint of the typical mistake whose outputs equal the student's on EVERY case (variants: name -> its
    output per case), or "" when none does: a hint is only given when the whole behaviour matches."""
    for name, wrong in variants.items():
        if name in hints and len(wrong) == len(outputs) and all(same(g, w, atol) for g, w in zip(outputs, wrong)):
            return hints[name]
    return ""


def signatures(module: ModuleType) -> dict[str, inspect.Signature]:
    """The public functions of a module and their signatures (the tests compare stubs and solutions)."""
    return {name: inspect.signature(fn) for name, fn in vars(module).items()
            if inspect.isfunction(fn) and fn.__module__ == module.__name__ and not name.startswith("_")}
