"""Where the time of one decode call goes (`bench.py profile`): an AR step and an SS call (both stream passes, with
and without a capped, pruned tree), timed part by part, against a bare forward of the same rows.

The calls timed are generate.py's own: `generate_autoregressive` and `generate_speculative` decode a context, and
timing hooks, in place only while a profile runs, wrap what their loops call: the model's methods (embed, lower,
upper, streams_at, early_exit_logits, draft_logits, the LM head), the tree functions, the cache's compaction and
generate.py's drafting and argmax helpers. So the profile cannot drift from the code: change a decode step and the
profile times the new one. A marker on generate.commit_tokens, called once per decode call, delimits the call timed.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import os
import statistics
import sys
from contextlib import contextmanager
from typing import Callable

import torch

import generate
import tree
from benchmarks.harness import PASSES, Clock, interleave, mean_ms
from benchmarks.models import (cast, draft_vocabulary, drafter_path, load_for_decoding, load_toy, settings_line,
                               task_draft_vocabulary, task_setup, variant)
from benchmarks.precision import machine_description
from benchmarks.report import write_profile
from generate import GenerationResult, StepTrace, causal_mask, generate_autoregressive, generate_speculative
from model import GPT, KVCache

PROFILE_PARTS = ["embed", "lower blocks", "pruning head", "MSA blocks, main rows only",
                 "MSA blocks, tree rows + γ streams per node", "MSA blocks, γ stream rows of the accepted node",
                 "verification LM head + argmax", "drafting LM head + top-k", "tree building", "mask building",
                 "cache compaction", "Python bookkeeping"]  # the last: the rest of the call, untimed by any hook
TIMED_CALL = 2  # the second decode call after the prefill: it follows a call of the same setting, as in a loop
MISSING = object()


class CallTimed(Exception):
    """Raised by the commit_tokens marker once the timed call is done: the decode stops there."""


class PartTimer:
    """The hooks' clock: the time of each part within the timed call, and the call's start and end.

    A hooked function called from inside another hooked function counts toward the outer one's part (the LM head
    inside draft_logits is drafting, not verification), so the parts never overlap and the call minus its parts is
    what no hook covers: the Python bookkeeping of the loop (plus the hooks' own overhead, measured apart)."""

    def __init__(self, clock: Clock):
        self.clock, self.parts, self.hooked_calls = clock, {}, 0
        self.commits, self.start, self.end, self.inside = 0, None, None, False

    def hook(self, part: str | Callable[..., str], fn: Callable) -> Callable:
        """`fn`, timed into `part` (a name, or a function of fn's arguments that gives it) during the timed call."""
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self.inside or self.start is None or self.end is not None:
                return fn(*args, **kwargs)
            self.inside, start = True, self.clock.now()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds = self.clock.now() - start
                name = part(*args, **kwargs) if callable(part) else part
                self.parts[name] = self.parts.get(name, 0.0) + seconds
                self.hooked_calls, self.inside = self.hooked_calls + 1, False
        return timed

    def marker(self, commit_tokens: Callable) -> Callable:
        """generate.commit_tokens, counted: its first call commits the prefill's token, call c + 1 ends decode call
        c. The timed call runs from the end of call TIMED_CALL - 1 to the end of call TIMED_CALL (CallTimed)."""
        @functools.wraps(commit_tokens)
        def counted(*args, **kwargs):
            done = commit_tokens(*args, **kwargs)
            self.commits += 1
            if self.commits == TIMED_CALL:
                self.start = self.clock.now()
            elif self.commits == TIMED_CALL + 1:
                self.end = self.clock.now()
                raise CallTimed
            return done
        return counted


def hook_points(model: GPT) -> list[tuple[object, str, str | Callable[..., str]]]:
    """(owner, attribute, part) of every function the profile times: methods of this model (its own attributes
    for the duration), KVCache's compaction, generate.py's helpers and the tree functions wherever generate.py
    holds them."""
    upper = inspect.signature(model.upper)

    def msa_part(*args, **kwargs) -> str:
        n = upper.bind(*args, **kwargs).arguments.get("n_streams")
        streams = model.config.n_streams if n is None else n
        return "MSA blocks, tree rows + γ streams per node" if streams else "MSA blocks, main rows only"

    points = [(model, "embed", "embed"), (model, "lower", "lower blocks"), (model, "upper", msa_part),
              (model, "early_exit_logits", "pruning head"),
              (model, "streams_at", "MSA blocks, γ stream rows of the accepted node"),
              (model.lm_head, "forward", "verification LM head + argmax"),
              (model, "draft_logits", "drafting LM head + top-k"),
              (KVCache, "commit", "cache compaction"), (KVCache, "select_pending", "cache compaction")]
    for name, part in (("greedy_tokens", "verification LM head + argmax"), ("draft_topk", "drafting LM head + top-k"),
                       ("causal_mask", "mask building")):
        if not hasattr(generate, name):
            raise RuntimeError(f"generate.py has no {name} any more: update benchmarks/profile.py's hook points")
        points.append((generate, name, part))
    for fn, part in ((tree.draft_tree, "tree building"), (tree.draft_tree_sampled, "tree building"),
                     (tree.prune_tree, "tree building"), (tree.subtree, "tree building"),
                     (tree.tree_attention_mask, "mask building"), (tree.position_ids, "mask building")):
        points += [(module, name, part) for module in (tree, generate) for name, value in vars(module).items()
                   if value is fn]
    return points


@contextmanager
def patched(replacements: list[tuple[object, str, Callable]]):
    """Set each owner.attribute to its replacement for the duration; put the originals back after, also on error."""
    saved = [(owner, name, vars(owner).get(name, MISSING)) for owner, name, _ in replacements]
    try:
        for owner, name, new in replacements:
            setattr(owner, name, new)
        yield
    finally:
        for owner, name, old in reversed(saved):
            if old is MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)


def time_call(model: GPT, decode: Callable[[], GenerationResult], clock: Clock, hooks: bool) -> dict:
    """Run `decode` until its call TIMED_CALL is done, with the marker and, when `hooks`, the part hooks. Returns the
    call's time (s), its parts (the remainder as "Python bookkeeping") and how many hooked functions it called."""
    timer = PartTimer(clock)
    points = [(generate, "commit_tokens", timer.marker(generate.commit_tokens))]
    if hooks:
        points += [(owner, name, timer.hook(part, getattr(owner, name))) for owner, name, part in hook_points(model)]
    try:
        with patched(points):
            decode()
    except CallTimed:
        total = timer.end - timer.start
        parts = dict(timer.parts, **{"Python bookkeeping": total - sum(timer.parts.values())})
        return dict(total=total, parts=parts, hooked_calls=timer.hooked_calls)
    raise RuntimeError(f"the decode ended before its call {TIMED_CALL}: profile a longer output")


def hook_cost(clock: Clock, n: int = 1000) -> float:
    """Seconds that one timing hook adds to a call, measured on a no-op: n hooked calls against n plain ones."""
    timer, noop = PartTimer(clock), lambda: None
    timer.start = clock.now()  # recording, as during the timed call
    hooked = timer.hook("no-op", noop)
    ms = mean_ms(dict(hooked=lambda: [hooked() for _ in range(n)], plain=lambda: [noop() for _ in range(n)]), 20,
                 clock)
    return (ms["hooked"] - ms["plain"]) / 1000 / n


def bare_forward(model: GPT, seq: list[int], cache_len: int, step: StepTrace | None, stream_pass: str,
                 pruning: bool) -> Callable[[], None]:
    """The arithmetic of the timed call without its bookkeeping, on a cache of its committed entries seq[:cache_len]:
    for an SS call (`step`, its trace) the drafted rows through embed and the lower blocks (and the early-exit head
    when pruning), the kept rows through the MSA blocks (with γ streams each, or the γ stream rows of the accepted
    node after), the LM head on the kept rows and on the γ stream rows; for an AR step (`step` None) the row of
    seq[cache_len]. The masks are given."""
    p, G, L = next(model.parameters()), model.config.n_streams, cache_len
    device = p.device
    cache = KVCache(model.config, 1, L + (len(step.drafted) if step else 1), device, p.dtype)
    with torch.inference_mode():
        model.forward_nodes(torch.tensor([seq[:L]], device=device), torch.arange(L, device=device),
                            causal_mask(L, device), cache, n_streams=0)
        cache.commit()
    if step is None:
        idx, pos = torch.tensor([seq[L:L + 1]], device=device), torch.tensor([L], device=device)
        mask = torch.ones(1, L + 1, dtype=torch.bool, device=device)
        return lambda: model.forward_nodes(idx, pos, mask, cache, n_streams=0)
    drafted_mask = tree.tree_attention_mask(step.drafted, L)
    survivors = torch.tensor(step.kept, device=device) if len(step.kept) < len(step.drafted) else None
    last = step.path[-1]

    def forward():
        h = model.lower(model.embed(step.drafted.tokens[None], step.positions), drafted_mask, cache)
        if pruning:
            model.early_exit_logits(h[0])
        if survivors is not None:
            h = h[:, survivors]
        main, streams = model.upper(h, step.mask, cache, n_streams=G if stream_pass == "tree" else 0)
        model.lm_head(main[0])
        if stream_pass == "accepted":
            cache.commit()  # no compaction (bookkeeping): the kept rows' entries just count as committed
            streams = model.streams_at(h[:, last], cache, G)[:, None]
        model.draft_logits(streams[0, last if stream_pass == "tree" else 0], trimmed=True)
        cache.length, cache.pending = L, 0  # back to the call's state
    return forward


def profile_settings(model: GPT, context: list[int], budget: int, prune_threshold: float) -> dict[str, dict]:
    """The profiled settings: an AR step; SS k = 1 and k = 3 with a 16-node cap and pruning, both stream passes.
    Each: `decode` (generate.py decoding the context, up to `budget` new tokens), `bare` (the bare forward of its
    timed call) and the timed call's sizes."""
    G, P = model.config.n_streams, len(context)
    ar = generate_autoregressive(model, context, budget)
    settings = {"AR step": dict(decode=lambda: generate_autoregressive(model, context, budget),
                                bare=bare_forward(model, context + ar.tokens, P + TIMED_CALL - 1, None, "tree", False),
                                n_drafted=1, n_kept=1, accepted=1, cache_len=P + TIMED_CALL - 1)}
    for k, cap, prune in ((1, None, None), (3, 16, prune_threshold)):
        for stream_pass in PASSES:
            kw = dict(gamma=G, k=k, tree_cap=cap, prune_threshold=prune, stream_pass=stream_pass)
            traced = generate_speculative(model, context, budget, trace=True, **kw)
            if len(traced.trace) < TIMED_CALL:
                raise ValueError(f"the profile's context of {P} tokens leaves no room for {TIMED_CALL} decode calls "
                                 f"in block_size={model.config.block_size}: profile a shorter prompt")
            step = traced.trace[TIMED_CALL - 1]
            name = f"SS k={k}" + (f", cap {cap}, prune {prune}" if cap else "") + f", {stream_pass} pass"
            settings[name] = dict(
                decode=lambda kw=kw: generate_speculative(model, context, budget, **kw),
                bare=bare_forward(model, context + traced.tokens, step.cache_len, step, stream_pass,
                                  prune is not None and len(step.drafted) > 1),
                n_drafted=len(step.drafted), n_kept=len(step.tree), accepted=len(step.path), cache_len=step.cache_len)
    return settings


def profile_model(model: GPT, prompt: list[int], eos_id: int | None, max_new: int, device: str, reps: int,
                  prune_threshold: float) -> dict:
    """Median times (s) of the parts of one AR step and of one SS call (`profile_settings`), of the same call without
    the hooks, and of the bare forward of its rows. Every setting decodes one context, `prompt` decoded greedily to
    the middle of its output, and times its second decode call; the settings take turns, so that load on the
    machine hits all alike; the first tenth of the `reps` + 10% repetitions is a warm-up."""
    ar = generate_autoregressive(model, prompt, max_new, eos_id=eos_id)
    context = prompt + ar.tokens[:len(ar.tokens) // 2]
    budget = min(model.config.block_size - len(context) + 1, 2 * model.config.n_streams + 3)  # two full-depth calls
    clock, warm = Clock(device), reps // 10
    settings = profile_settings(model, context, budget, prune_threshold)
    runs = {}
    for name, s in settings.items():
        runs[f"{name}: hooked"] = lambda _, d=s["decode"]: time_call(model, d, clock, hooks=True)
        runs[f"{name}: unhooked"] = lambda _, d=s["decode"]: time_call(model, d, clock, hooks=False)
        runs[f"{name}: bare"] = lambda _, bare=s["bare"]: bare()
    with torch.inference_mode():
        times, results = interleave(runs, [None], reps + warm, clock, warmup=0, desc="profile")
    columns = {}
    for name, s in settings.items():
        hooked = [rep[0] for rep in results[f"{name}: hooked"][warm:]]
        parts = [part for part in PROFILE_PARTS if part in hooked[0]["parts"]]
        columns[name] = dict(
            parts={part: statistics.median(h["parts"][part] for h in hooked) for part in parts},
            total=statistics.median(h["total"] for h in hooked), hooked_calls=hooked[0]["hooked_calls"],
            unhooked=statistics.median(rep[0]["total"] for rep in results[f"{name}: unhooked"][warm:]),
            bare=statistics.median(times[f"{name}: bare"][warm:]),
            **{key: s[key] for key in ("n_drafted", "n_kept", "accepted", "cache_len")})
    return dict(columns=columns, parts=PROFILE_PARTS, context_len=len(context), gamma=model.config.n_streams,
                device=str(device), hook_cost=hook_cost(clock))


def run_profile(args: argparse.Namespace):
    """`python bench.py profile` (--task's SS model, e.g. E2E) or `--toy`: where one decode call's time goes."""
    command = ("python bench.py " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("bench.py")
               else "python bench.py profile")
    if args.toy:
        model, data, prompts = load_toy(args)
        prompt, eos, max_new, name, title = prompts[0], data.eos_id, args.max_new_tokens, "toy", "toy model"
        draft_ids = draft_vocabulary(data.stories, args.draft_vocab, model.config.vocab_size)
    else:
        path = drafter_path(args, "ss", args.task)
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} not found — train it with `python train_task.py --task {args.task}` (or profile "
                             f"the toy model with --toy)")
        from data import EOS
        _, prompts, max_new, _ = task_setup(args, args.task, "test")
        model, prompt, eos = load_for_decoding(path, args.device), prompts[0], EOS
        name, title = args.task, f"{args.task} SS model"
        draft_ids = task_draft_vocabulary(args, args.task, args.draft_vocab)
    cast(model, args.dtype).trim_draft_vocab(draft_ids)
    profile = profile_model(model, prompt, eos, max_new, args.device, args.profile_calls, args.prune_threshold)
    profile.update(machine=machine_description(args.device), settings=settings_line(model, args.dtype, draft_ids))
    path = os.path.join(args.results_dir, name, f"profile{variant(args.dtype, args.draft_vocab)}.md")
    write_profile(profile, path, title, command)
