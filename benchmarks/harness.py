"""The timing harness every benchmark uses: ONE clock (`Clock`: wall time, the GPU synchronised first) and ONE
interleaving loop (`interleave`: every run on every item back to back, repeated, after a warm-up), on top of which
`compare` turns decoders into speedups, CR and acceptance, and `measure` compares AR with SS's two stream passes.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from tqdm import tqdm

from benchmarks.precision import speculative_differences
from generate import GenerationResult, generate_autoregressive, generate_speculative
from model import GPT

PASSES = ("tree", "accepted")  # the paper's single pass, and streams of the accepted node only (generate.py)

Decoder = Callable[[list[int]], GenerationResult]


class Clock:
    """Wall time in seconds on `device`: `now()` waits for the GPU's queued work first (a no-op on the CPU), so that
    a difference of two readings is the time the work between them took."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def time(self, run: Callable[[], Any]) -> tuple[Any, float]:
        """`run()`'s result and the seconds it took."""
        start = self.now()
        out = run()
        return out, self.now() - start


def interleave(runs: dict[str, Callable[[Any], Any]], items: list, repeats: int, clock: Clock, warmup: int = 2,
               desc: str | None = None) -> tuple[dict[str, list[float]], dict[str, list[list]]]:
    """Every run on every item, back to back per item (interleaved: load on the machine hits all runs alike),
    `repeats` times, after one untimed pass of every run over the first `warmup` items. Returns per run its total
    time of each repetition (seconds) and its results, results[name][repetition][item]. With `desc`, a progress bar
    counts the items done."""
    for item in items[:warmup]:
        for run in runs.values():
            run(item)
    times = {name: [] for name in runs}
    results = {name: [] for name in runs}
    progress = tqdm(total=repeats * len(items), desc=desc, leave=False, disable=desc is None)
    for _ in range(repeats):
        total = dict.fromkeys(runs, 0.0)
        outs = {name: [] for name in runs}
        for item in items:
            for name, run in runs.items():
                out, seconds = clock.time(lambda: run(item))
                total[name] += seconds
                outs[name].append(out)
            progress.update()
        for name in runs:
            times[name].append(total[name])
            results[name].append(outs[name])
    progress.close()
    return times, results


def mean_ms(steps: dict[str, Callable[[], Any]], reps: int, clock: Clock, warmup: int = 20) -> dict[str, float]:
    """Mean milliseconds of each step (a few-millisecond piece of work), the steps taking turns, after `warmup`
    untimed calls of each."""
    times, _ = interleave({name: lambda _, step=step: step() for name, step in steps.items()}, [None] * reps, 1,
                          clock, warmup)
    return {name: 1000 * t[0] / reps for name, t in times.items()}


def summary(results: list[GenerationResult], seconds: float) -> dict:
    """The statistics of one decoder over the prompts: its median time, forward calls, tokens, tokens per call,
    acceptance per depth (depth j: P(depth j accepted | depth j-1 accepted)) and mean tree sizes."""
    mean = lambda xs: sum(xs) / len(xs) if xs else 1.0
    attempted = [sum(col) for col in zip(*(r.depth_attempted for r in results))]
    accepted = [sum(col) for col in zip(*(r.depth_accepted for r in results))]
    tokens = sum(len(r.tokens) for r in results)
    return dict(
        time=seconds, forward_calls=sum(r.forward_calls for r in results),
        draft_calls=sum(r.draft_calls for r in results), tokens=tokens, ms_per_token=1000 * seconds / max(tokens, 1),
        tokens_per_call=mean([n for r in results for n in r.accepted_lengths]),
        acceptance=[a / n if n else None for a, n in zip(accepted, attempted)],
        tree_size=mean([n for r in results for n in r.tree_sizes]),
        tree_size_after_pruning=mean([n for r in results for n in r.pruned_tree_sizes]))


def compare(decoders: dict[str, tuple[Decoder, str | None]], prompts: list[list[int]], repeats: int,
            device: str = "cpu") -> dict:
    """Every decoder on every prompt, interleaved (`interleave`: each decode timed whole by the Clock), `repeats`
    times after a warm-up on two prompts. decoders[name] = (run, baseline): a decoder with a baseline (an autoregressive run of its target) must
    reproduce the baseline's output (counted in `outputs_differing`, the prompts' indices in `differing_prompts`: in
    float32 or lower a batched tree forward can flip a near tie that float64 never flips), and its speedup is
    median(baseline time) / median(own time); CR = baseline forward calls / own forward (target) calls. Returns per
    decoder its `summary` and these."""
    times, results = interleave({name: run for name, (run, _) in decoders.items()}, prompts, repeats, Clock(device),
                                desc=f"{len(decoders)} decoders")
    out = {}
    for name, (_, baseline) in decoders.items():
        first, differing = results[name][0], []  # counts are deterministic: the first repetition's
        if baseline is not None:
            for i, (prompt, r, b) in enumerate(zip(prompts, first, results[baseline][0])):
                if r.tokens != b.tokens:
                    differing.append(i)
                    print(f"warning: {name} differs from {baseline} on prompt {prompt[:8]}...: rounding (batched vs "
                          "one-row matmuls) can flip a near tie (docs/CONVENTIONS.md §5.6)")
        t = statistics.median(times[name])
        out[name] = dict(
            summary(first, t), outputs_differing=len(differing), differing_prompts=differing,
            speedup=None if baseline is None else statistics.median(times[baseline]) / t,
            cr_ratio=None if baseline is None else sum(r.forward_calls for r in results[baseline][0])
            / sum(r.forward_calls for r in first))
    return out


def measure(model: GPT, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None, repeats: int,
            device: str = "cpu", **ss_kwargs) -> dict:
    """AR vs SS (both stream passes) on the same prompts (`compare`), at the model's dtype. Returns the speedup of each
    pass, CR, tokens per call, per-depth acceptance, tree sizes (the drafts are the same for both passes) and how
    many outputs differ from greedy at a near tie (benchmarks.precision); any other difference aborts (the toy
    benchmarks assert exactness)."""
    decoders = {"ar": (lambda p: generate_autoregressive(model, p, max_new_tokens, eos_id), None)}
    for stream_pass in PASSES:
        decoders[stream_pass] = (lambda p, sp=stream_pass: generate_speculative(
            model, p, max_new_tokens, eos_id=eos_id, stream_pass=sp, **ss_kwargs), "ar")
    r = compare(decoders, prompts, repeats, device)
    near_ties = 0
    for name in (name for name in PASSES if r[name]["outputs_differing"]):
        differing = [prompts[i] for i in r[name]["differing_prompts"]]
        check = speculative_differences(model, differing, max_new_tokens, eos_id, stream_pass=name, **ss_kwargs)
        if check["beyond"]:
            raise AssertionError(f"speculative output differs from greedy, not at a near tie: {ss_kwargs}: {check}")
        near_ties = max(near_ties, check["near_ties"])
    tree, accepted, ar = r["tree"], r["accepted"], r["ar"]
    return dict(
        speedup=tree["speedup"], speedup_accepted=accepted["speedup"], cr_ratio=tree["cr_ratio"],
        tokens_per_call=tree["tokens_per_call"], acceptance=tree["acceptance"], tree_size=tree["tree_size"],
        tree_size_after_pruning=tree["tree_size_after_pruning"],
        ar_ms_per_token=1000 * ar["time"] / ar["forward_calls"],
        ss_ms_per_call=1000 * tree["time"] / tree["forward_calls"],
        ss_ms_per_call_accepted=1000 * accepted["time"] / accepted["forward_calls"],
        times={name: r[name]["time"] for name in decoders}, near_ties=near_ties,
    )
