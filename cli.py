"""What the project's command lines share (train_toy.py, train_task.py, decode.py, bench.py, validate.py, data.py):
bad input is one line, `error: <what> — <how to fix>`, and a non-zero exit status, never a traceback.

`ArgumentParser` makes argparse's own errors (an unknown flag, a value of the wrong type) that one line too;
`positive_int` and `non_negative_float` are argparse types; `check_device` refuses a device torch cannot use here;
`warn` prints `warning: <what>` where the input is changed or may not mean what the user meant.
"""
from __future__ import annotations

import argparse
import sys

import torch


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are one line on stderr, exit status 2 (its subcommands' too)."""

    def error(self, message: str):
        fix = "" if " — " in message else f" — see {self.prog} --help"
        self.exit(2, f"error: {message}{fix}\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
    return int(text)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number >= 0")
    return value


def check_device(device: str) -> None:
    """Refuse (ValueError) a --device that torch does not know or that this machine does not have."""
    try:
        kind = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device — use cpu, cuda or cuda:N") from None
    if kind.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this machine has no CUDA GPU (or torch was built without CUDA) — "
                         f"use --device cpu")
    if kind.type == "cuda" and kind.index is not None and kind.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s) — use "
                         f"cuda:N with N < {torch.cuda.device_count()}")
    if kind.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here — use --device cpu")


def warn(message: str) -> None:
    """A one-line warning on stderr: the input was changed, or may not mean what the user meant."""
    print(f"warning: {message}", file=sys.stderr)
