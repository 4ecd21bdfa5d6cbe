"""Running checks safely: each check (one exercise of one student) runs in a child process of its own.

The child sends what happens through a pipe: ("call", name) before the student's functions run, ("ok", line)
for each sub-check that passes, ("end", status, message) at the end. The parent enforces a time limit on each
sub-check and kills a child that runs past it, so an endless loop, `sys.exit`, `os._exit`, a crash or a
KeyboardInterrupt in a student's code is one failed check, with the earlier sub-checks still reported.

On Linux the children are forked from a parent that has already imported torch and the checks, so starting one
costs milliseconds instead of the second or two of importing torch; elsewhere they are spawned. At most `workers`
children run at once (grading a class runs one per core).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Callable

import torch

from exercises import checks, core
from exercises.core import CheckFailed, what_happened

STATUSES = ("pass", "fail", "timeout", "error", "internal")  # internal: the checker's own error, never the student's


@dataclass
class Job:
    """One check to run: exercise 1-8 on a file, or the final check on a folder."""
    target: int | str
    source: Path


@dataclass
class Outcome:
    """What one check found: its status, the sub-checks that passed, what went wrong, how long it took."""
    status: str = "pass"
    passed: list[str] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0


@dataclass
class Running:
    index: int
    process: mp.process.BaseProcess
    conn: Connection
    started: float
    deadline: float
    outcome: Outcome = field(default_factory=Outcome)
    current: str = ""   # the student's function being run (or the file being imported)
    ended: bool = False  # the child sent its final status


def child(conn: Connection, target: int | str, source: str, quiet: bool) -> None:
    """The child process: run one check and report through `conn`; always ends with os._exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops every child
    if quiet:  # a class's prints would mix into the grade table
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1), os.dup2(devnull, 2)
        sys.stdout = sys.stderr = open(os.devnull, "w")
    torch.set_num_threads(1)  # tiny tensors: one thread is the fastest, and leaves the other cores to other checks
    core.listener = conn.send
    try:
        for line in checks.run(target, Path(source)):
            conn.send(("ok", line))
        conn.send(("end", "pass", ""))
    except CheckFailed as e:
        conn.send(("end", e.status, str(e)))
    except BaseException as e:  # noqa: BLE001 - a student's object that broke the checker, or a bug of the checker
        conn.send(("end", *unexpected(e, Path(source).resolve())))
    finally:
        sys.stdout.flush()
        os._exit(0)


def unexpected(e: BaseException, source: Path) -> tuple[str, str]:
    """(status, message) for an exception that escaped the checks: the student's when their code is on the stack."""
    frames = traceback.extract_tb(e.__traceback__)
    mine = [f for f in frames if Path(f.filename).resolve() == source or Path(f.filename).resolve().parent == source]
    if mine:
        f = mine[-1]
        return "error", f"your code failed: {what_happened(e)} (line {f.lineno} of {Path(f.filename).name}: {f.line})"
    f = frames[-1] if frames else None
    at = f" at {Path(f.filename).name}:{f.lineno}" if f else ""
    return "internal", (f"the checker itself failed ({type(e).__name__}: {e}{at}). This is not your mistake: please "
                        f"report it with the file that was checked.")


def context() -> mp.context.BaseContext:
    """fork on Linux (cheap: torch is already imported), spawn elsewhere (fork is unsafe on macOS)."""
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def start(ctx, index: int, job: Job, quiet: bool, timeout: float) -> Running:
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=child, args=(send, job.target, str(job.source), quiet), daemon=True)
    process.start()
    send.close()  # the child holds the only write end: its exit closes the pipe
    now = time.monotonic()
    return Running(index, process, receive, now, now + timeout)


def read(r: Running, timeout: float) -> bool:
    """Take every message waiting from a child; False once its pipe is closed (the child has exited)."""
    while True:
        try:
            if not r.conn.poll():
                return True
            message = r.conn.recv()
        except (EOFError, OSError):
            return False
        if message[0] == "call":
            r.current = message[1]
        elif message[0] == "ok":
            r.outcome.passed.append(message[1])
            r.deadline = time.monotonic() + timeout  # each sub-check gets the full time limit
        else:
            r.outcome.status, r.outcome.message, r.ended = message[1], message[2], True


def finish(r: Running, timed_out: float | None = None) -> Outcome:
    """The outcome of a child that ended, or that ran past its time limit (timed_out = the limit)."""
    if timed_out is not None:
        r.process.kill()
        what = (f"{r.current} did not finish" if r.current.startswith("importing")
                else f"`{r.current}` did not return" if r.current else "the check did not finish")
        r.outcome.status = "timeout"
        r.outcome.message = (f"{what} within {timed_out:g} s: an endless loop? (for example a `while` loop whose "
                             f"variable never changes, such as a walk up the tree that never steps to the parent)")
    r.process.join(5)
    if timed_out is None and not r.ended:
        code = r.process.exitcode
        during = f" while `{r.current}` was running" if r.current else ""
        r.outcome.status = "error"
        r.outcome.message = (f"the check's process was killed by signal {-code}{during} (out of memory?)"
                             if code is not None and code < 0 else
                             f"the check's process ended with exit code {code}{during}: os._exit, or a crash in "
                             f"compiled code, ends the whole program instead of returning")
    r.conn.close()
    r.outcome.seconds = time.monotonic() - r.started
    return r.outcome


def run_jobs(jobs: list[Job], timeout: float = 20.0, workers: int = 1, quiet: bool = False,
             on_done: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
    """Run every job in a child process, at most `workers` at a time, each sub-check limited to `timeout` seconds.
    on_done(index, outcome) is called as each job ends. Ctrl-C stops every child."""
    ctx, waiting, running = context(), list(range(len(jobs))), {}
    outcomes: list[Outcome | None] = [None] * len(jobs)

    def done(r: Running, timed_out: float | None = None):
        del running[r.conn]
        outcomes[r.index] = finish(r, timed_out)
        if on_done:
            on_done(r.index, outcomes[r.index])

    try:
        while waiting or running:
            while waiting and len(running) < workers:
                i = waiting.pop(0)
                r = start(ctx, i, jobs[i], quiet, timeout)
                running[r.conn] = r
            soonest = min(r.deadline for r in running.values())
            for conn in wait(list(running), timeout=max(0.0, soonest - time.monotonic())):
                if not read(running[conn], timeout):
                    done(running[conn])
            now = time.monotonic()
            for r in [r for r in running.values() if now >= r.deadline]:
                alive = read(r, timeout)  # a last look: it may have just passed a sub-check, or ended
                if not alive or r.ended:
                    done(r)
                elif now >= r.deadline:
                    done(r, timeout)
    finally:
        for r in running.values():
            r.process.kill()
    return outcomes


def run_check(target: int | str, source: Path, timeout: float = 20.0, quiet: bool = False) -> Outcome:
    """One check in a child process (the tests and `python -m exercises check` use it)."""
    return run_jobs([Job(target, Path(source))], timeout, 1, quiet)[0]
