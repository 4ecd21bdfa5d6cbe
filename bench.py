"""Benchmarks: tokens per call, CR ratio, per-depth acceptance and wall-time speedup of Speculative Streaming
over the KV-cached greedy loop. Never a test: run it yourself and read the tables. One subcommand per benchmark;
`python bench.py SUBCOMMAND --help` lists its flags. Metrics, tables and plots are written by report.py.

    python bench.py speed          # a few (γ, k, pruning) settings on the toy model (train_toy.py first)
    python bench.py rows           # cost of a forward of n tree nodes relative to one node (the speedup's limit)
    python bench.py task --task e2e  # a real task (train_task.py first): quality of every model, and SS, Medusa,
                                     # two-model SD and prompt lookup side by side; writes results/<task>/
    python bench.py baselines      # the same side-by-side on the toy task; writes results/toy_baselines/
    python bench.py ablation --task e2e  # training recipes side by side (quality, CR, acceptance, speedup);
                                         # writes results/<task>/ablation.md
    python bench.py draftcost --task sql  # drafting cost at one node: Medusa heads vs SS streams + shared LM head
    python bench.py params         # parameter accounting: SS vs 4 Medusa heads, toy to 7B-sized configs
    python bench.py batch          # batched AR vs batched SS, tokens/s for batch 1..16 (toy; E2E if trained);
                                   # writes results/batch/
    python bench.py sampling       # T > 0: tokens/call and acceptance vs temperature (lossless recursive rule and
                                   # the two lossy ones), distribution test drawn; writes results/sampling/
    python bench.py profile --toy  # one AR step and one SS call timed part by part, against a bare forward of the
                                   # same rows; writes results/toy/profile.md (without --toy: --task's SS model)
    python bench.py toy            # the γ study: acceptance vs γ, speedup and CR vs γ per k, speedup vs tree
                                   # size with and without pruning; writes results/toy/ (JSON, Markdown, PNGs)

Method: one process, fixed thread count, batch 1, greedy. For every setting, each prompt is decoded by the
autoregressive loop and by the speculative loop back to back (interleaved), after a warm-up; this repeats
`--repeats` times and the speedup is median(total AR time) / median(total SS time). Every speculative output
is checked to equal the autoregressive one. Each setting is timed with both stream passes of generate.py:
"tree" (the paper's single pass: γ streams on every tree node) and "accepted" (verify first, then the
streams of the accepted node alone); their drafts, outputs, CR and acceptance are identical.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import torch
from tqdm import tqdm

from benchmarks.baselines import generate_prompt_lookup, generate_two_model
from benchmarks.params import extra_parameters, parameter_counts, ss_extra_parameters
from benchmarks.report import (fmt, models_markdown, plot_sampling, plot_toy, print_rows, quality, realisation,
                               speedups, write_ablation, write_batch, write_comparison, write_params,
                               write_toy_markdown)
from checkpoint import load_model
from generate import GenerationResult, generate_autoregressive, generate_speculative, greedy_tokens
from model import GPT, KVCache
from tree import ACCEPTANCE_RULES


METHODS = ("ss", "medusa", "two-model", "lookup")  # `task`: the decoders compared with the AR baseline
PASSES = ("tree", "accepted")  # the paper's single pass, and streams of the accepted node only (generate.py)


Decoder = Callable[[list[int]], GenerationResult]


def compare(decoders: dict[str, tuple[Decoder, str | None]], prompts: list[list[int]], repeats: int) -> dict:
    """Every decoder on every prompt, back to back per prompt (interleaved), after a warm-up on two prompts;
    `repeats` times. decoders[name] = (run, baseline): a decoder with a baseline (an autoregressive run of its
    target) must reproduce the baseline's output (counted in `outputs_differing`: in float32 a batched tree
    forward can flip a near-tie that float64 never flips), and its speedup is median(baseline time) / median(own
    time); CR = baseline forward calls / own forward (target) calls. A baseline comes before the decoders that
    use it in `decoders`. Returns per decoder its statistics."""
    for prompt in prompts[:2]:
        for run, _ in decoders.values():
            run(prompt)
    times = {name: [] for name in decoders}
    first = {name: [] for name in decoders}  # results of the first repetition: counts are deterministic
    mismatches = dict.fromkeys(decoders, 0)
    for rep in range(repeats):
        total = dict.fromkeys(decoders, 0.0)
        for prompt in prompts:
            for name, (run, baseline) in decoders.items():
                r = run(prompt)
                total[name] += r.wall_time
                if rep > 0:
                    continue
                first[name].append(r)
                if baseline is not None and r.tokens != first[baseline][-1].tokens:  # float32 near-tie only
                    mismatches[name] += 1
                    print(f"warning: {name} differs from {baseline} on prompt {prompt[:8]}...: float32 rounding "
                          "(batched vs one-row matmuls) flipped a near-tie")
        for name in decoders:
            times[name].append(total[name])
    mean = lambda xs, empty=1.0: sum(xs) / len(xs) if xs else empty
    out = {}
    for name, (_, baseline) in decoders.items():
        rs, t = first[name], statistics.median(times[name])
        calls, tokens = sum(r.forward_calls for r in rs), sum(len(r.tokens) for r in rs)
        attempted = [sum(col) for col in zip(*(r.depth_attempted for r in rs))]
        accepted = [sum(col) for col in zip(*(r.depth_accepted for r in rs))]
        out[name] = dict(
            time=t, forward_calls=calls, draft_calls=sum(r.draft_calls for r in rs), tokens=tokens,
            outputs_differing=mismatches[name], ms_per_token=1000 * t / max(tokens, 1),
            tokens_per_call=mean([n for r in rs for n in r.accepted_lengths]),
            acceptance=[a / n if n else None for a, n in zip(accepted, attempted)],
            tree_size=mean([n for r in rs for n in r.tree_sizes]),
            tree_size_after_pruning=mean([n for r in rs for n in r.pruned_tree_sizes]),
            speedup=None if baseline is None else statistics.median(times[baseline]) / t,
            cr_ratio=None if baseline is None else sum(r.forward_calls for r in first[baseline]) / calls)
    return out


def measure(model: GPT, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None, repeats: int,
            **ss_kwargs) -> dict:
    """AR vs SS (both stream passes) on the same prompts, interleaved per prompt (`compare`). Returns the speedup
    of each pass, CR, tokens per call, per-depth acceptance and tree sizes (the drafts are the same for both
    passes). A float32 output that differs from greedy aborts (the toy benchmarks assert exactness)."""
    decoders = {"ar": (lambda p: generate_autoregressive(model, p, max_new_tokens, eos_id), None)}
    for stream_pass in PASSES:
        decoders[stream_pass] = (lambda p, sp=stream_pass: generate_speculative(
            model, p, max_new_tokens, eos_id=eos_id, stream_pass=sp, **ss_kwargs), "ar")
    r = compare(decoders, prompts, repeats)
    if any(r[name]["outputs_differing"] for name in PASSES):
        raise AssertionError(f"speculative output differs from greedy: {ss_kwargs}")
    tree, accepted, ar = r["tree"], r["accepted"], r["ar"]
    return dict(
        speedup=tree["speedup"], speedup_accepted=accepted["speedup"], cr_ratio=tree["cr_ratio"],
        tokens_per_call=tree["tokens_per_call"], acceptance=tree["acceptance"], tree_size=tree["tree_size"],
        tree_size_after_pruning=tree["tree_size_after_pruning"],
        ar_ms_per_token=1000 * ar["time"] / ar["forward_calls"],
        ss_ms_per_call=1000 * tree["time"] / tree["forward_calls"],
        ss_ms_per_call_accepted=1000 * accepted["time"] / accepted["forward_calls"],
        times={name: r[name]["time"] for name in decoders},
    )


def toy_model(args) -> GPT:
    """The toy checkpoint of --toy-dir and --toy-gamma (train_toy.py writes it), LoRA merged."""
    path = os.path.join(args.toy_dir, f"ss_gamma{args.toy_gamma}_pruned.pt")
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: run `python train_toy.py --out-dir {args.toy_dir}` first (or make demo)")
    return load_for_decoding(path, args.device)


def load_toy(args):
    """The toy model, its stories (--n-stories, --seed as given to train_toy.py) and --prompts held-out prompts."""
    from train_toy import ToyData
    model = toy_model(args)
    data = ToyData(args.n_stories, args.seed)
    return model, data, data.prompts(args.prompts)


def run_speed(args):
    """A few (γ, k, tree cap, pruning) settings on the toy model: tokens per call, CR, wall-time speedup of both
    stream passes over the KV-cached greedy loop, tree sizes."""
    model, data, prompts = load_toy(args)
    settings = [dict(k=1), dict(k=2, tree_cap=8), dict(k=2, tree_cap=16), dict(k=2, tree_cap=16, prune_threshold=0.05),
                dict(k=3, tree_cap=24, prune_threshold=0.05)]
    print(f"toy model ({args.toy_dir}), {len(prompts)} prompts, max {args.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print("speedup: the paper's single pass (streams on every node) / streams of the accepted node only")
    print(f"{'γ':>2} {'k':>2} {'cap':>4} {'prune':>6} | {'tok/call':>8} {'CR':>5} {'speedup':>13} | tree (pruned)")
    for gamma in sorted({1, 2, 4, model.config.n_streams}):
        for s in settings:
            r = measure(model, prompts, args.max_new_tokens, data.eos_id, args.repeats, gamma=gamma, **s)
            print(f"{gamma:>2} {s['k']:>2} {s.get('tree_cap') or '-':>4} {s.get('prune_threshold') or '-':>6} | "
                  f"{r['tokens_per_call']:8.2f} {r['cr_ratio']:5.2f} {speedups(r):>13} | "
                  f"{r['tree_size']:.1f} ({r['tree_size_after_pruning']:.1f})")


def separately_trained(args, gamma: int) -> GPT:
    """The toy model fine-tuned with exactly `gamma` streams (same base, same budget); trained if missing."""
    path = os.path.join(args.toy_dir, f"ss_gamma{gamma}_pruned.pt")
    if not os.path.exists(path):
        from train_toy import parser, train_pipeline
        print(f"training a toy model with γ={gamma} streams (base reused from {args.toy_dir})")
        train_pipeline(parser().parse_args(["--out-dir", args.toy_dir, "--gamma", str(gamma),
                                            "--seed", str(args.seed), "--n-stories", str(args.n_stories),
                                            "--device", args.device]))
    return load_for_decoding(path, args.device)


def run_toy(args):
    """The γ study on the toy task: writes results/toy/{results.json, results.md, *.png}."""
    model, data, prompts = load_toy(args)
    G, cap = model.config.n_streams, args.tree_cap
    run = lambda m, **kw: measure(m, prompts, args.max_new_tokens, data.eos_id, args.repeats, **kw)
    results = dict(setup=dict(prompts=len(prompts), max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                              threads=torch.get_num_threads(), tree_cap=cap, model_gamma=G,
                              config=vars(model.config)),
                   grid=[], separate=[], tree_size=[])
    print(f"(1) one model trained with γ={G} streams, used at γ = 1..{G}, k = 1..4 (trees capped at {cap} nodes)")
    for gamma in range(1, G + 1):
        for k in range(1, 5):
            r = run(model, gamma=gamma, k=k, tree_cap=cap)
            results["grid"].append(dict(gamma=gamma, k=k, **r))
            print(f"  γ={gamma} k={k}: tokens/call {r['tokens_per_call']:.2f}  CR {r['cr_ratio']:.2f}  "
                  f"speedup {speedups(r)}  acceptance " + " ".join(fmt(a) for a in r["acceptance"]))
    print("(2) models trained separately with exactly γ streams, k = 1")
    for gamma in args.separate:
        r = run(model if gamma == G else separately_trained(args, gamma), gamma=gamma, k=1)
        results["separate"].append(dict(gamma=gamma, k=1, **r))
        print(f"  γ={gamma}: tokens/call {r['tokens_per_call']:.2f}  CR {r['cr_ratio']:.2f}  speedup {speedups(r)}")
    print(f"(3) tree size: γ={G}, k=3, capped trees, pruning off / threshold {args.prune_threshold}")
    for tree_cap in (2, 4, 8, 16, 32, 64, 128):
        for prune in (None, args.prune_threshold):
            r = run(model, gamma=G, k=3, tree_cap=tree_cap, prune_threshold=prune)
            results["tree_size"].append(dict(tree_cap=tree_cap, prune_threshold=prune, **r))
            print(f"  cap {tree_cap:>3} prune {prune or '-'}: nodes {r['tree_size']:.1f} -> {r['tree_size_after_pruning']:.1f}"
                  f"  CR {r['cr_ratio']:.2f}  speedup {speedups(r)}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_toy_markdown(results, os.path.join(args.out, "results.md"))
    plot_toy(results, args.out)
    print("\nSummary (k = 1; speedup = tree pass / accepted-node pass; tokens per call count the root token):")
    print(f"{'γ':>3} {'tokens/call':>11} {'CR':>5} {'speedup':>15}")
    for r in (r for r in results["grid"] if r["k"] == 1):
        print(f"{r['gamma']:>3} {r['tokens_per_call']:>11.2f} {r['cr_ratio']:>5.2f} {speedups(r):>15}")
    best = max(results["grid"] + results["tree_size"], key=lambda r: max(r["speedup"], r["speedup_accepted"]))
    print(f"fastest setting: {dict((k, best[k]) for k in ('gamma', 'k', 'tree_cap', 'prune_threshold') if k in best)}"
          f" at {speedups(best)}, CR {best['cr_ratio']:.2f}")
    print(f"wrote {args.out}/results.json, results.md and plots")


def run_rows(args):
    """Cost of one forward over n tree nodes (a chain) on top of a 40-token cache, relative to one node: the
    wall-time speedup is at most CR divided by this ratio (plus the streams' extra rows)."""
    import tree as tree_ops
    model = toy_model(args)
    cache_len, reps = 40, 200
    print(f"toy model, {torch.get_num_threads()} thread(s): one forward of n nodes over a {cache_len}-token cache "
          f"(main stream only / with γ={model.config.n_streams} streams on every node)")
    base = None
    with torch.inference_mode():
        for n in (1, 2, 4, 8, 16, 32, 64):
            t = tree_ops.draft_tree(0, torch.zeros(n - 1, 1, dtype=torch.long), torch.ones(n - 1, 1))  # a chain
            mask, pos = tree_ops.tree_attention_mask(t, cache_len), tree_ops.position_ids(t, cache_len)
            times = []
            for n_streams in (0, model.config.n_streams):
                cache = KVCache(model.config, 1, cache_len + n, device=args.device)
                cache.length = cache_len
                step = lambda: model.upper(model.lower(model.embed(t.tokens[None], pos), mask, cache), mask, cache,
                                           n_streams=n_streams)
                for _ in range(20):
                    step()
                start = time.perf_counter()
                for _ in range(reps):
                    step()
                times.append((time.perf_counter() - start) / reps * 1000)
            base = base or times[0]
            print(f"  n={n:>3}: {times[0]:.3f} ms ({times[0] / base:.2f}x one node) | with streams {times[1]:.3f} ms "
                  f"({times[1] / base:.2f}x)")


# ---------------------------------------------------------------------------------------------------------
# Profile of one decode call (issue 12): where the time of an AR step and of an SS call goes
# ---------------------------------------------------------------------------------------------------------

class Laps:
    """Explicit timers: `lap(part)` adds the time since the previous lap to `part` (synchronising a GPU first)."""

    def __init__(self, device: str):
        self.sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
        self.parts: dict[str, float] = {}

    def start(self):
        self.sync()
        self.t = self.t0 = time.perf_counter()

    def lap(self, part: str):
        self.sync()
        now = time.perf_counter()
        self.parts[part] = self.parts.get(part, 0.0) + now - self.t
        self.t = now

    def total(self) -> float:
        return self.t - self.t0


def profiled_ar_step(model: GPT, cache: KVCache, token: int, result: GenerationResult, laps: Laps) -> int:
    """One step of generate_autoregressive's loop, with a timer around each part."""
    from generate import commit_tokens
    device = cache.k[0].device
    laps.start()
    idx = torch.tensor([[token]], device=device)
    laps.lap("Python bookkeeping")
    mask = torch.ones(1, 1, dtype=torch.bool, device=device).expand(1, cache.length + 1)
    pos = torch.tensor([cache.length], device=device)
    laps.lap("mask building")
    x = model.embed(idx, pos)
    laps.lap("embed")
    h = model.lower(x, mask, cache)
    laps.lap("lower blocks")
    main, _ = model.upper(h, mask, cache, n_streams=0)
    laps.lap("MSA blocks, main rows only")
    token = int(greedy_tokens(model.lm_head(main)[0, -1]))
    laps.lap("verification LM head + argmax")
    cache.commit()
    laps.lap("cache compaction")
    commit_tokens(result, [token], 10 ** 9, None)
    laps.lap("Python bookkeeping")
    return token


def profiled_ss_call(model: GPT, cache: KVCache, root: int, main: torch.Tensor, streams: torch.Tensor, k: int,
                     tree_cap: int | None, prune_threshold: float | None, stream_pass: str, result: GenerationResult,
                     laps: Laps) -> dict:
    """One iteration of generate_speculative's greedy loop (draft, tree forward, prune, verify, commit, next
    streams), in its order, with a timer around each part. Returns what the bare forward of the same rows needs."""
    import tree as tree_ops
    from generate import commit_tokens, draft_topk
    from torch.nn import functional as F
    gamma = streams.size(0)
    laps.start()
    topk = draft_topk(model, main, streams, gamma, k)
    laps.lap("drafting LM head + top-k")
    drafted = tree_ops.draft_tree(root, *topk, cap=tree_cap)
    laps.lap("tree building")
    tree, L = drafted, cache.length
    mask, pos = tree_ops.tree_attention_mask(tree, L), tree_ops.position_ids(tree, L)
    laps.lap("mask building")
    x = model.embed(tree.tokens[None], pos)
    laps.lap("embed")
    h = model.lower(x, mask, cache)
    laps.lap("lower blocks")
    bare = dict(tokens=drafted.tokens[None], pos=pos, mask=mask, survivors=None, kept_mask=mask)
    if prune_threshold is not None and len(tree) > 1:
        exit_probs = F.softmax(model.early_exit_logits(h[0]).float(), dim=-1)
        laps.lap("pruning head")
        survivors = tree_ops.prune_tree(tree, exit_probs, prune_threshold)
        laps.lap("tree building")
        if len(survivors) < len(tree):
            cache.select_pending(survivors, range(model.config.first_msa_layer))
            laps.lap("cache compaction")
            tree, h = tree_ops.subtree(tree, survivors), h[:, survivors]
            laps.lap("tree building")
            mask = tree_ops.tree_attention_mask(tree, L)
            laps.lap("mask building")
            bare.update(survivors=survivors, kept_mask=mask)
    main_rows, tree_streams = model.upper(h, mask, cache, n_streams=gamma if stream_pass == "tree" else 0)
    laps.lap("MSA blocks, tree rows + γ streams per node" if stream_pass == "tree" else "MSA blocks, main rows only")
    main_argmax = greedy_tokens(model.lm_head(main_rows[0])).tolist()
    laps.lap("verification LM head + argmax")
    path = tree_ops.verify_greedy(tree, main_argmax)
    new_root = main_argmax[path[-1]]
    laps.lap("Python bookkeeping")
    cache.commit(path)
    laps.lap("cache compaction")
    accepted_depth = len(path) - 1
    for j in range(1, int(drafted.depths.max()) + 1):
        result.depth_attempted[j - 1] += accepted_depth >= j - 1
        result.depth_accepted[j - 1] += accepted_depth >= j
    result.tree_sizes.append(len(drafted))
    result.pruned_tree_sizes.append(len(tree))
    # the next call would draft from these two; they are computed (and timed) here as in the loop, then dropped:
    # every profiled call restarts from the same state
    main_state = main_rows[0, path[-1]]
    laps.lap("Python bookkeeping")
    if stream_pass == "tree":
        stream_states = tree_streams[0, path[-1]]
    else:
        stream_states = model.streams_at(h[:, path[-1]], cache, gamma)[0]
        laps.lap("MSA blocks, γ stream rows of the accepted node")
    commit_tokens(result, tree.tokens[path[1:]].tolist() + [new_root], 10 ** 9, None)
    laps.lap("Python bookkeeping")
    return dict(bare, last=path[-1], n_drafted=len(drafted), n_kept=len(tree), accepted=len(path))


def bare_rows(model: GPT, cache: KVCache, rows: dict, gamma: int, stream_pass: str, pruning: bool):
    """The arithmetic of one SS call without its bookkeeping: the drafted rows through embed + lower blocks (and the
    early-exit head when pruning), the kept rows through the MSA blocks (with γ streams each, or the γ stream
    rows of one node after), the LM head on the kept rows and on the γ stream rows. Masks are given."""
    h = model.lower(model.embed(rows["tokens"], rows["pos"]), rows["mask"], cache)
    if pruning:
        model.early_exit_logits(h[0])
    if rows["survivors"] is not None:
        h = h[:, rows["survivors"]]
    main, streams = model.upper(h, rows["kept_mask"], cache, n_streams=gamma if stream_pass == "tree" else 0)
    model.lm_head(main[0])
    if stream_pass == "accepted":
        cache.commit()  # no compaction (bookkeeping): the kept rows' entries just count as committed
        streams = model.streams_at(h[:, rows["last"]], cache, gamma)[:, None]
    model.lm_head(streams[0, rows["last"] if stream_pass == "tree" else 0])


def profile_model(model: GPT, prompt: list[int], eos_id: int | None, max_new: int, device: str, reps: int,
                  prune_threshold: float) -> dict:
    """Median times (s) of the parts of one AR step and of one SS call (k = 1; k = 3, cap 16, pruning; both stream
    passes), and of the bare forward of the same rows, from one state: `prompt` decoded to the middle of its
    greedy output. Every repetition restarts from that state (the cache is cut back to it)."""
    from generate import Drafter, SpecSettings, causal_mask, commit_tokens, record_call, speculative_step
    gamma = model.config.n_streams
    ar = generate_autoregressive(model, prompt, max_new, eos_id=eos_id)
    context = prompt + ar.tokens[:len(ar.tokens) // 2]
    token = ar.tokens[len(ar.tokens) // 2]
    P, full = len(context), sum(3 ** d for d in range(gamma + 1))
    cache = KVCache(model.config, 1, P + min(full, 16) + 1, device=device)
    with torch.inference_mode():  # the state: the context prefilled, as generate_speculative's prefill does
        idx, mask = torch.tensor([context], device=device), causal_mask(P, device)
        h = model.lower(model.embed(idx, torch.arange(P, device=device)), mask, cache)
        main, streams = model.upper(h, mask, cache, torch.tensor([P - 1], device=device), gamma)
        cache.commit()
        state = (int(model.lm_head(main[0, -1]).argmax()), main[0, -1], streams[0, 0])

    def ar_step(laps: Laps, result: GenerationResult) -> dict:
        profiled_ar_step(model, cache, token, result, laps)
        return dict(n_drafted=1, n_kept=1, accepted=1)

    def ar_bare(info: dict):
        mask = torch.ones(1, P + 1, dtype=torch.bool, device=device)
        x = model.embed(torch.tensor([[token]], device=device), torch.tensor([P], device=device))
        model.lm_head(model.upper(model.lower(x, mask, cache), mask, cache, n_streams=0)[0])

    def ss_call(k: int, cap: int | None, prune: float | None, stream_pass: str):
        step = lambda laps, result: profiled_ss_call(model, cache, *state, k, cap, prune, stream_pass, result, laps)
        bare = lambda info: bare_rows(model, cache, info, gamma, stream_pass, prune is not None)
        settings = SpecSettings(gamma, k, cap, prune, stream_pass, False, 0.0, None, None, None, "recursive")

        def loop(result: GenerationResult):  # the body of generate_speculative's loop, as it runs there
            call = speculative_step(model, cache, Drafter(*state), gamma, settings)
            record_call(result, int(call.draft.tree.depths.max()), len(call.path) - 1, len(call.draft.tree),
                        len(call.fwd.tree))
            commit_tokens(result, call.tokens, 10 ** 9, None)
        return step, bare, loop

    def timed(fn) -> float:
        laps = Laps(device)
        laps.start()
        fn()
        laps.lap("all")
        cache.length, cache.pending = P, 0  # back to the state
        return laps.total()

    new_result = lambda: GenerationResult(depth_attempted=[0] * gamma, depth_accepted=[0] * gamma)
    settings = {"AR step": (ar_step, ar_bare, None)}
    for k, cap, prune in ((1, None, None), (3, 16, prune_threshold)):
        for stream_pass in PASSES:
            name = f"SS k={k}" + (f", cap {cap}, prune {prune}" if cap else "") + f", {stream_pass} pass"
            settings[name] = ss_call(k, cap, prune, stream_pass)
    parts, totals, bares, loops, info = ({name: [] for name in settings} for _ in range(5))
    with torch.inference_mode():
        for rep in tqdm(range(reps + reps // 10), desc="profile", leave=False):  # the first tenth is warm-up
            for name, (step, bare, loop) in settings.items():  # interleaved: load on the machine hits all alike
                step(Laps(device), new_result())  # untimed: a timed call follows a call like it, as in a decode loop
                cache.length, cache.pending = P, 0
                laps = Laps(device)
                info[name] = step(laps, new_result())
                cache.length, cache.pending = P, 0  # back to the state
                bare_time = timed(lambda: bare(info[name]))
                loop_time = None if loop is None else timed(lambda: loop(new_result()))
                if rep >= reps // 10:
                    parts[name].append(laps.parts)
                    totals[name].append(laps.total())
                    bares[name].append(bare_time)
                    loops[name].append(loop_time)
    columns = {}
    for name in settings:
        medians = {part: statistics.median(p[part] for p in parts[name]) for part in parts[name][0]}
        columns[name] = dict(parts=medians, total=statistics.median(totals[name]), bare=statistics.median(bares[name]),
                             loop=None if loops[name][0] is None else statistics.median(loops[name]),
                             **{key: info[name][key] for key in ("n_drafted", "n_kept", "accepted")})
    return dict(columns=columns, cache_len=P, gamma=gamma, device=str(device))


PROFILE_PARTS = ["embed", "lower blocks", "pruning head", "MSA blocks, main rows only",
                 "MSA blocks, tree rows + γ streams per node", "MSA blocks, γ stream rows of the accepted node",
                 "verification LM head + argmax", "drafting LM head + top-k", "tree building", "mask building",
                 "cache compaction", "Python bookkeeping"]


def write_profile(profile: dict, path: str, title: str, command: str):
    cols = profile["columns"]
    ar = cols["AR step"]["total"]
    lines = [f"# Profile of one decode call: {title}", "", f"    {command}", "",
             f"One state: a test prompt decoded greedily to the middle of its output (cache of {profile['cache_len']} "
             f"tokens), γ = {profile['gamma']}; each call repeated from that state, median per part over the calls "
             f"(so the parts need not add up to the median total exactly). {torch.get_num_threads()} thread(s), "
             f"device {profile['device']}. Times in ms (share of the call).", "",
             "| part | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for part in PROFILE_PARTS:
        if any(part in c["parts"] for c in cols.values()):
            lines.append(f"| {part} | " + " | ".join(
                f"{c['parts'][part] * 1e3:.3f} ({100 * c['parts'][part] / c['total']:.0f}%)" if part in c["parts"]
                else "-" for c in cols.values()) + " |")
    rows = [("**whole call**", lambda c: f"**{c['total'] * 1e3:.3f}**"),
            ("the same call as generate.py's loop runs it (speculative_step, record_call, commit_tokens)",
             lambda c: "-" if c["loop"] is None else f"{c['loop'] * 1e3:.3f}"),
            ("bare forward of the same rows", lambda c: f"{c['bare'] * 1e3:.3f}"),
            ("call / bare forward", lambda c: f"{c['total'] / c['bare']:.2f}x"),
            ("call / AR step", lambda c: f"{c['total'] / ar:.2f}x"),
            ("tree nodes drafted / after pruning", lambda c: f"{c['n_drafted']} / {c['n_kept']}"),
            ("tokens committed at this state (root included)", lambda c: f"{c['accepted']}")]
    lines += [f"| {name} | " + " | ".join(cell(c) for c in cols.values()) + " |" for name, cell in rows]
    lines += ["", "The bare forward runs the same rows through the same model functions with the masks given: the "
              "drafted rows through embed and the lower blocks (and the early-exit head when pruning), the kept rows "
              "through the MSA blocks (with γ streams on every node in the tree pass; the γ stream rows of the "
              "accepted node after verification in the accepted pass), the LM head on the kept rows and on the γ "
              "stream rows. call / bare - 1 is the share of bookkeeping that is not arithmetic. The row \"as generate.py's "
              "loop runs it\" times the real loop body whole, from the same state: the timed copy above is faithful "
              "when the two agree. Each timed call follows an untimed call of the same setting, as in a decode loop; "
              "the settings take turns, so that load on the machine hits all alike. profile_before.md next to this "
              "file holds the tables from before the speed work of issue 12 (each timed call then followed a call of "
              "another setting)."]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[6:]))
    print(f"wrote {path}")


def run_profile(args):
    """`python bench.py profile` (--task's SS model, e.g. E2E) or `--toy`: where one decode call's time goes."""
    import sys
    command = "python bench.py " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("bench.py") else "python bench.py profile"
    if args.toy:
        model, data, prompts = load_toy(args)
        prompt, eos, max_new, name, title = prompts[0], data.eos_id, args.max_new_tokens, "toy", "toy model"
    else:
        path = drafter_path(args, "ss", args.task)
        if not os.path.exists(path):
            raise SystemExit(f"{path} not found: train it with `python train_task.py --task {args.task}` (or profile "
                             f"the toy model with --toy)")
        _, prompts, max_new, _ = task_setup(args, args.task, "test")
        model, prompt, eos, name, title = load_for_decoding(path, args.device), prompts[0], 0, args.task, f"{args.task} SS model"
    profile = profile_model(model, prompt, eos, max_new, args.device, args.profile_calls, args.prune_threshold)
    write_profile(profile, os.path.join(args.results_dir, name, "profile.md"), title, command)


# ---------------------------------------------------------------------------------------------------------
# Side by side: Speculative Streaming, Medusa, two-model speculative decoding and prompt lookup (issue 7)
# ---------------------------------------------------------------------------------------------------------

# (k, tree cap) of the tree settings shared by SS and Medusa, each without and with pruning
TREE_SETTINGS = [(1, None), (2, 8), (3, 16), (4, 24)]


def side_by_side(models: dict[str, GPT], prompts: list[list[int]], max_new: int, eos: int | None, repeats: int,
                 prune_threshold: float, lookup: bool = True) -> list[dict]:
    """The decoders of every method on the same prompts, in one `compare` call. models: "target" (plain GPT:
    AR baseline, prompt lookup, two-model target), "ss", "medusa", "draft" (any may be missing)."""
    decoders, info = {}, {}

    def add(name, run, baseline, **meta):
        decoders[name], info[name] = (run, baseline), meta

    for key in ("target", "ss", "medusa"):
        if key in models:
            add(f"ar:{key}", lambda p, m=models[key]: generate_autoregressive(m, p, max_new, eos), None,
                method="autoregressive", model=key)
    for key in ("ss", "medusa"):
        if key not in models:
            continue
        passes = PASSES if key == "ss" else ("tree",)
        for k, cap in TREE_SETTINGS:
            for prune in (None, prune_threshold):
                for stream_pass in passes:
                    kw = dict(k=k, tree_cap=cap, prune_threshold=prune, stream_pass=stream_pass)
                    add(f"{key} k={k} cap={cap} prune={prune} {stream_pass}",
                        lambda p, m=models[key], kw=kw: generate_speculative(m, p, max_new, eos_id=eos, **kw),
                        f"ar:{key}", method=key, model=key, gamma=models[key].config.n_drafts, **kw)
    if "target" in models:
        if "draft" in models:
            for gamma in (2, 4):
                add(f"two-model γ={gamma}", lambda p, g=gamma: generate_two_model(models["target"], models["draft"], p,
                                                                                  max_new, g, eos),
                    "ar:target", method="two-model", model="target", gamma=gamma)
        for n_draft in (2, 4) if lookup else ():
            add(f"lookup n=3 d={n_draft}", lambda p, d=n_draft: generate_prompt_lookup(models["target"], p, max_new, 3,
                                                                                     d, eos),
                "ar:target", method="prompt lookup", model="target", num_draft=n_draft)
    results = compare(decoders, prompts, repeats)
    return [dict(name=name, **info[name], **r) for name, r in results.items()]


def load_for_decoding(path: str, device) -> GPT:
    """A checkpoint's model on `device`, in eval mode, LoRA merged for inference."""
    model = load_model(path).to(device).eval()
    model.merge_lora()  # inference: fold LoRA into the weights (the same for every decoder of this model)
    return model


def run_baselines(args):
    """Toy task: SS (γ=4) vs Medusa (4 heads, same base and budget) vs two-model SD vs prompt lookup."""
    from train_toy import ToyData
    names = dict(target="base.pt", ss="ss_gamma4_pruned.pt", medusa="medusa_gamma4_pruned.pt", draft="draft.pt")
    for key, name in names.items():
        if not os.path.exists(os.path.join(args.toy_dir, name)):
            flag = {"ss": " --gamma 4", "medusa": " --method medusa --gamma 4", "draft": " --method draft"}.get(key, "")
            raise SystemExit(f"{args.toy_dir}/{name} not found: run `python train_toy.py{flag}` first")
    models = {key: load_for_decoding(os.path.join(args.toy_dir, name), args.device) for key, name in names.items()}
    data = ToyData(args.n_stories, args.seed)
    prompts = data.prompts(args.prompts)
    print(f"toy: {len(prompts)} prompts, up to {args.max_new_tokens} new tokens, {torch.get_num_threads()} thread(s)")
    rows = side_by_side(models, prompts, args.max_new_tokens, data.eos_id, args.repeats, args.prune_threshold)
    print_rows(rows)
    header = ["# Toy task: Speculative Streaming vs Medusa vs two-model SD vs prompt lookup\n",
              f"Command: `python bench.py baselines --prompts {args.prompts} --repeats {args.repeats}` (after "
              "`python train_toy.py --gamma 4`, `--method medusa --gamma 4`, `--method draft`): held-out prompts, up to "
              f"{args.max_new_tokens} new tokens, batch 1, greedy, {torch.get_num_threads()} thread(s), CPU unless "
              "stated, one process, every decoder run back to back on each prompt, median of "
              f"{args.repeats}. SS and Medusa: γ = 4 on the same base, same steps and learning rate; two-model SD and "
              "prompt lookup verify with the pretrained base. Tokens per call count the root/bonus token.\n"]
    write_comparison(os.path.join(args.results_dir, "toy_baselines"), "toy", header, rows, extra_parameters(models),
                     None, dict(setup=vars(args)))


def run_task(args):
    """A real task: quality of every model, and every decoder side by side on a fixed test subset."""
    from data import EOS
    task, folder, eos = args.task, args.task_dir, EOS
    files = dict(target=os.path.join(folder, f"{task}_ntp.pt"), ss=drafter_path(args, "ss", task),
                 medusa=drafter_path(args, "medusa", task), draft=os.path.join(folder, f"{task}_draft.pt"))
    files = {key: path for key, path in files.items()
             if key == "target" or key in args.methods or (key == "draft" and "two-model" in args.methods)}
    for key, path in files.items():
        if not os.path.exists(path):
            raise SystemExit(f"{path} not found: run `python train_task.py --task {task} --out-dir {folder} --mode "
                             f"{args.mode} --stream-targets {args.stream_targets}` first")
    models = {key: load_for_decoding(path, args.device) for key, path in files.items()}
    examples, prompts, max_new, text = task_setup(args, args.task, "test")
    examples, prompts = (x[:max(args.n_eval, args.prompts)] for x in (examples, prompts))  # fixed: the first ones
    print(f"{task}: {args.n_eval} test examples for quality, {args.prompts} for speed, up to {max_new} new tokens, "
          f"{torch.get_num_threads()} thread(s), {args.device}")
    outputs, quality_of = {}, {}
    for key in ("target", "ss", "medusa") if args.n_eval > 0 else ():
        if key in models:
            outputs[key] = [text(generate_autoregressive(models[key], p, max_new, eos).tokens, ex)
                            for p, ex in tqdm(list(zip(prompts[:args.n_eval], examples)), desc=f"quality: {key}",
                                              leave=False)]
            quality_of[key] = quality(task, outputs[key], [ex.references for ex in examples[:args.n_eval]])
            if task == "e2e":  # % of outputs that name the MR's restaurant / landmark (seen in training or not)
                quality_of[key].update(realisation(outputs[key], examples, training_values(args)))
    print("quality:", {k: {m: fmt(v) for m, v in q.items()} for k, q in quality_of.items()})
    rows = side_by_side(models, prompts[:args.prompts], max_new, eos, args.repeats, args.prune_threshold,
                        lookup="lookup" in args.methods)
    print_rows(rows)
    header = [f"# {task}: Speculative Streaming vs the baselines\n",
              f"Command: `python bench.py task --task {task} --n-eval {args.n_eval} --prompts {args.prompts} --repeats "
              f"{args.repeats}" + (f" --methods {' '.join(args.methods)}" if set(args.methods) != set(METHODS) else "")
              + f"` (after `make train-tasks`): the first {args.n_eval} test examples for quality, the first "
              f"{min(args.prompts, len(prompts))} for speed; batch 1, greedy, {torch.get_num_threads()} thread(s), "
              f"{args.device}, one process, every decoder run back to back on each prompt, median of {args.repeats}. "
              "Target of two-model SD and prompt lookup: the next-token LoRA model. Tokens per call count the "
              "root/bonus token.\n"]
    if quality_of:
        header += models_markdown(quality_of, outputs, examples[:min(3, args.n_eval)])
    write_comparison(os.path.join(args.results_dir, task), task, header, rows, extra_parameters(models),
                     quality_of or None, dict(task=task, n_eval=args.n_eval, n_speed_prompts=args.prompts, max_new_tokens=max_new,
                          config=vars(models["target"].config)))


def drafter_path(args, method: str, task: str) -> str:
    """The checkpoint of `method` ("ss", "medusa") for the recipe of --mode, --stream-targets, --tag (named as
    train_task.recipe_name names it)."""
    return os.path.join(args.task_dir, f"{task}_{method}_{args.mode}_{args.stream_targets}{args.tag}_pruned.pt")


def e2e_ss_model(args) -> tuple[GPT, list[list[int]]] | None:
    """The E2E SS model and the first --prompts test prompts, or None (said) when it is not on this machine."""
    path = drafter_path(args, "ss", "e2e")
    if not os.path.exists(path):
        print(f"E2E skipped: {path} not found (train it with `python train_task.py --task e2e`, or run this "
              "benchmark where the checkpoint is)")
        return None
    _, prompts, _, _ = task_setup(args, "e2e", "test")
    return load_for_decoding(path, args.device), prompts[:args.prompts]


def task_setup(args, task: str, split: str):
    """`task`'s vocabulary (from the next-token checkpoint in --task-dir), its `split` examples as the models see
    them, their prompts, the decoding budget and a decoder from ids to text (E2E: relexicalised)."""
    from data import EOS, MAX_NEW_TOKENS, CompactVocab, load_task, prompt_ids, relexicalise
    ntp = os.path.join(args.task_dir, f"{task}_ntp.pt")
    if not os.path.exists(ntp):
        raise SystemExit(f"{ntp} not found: run `python train_task.py --task {task} --out-dir {args.task_dir}` first")
    vocab = CompactVocab.from_dict(torch.load(ntp, weights_only=True)["vocabulary"])
    examples = load_task(task, split, args.data_dir, delexicalised=True)
    max_new = MAX_NEW_TOKENS[task]
    budget = load_model(ntp).config.block_size - max_new + 1
    prompts = [prompt_ids(vocab, ex, budget) for ex in examples]
    text = lambda ids, ex: relexicalise(vocab.decode([t for t in ids if t != EOS]), ex.slots)
    return examples, prompts, max_new, text


def training_values(args) -> dict[str, set[str]]:
    from data import load_task, mr_values
    values = [mr_values(ex.prompt) for ex in load_task("e2e", "train", args.data_dir)]
    return {slot: {v[slot] for v in values if slot in v} for slot in ("name", "near")}


def by_training_values(args, examples: list, prompts: list, seen: bool) -> tuple[list, list]:
    """E2E: the examples (and prompts) whose MR values all occur in the training MRs (seen=True: inputs like the
    training inputs), or those with at least one value that never does (seen=False; e.g. eatType[pub]: the
    training file has coffee shops only). Compared delexicalised, so the name and landmark never count."""
    from data import load_task, mr_values
    if args.task != "e2e":
        raise SystemExit("--mr-values applies to E2E (MRs with attribute values) only: drop it for other tasks")
    known = {kv for ex in load_task("e2e", "train", args.data_dir, True) for kv in mr_values(ex.prompt).items()}
    keep = [i for i, ex in enumerate(examples) if all(kv in known for kv in mr_values(ex.prompt).items()) == seen]
    return [examples[i] for i in keep], [prompts[i] for i in keep]


ABLATION_SETTINGS = [(1, None, "accepted"), (3, 16, "accepted"), (3, 16, "tree")]  # (k, tree cap, stream pass)


def run_ablation(args):
    """Training recipes side by side on one task: for each SS checkpoint <task>_<recipe>_pruned.pt (default: the
    2 x 2 of shared/frozen mode x data/self stream targets) its quality, E2E name realisation, outputs equal to the
    next-token model's, and decoding statistics (CR, tokens per call, per-depth acceptance, wall speedup)."""
    from data import EOS
    from generate import generate_autoregressive, generate_speculative
    examples, prompts, max_new, text = task_setup(args, args.task, args.split)
    if args.mr_values != "all":
        examples, prompts = by_training_values(args, examples, prompts, args.mr_values == "seen")
    n_eval = min(args.n_eval, len(examples))
    paths = dict(ntp=os.path.join(args.task_dir, f"{args.task}_ntp.pt"),
                 **{r: os.path.join(args.task_dir, f"{args.task}_{r}_pruned.pt") for r in args.recipes})
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        raise SystemExit(f"{missing[0]} not found: train it (`make ablation` trains the default recipes)")
    models = {name: load_for_decoding(path, args.device) for name, path in paths.items()}
    seen = training_values(args) if args.task == "e2e" else None
    print(f"{args.task} ({args.split}): {n_eval} examples for quality, {min(args.prompts, len(prompts))} for speed, "
          f"{torch.get_num_threads()} thread(s), {args.device}")
    rows, ntp_ids = {}, None
    for name, model in models.items():
        ids = [generate_autoregressive(model, p, max_new, EOS).tokens
               for p in tqdm(prompts[:n_eval], desc=f"quality: {name}", leave=False)]
        outputs = [text(t, ex) for t, ex in zip(ids, examples)]
        ntp_ids = ntp_ids or ids
        rows[name] = dict(quality=quality(args.task, outputs, [ex.references for ex in examples[:n_eval]]),
                          realisation=realisation(outputs, examples, seen) if seen else {},
                          same_as_ntp=sum(a == b for a, b in zip(ids, ntp_ids)), samples=outputs[:3])
    decoders = {f"ar:{name}": ((lambda p, m=model: generate_autoregressive(m, p, max_new, EOS)), None)
                for name, model in models.items()}
    for recipe in args.recipes:
        for k, cap, stream_pass in ABLATION_SETTINGS:
            decoders[f"{recipe} k={k} cap={cap} {stream_pass}"] = (
                lambda p, m=models[recipe], kw=dict(k=k, tree_cap=cap, stream_pass=stream_pass):
                generate_speculative(m, p, max_new, eos_id=EOS, **kw), f"ar:{recipe}")
    speed = compare(decoders, prompts[:args.prompts], args.repeats)
    for recipe in args.recipes:
        rows[recipe]["settings"] = {name.split(" ", 1)[1]: r for name, r in speed.items()
                                    if name.startswith(recipe + " ")}
    write_ablation(args, rows, n_eval, min(args.prompts, len(prompts)))


def run_draft_cost(args):
    """Cost of drafting at one node on a task's models: Medusa's heads vs SS's γ stream rows through the MSA
    blocks plus the shared LM head (after verification, as in stream_pass="accepted")."""
    folder, task = args.task_dir, args.task
    ss, medusa = (load_for_decoding(drafter_path(args, name, task), args.device) for name in ("ss", "medusa"))
    cache = KVCache(ss.config, 1, 200, device=args.device)
    cache.length = 150  # a 150-token context, as in the middle of a decode
    h = torch.randn(1, ss.config.n_embd, device=args.device)

    def ms(step, reps=200):
        for _ in range(20):
            step()
        start = time.perf_counter()
        for _ in range(reps):
            step()
        return (time.perf_counter() - start) / reps * 1000
    with torch.inference_mode():
        streams = ms(lambda: ss.streams_at(h, cache))
        head = ms(lambda: ss.lm_head(torch.randn(ss.config.n_streams, ss.config.n_embd, device=args.device)))
        heads = ms(lambda: medusa.medusa(h[0]))
    print(f"{task} models, {torch.get_num_threads()} thread(s), drafting at one node: Medusa heads {heads:.3f} ms; "
          f"SS {streams + head:.3f} ms = streams through the MSA blocks {streams:.3f} ms + shared LM head "
          f"({ss.config.n_streams} rows) {head:.3f} ms")


def run_params(args):
    """Parameter accounting: base, LoRA, stream embeddings, the frozen mode's stream adapter, pruning adapter, and 4
    Medusa heads on the same config. Every model is built (on PyTorch's "meta" device for the large ones: shapes
    without memory) and counted by benchmarks.params.parameter_counts, the one source of the formulas."""
    from model import GPTConfig
    configs = {  # (d, V, layers, heads, context): toy, our task models, GPT-2 124M and the paper's model sizes
        "toy (train_toy.py defaults)": (128, 81, 4, 4, 128),
        "task models (train_task.py defaults; V of the compact vocabulary)": (256, 9960, 4, 4, 512),
        "GPT-2 124M": (768, 50257, 12, 12, 1024),
        "OPT-1.3b-sized": (2048, 50272, 24, 32, 2048),
        "7B-sized (d, V of OpenLlama-7b; GPT-2 layout)": (4096, 32000, 32, 32, 2048),
    }
    counts = {}
    for name, (d, V, L, H, ctx) in configs.items():
        cfg = GPTConfig(vocab_size=V, block_size=ctx, n_layer=L, n_head=H, n_embd=d, n_streams=args.gamma_params,
                        n_msa_layers=2, lora_rank=32, prune_rank=8, stream_adapter_rank=args.stream_adapter_params)
        with torch.device("meta"):
            c = parameter_counts(GPT(cfg))
        counts[name] = dict(c, ss_shared=ss_extra_parameters(c, frozen=False), ss_frozen=ss_extra_parameters(c))
    write_params(counts, args.gamma_params, args.stream_adapter_params, os.path.join(args.results_dir, "params.md"))


# ---------------------------------------------------------------------------------------------------------
# Batch > 1: throughput of batched AR and batched SS (issue 16)
# ---------------------------------------------------------------------------------------------------------

BATCH_SS_SETTINGS = [dict(gamma=4, k=1), dict(gamma=4, k=2, tree_cap=8)]  # `batch`: SS trees, both stream passes


def batch_throughput(model: GPT, prompts: list[list[int]], max_new: int, eos: int | None, sizes: list[int],
                     repeats: int, device: str) -> list[dict]:
    """For each batch size B: the prompts in consecutive groups of B, each group decoded by batched AR and by
    batched SS (every setting, both stream passes) back to back, `repeats` times after a warm-up. tokens/s =
    new tokens / median total time. CR per row = AR calls / SS calls of each row (as at batch 1); CR of the
    batch = AR batched forwards / SS batched forwards, lower: a batch runs until its slowest row is done."""
    from batch import generate_autoregressive_batch, generate_speculative_batch
    decoders = {"ar": lambda group: generate_autoregressive_batch(model, group, max_new, eos)}
    for s in BATCH_SS_SETTINGS:
        for stream_pass in PASSES:
            name = f"ss γ={s['gamma']} k={s['k']}" + (f" cap {s['tree_cap']}" if "tree_cap" in s else "")
            decoders[f"{name} ({stream_pass})"] = lambda group, s=s, sp=stream_pass: generate_speculative_batch(
                model, group, max_new, eos_id=eos, stream_pass=sp, **s)
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    rows = []
    for B in tqdm(sizes, desc="batch sizes"):
        groups = [prompts[i:i + B] for i in range(0, len(prompts), B)]
        for run in decoders.values():
            run(groups[0])  # warm-up
        times, first = {name: [] for name in decoders}, {name: [] for name in decoders}
        for rep in range(repeats):
            total = dict.fromkeys(decoders, 0.0)
            for group in groups:
                for name, run in decoders.items():
                    sync()
                    start = time.perf_counter()
                    results = run(group)
                    sync()
                    total[name] += time.perf_counter() - start
                    if rep == 0:
                        first[name].append(results)
            for name in decoders:
                times[name].append(total[name])
        ar = [r for g in first["ar"] for r in g]
        ar_forwards = sum(max(r.forward_calls for r in g) for g in first["ar"])
        for name in decoders:
            rs, t = [r for g in first[name] for r in g], statistics.median(times[name])
            differing = sum(r.tokens != a.tokens for r, a in zip(rs, ar))
            if differing:
                print(f"warning: {name} at batch {B}: {differing} rows differ from AR (float32 near-ties: batched "
                      "and one-row matmuls round differently)")
            calls = [n for r in rs for n in r.accepted_lengths]
            rows.append(dict(
                batch=B, decoder=name, time=t, tokens=sum(len(r.tokens) for r in rs),
                tokens_per_s=sum(len(r.tokens) for r in rs) / t, speedup=statistics.median(times["ar"]) / t,
                cr_rows=sum(r.forward_calls for r in ar) / sum(r.forward_calls for r in rs),
                cr_batch=ar_forwards / sum(max(r.forward_calls for r in g) for g in first[name]),
                tokens_per_call=sum(calls) / len(calls), outputs_differing=differing))
    return rows


def run_batch(args):
    """Batched AR vs batched SS for batch sizes --batch-sizes: the toy model, and the E2E SS model when its
    checkpoint is on this machine (else skipped with a message)."""
    model, data, prompts = load_toy(args)
    models = {"toy": (model, prompts, args.max_new_tokens, data.eos_id)}
    e2e = e2e_ss_model(args)
    if e2e:
        from data import EOS, MAX_NEW_TOKENS
        models["e2e"] = (*e2e, MAX_NEW_TOKENS["e2e"], EOS)
    for name, (m, task_prompts, max_new, eos) in models.items():
        print(f"{name}: {len(task_prompts)} prompts, up to {max_new} new tokens, batch sizes {args.batch_sizes}, "
              f"{torch.get_num_threads()} thread(s), {args.device}, median of {args.repeats}")
        rows = batch_throughput(m, task_prompts, max_new, eos, args.batch_sizes, args.repeats, args.device)
        for r in rows:
            print(f"  B={r['batch']:>2} {r['decoder']:<30} {r['tokens_per_s']:8.0f} tokens/s  speedup "
                  f"{r['speedup']:.2f}x  CR batch {r['cr_batch']:.2f} / rows {r['cr_rows']:.2f}")
        header = (f"Command: `python bench.py batch --prompts {args.prompts} --repeats {args.repeats} --threads "
                  f"{args.threads} --device {args.device}`: {len(task_prompts)} prompts in consecutive groups of B, "
                  f"up to {max_new} new tokens, greedy, {args.device}, {torch.get_num_threads()} thread(s), one "
                  f"process, every decoder run back to back on each group, median of {args.repeats}. CR of the "
                  "batch = batched forwards of AR / of SS (a batch runs until its slowest row is done); CR per row "
                  "as at batch 1. Tokens per call count the root/bonus token.")
        write_batch(rows, os.path.join(args.results_dir, "batch"), f"{name}_{args.device.split(':')[0]}", header)


# ---------------------------------------------------------------------------------------------------------
# Sampling (T > 0): acceptance vs temperature, and the distribution test (issue 15)
# ---------------------------------------------------------------------------------------------------------

TEMPERATURES = (0.0, 0.5, 0.7, 1.0)
MAX_ENUMERATED_CELLS = 10 ** 7  # the distribution test enumerates V^3 cells (V^2 forwards): small vocabularies only


def distribution_test(samples: list[tuple[int, ...]], exact: torch.Tensor, alpha: float = 1e-3) -> dict:
    """Samples of m-token sequences against their exact distribution `exact` (V,)*m: chi-square p-value (cells
    with an expected count < 5 pooled into one; nan when that leaves fewer than 2 bins: too few samples),
    total-variation distance, and TV's sampling bound at level alpha (Jensen: E TV <= 1/2 sum sqrt(p(1-p)/n);
    McDiarmid: + sqrt(ln(1/alpha)/2n))."""
    from scipy import stats  # a test / bench dependency only
    n, p = len(samples), exact.flatten().double()
    flat = torch.tensor([sum(t * exact.size(0) ** (len(s) - 1 - i) for i, t in enumerate(s)) for s in samples])
    counts = torch.bincount(flat, minlength=p.numel()).double()
    expected, big = p * n, p * n >= 5
    observed, expected_pooled = torch.cat([counts[big], counts[~big].sum()[None]]), torch.cat([expected[big], expected[~big].sum()[None]])
    if expected_pooled[-1] == 0:  # nothing to pool
        observed, expected_pooled = observed[:-1], expected_pooled[:-1]
    chi2 = stats.chisquare(observed.numpy(), expected_pooled.numpy()) if len(observed) >= 2 else None
    tv = 0.5 * (counts / n - p).abs().sum().item()
    bound = 0.5 * (p * (1 - p) / n).sqrt().sum().item() + (torch.log(torch.tensor(1 / alpha)) / (2 * n)).sqrt().item()
    return dict(n=n, chi2=float("nan") if chi2 is None else float(chi2.statistic),
                p_value=float("nan") if chi2 is None else float(chi2.pvalue), tv=tv, tv_bound=bound,
                impossible=int(counts[p == 0].sum()), frequencies=counts / n)


def first_tokens_distribution(model: GPT, prompt: list[int], temperature: float, top_k=None, top_p=None) -> torch.Tensor:
    """The model's exact distribution of its first 3 sampled tokens after `prompt`, by enumeration: (V, V, V)."""
    from tree import sampling_probs
    V, P, device = model.config.vocab_size, len(prompt), next(model.parameters()).device
    x12 = torch.cartesian_prod(torch.arange(V), torch.arange(V)).to(device)  # (V*V, 2)
    idx = torch.cat([torch.tensor(prompt, device=device).expand(V * V, -1), x12], dim=1)
    with torch.inference_mode():
        logits = torch.cat([model(chunk).logits[:, P - 1:] for chunk in idx.split(512)])  # (V*V, 3, V)
    probs = sampling_probs(logits.cpu(), temperature, top_k, top_p)
    return probs[0, 0][:, None, None] * probs[::V, 1][:, :, None] * probs[:, 2].view(V, V, V)


def sampling_sweep(model: GPT, prompts: list[list[int]], max_new: int, eos: int | None, gamma: int, k: int,
                   tree_cap: int | None, seed: int, progress: bool = True, top_k: int | None = None,
                   top_p: float | None = None) -> list[dict]:
    """Tokens per call, CR and acceptance per depth for every temperature (and, at T > 0, every acceptance rule),
    top_k / top_p applied at T > 0. CR = calls of plain decoding of the same output (one per token) / calls of
    the method."""
    rows = []
    for T in TEMPERATURES:
        for rule in ACCEPTANCE_RULES if T > 0 else ACCEPTANCE_RULES[:1]:
            g = torch.Generator().manual_seed(seed)
            rs = [generate_speculative(model, p, max_new, gamma=gamma, k=k, tree_cap=tree_cap, eos_id=eos,
                                       temperature=T, top_k=top_k, top_p=top_p, generator=g, acceptance=rule)
                  for p in tqdm(prompts, desc=f"T={T} {rule}", leave=False, disable=not progress)]
            calls = [n for r in rs for n in r.accepted_lengths]
            attempted = [sum(r.depth_attempted[j] for r in rs) for j in range(gamma)]
            accepted = [sum(r.depth_accepted[j] for r in rs) for j in range(gamma)]
            rows.append(dict(temperature=T, acceptance=rule if T > 0 else "greedy", tokens_per_call=sum(calls) / len(calls),
                             cr_ratio=sum(len(r.tokens) for r in rs) / sum(r.forward_calls for r in rs),
                             depth_acceptance=[a / t if t else None for a, t in zip(accepted, attempted)]))
    return rows


def run_sampling(args):
    """Speculative sampling: tokens per call, CR and acceptance per depth vs temperature (greedy, then recursive
    rejection and the two lossy rules), and the distribution test of the first 3 tokens (toy, E2E if present)."""
    model, data, prompts = load_toy(args)
    models = {"toy": (model, prompts, data.eos_id, [data.eos_id])}
    e2e = e2e_ss_model(args)
    if e2e:
        from data import EOS
        models["e2e"] = (*e2e, EOS, e2e[1][0])
    out = os.path.join(args.results_dir, "sampling")
    os.makedirs(out, exist_ok=True)
    results = {}
    for name, (m, task_prompts, eos, test_prompt) in models.items():
        gamma = min(args.sampling_gamma, m.config.n_drafts)
        print(f"{name}: {len(task_prompts)} prompts, up to {args.max_new_tokens} new tokens, γ={gamma}, "
              f"k={args.sampling_k}, cap {args.sampling_cap}, top-k {args.top_k}, top-p {args.top_p}; tokens per call "
              "count the root/bonus token")
        rows = sampling_sweep(m, task_prompts, args.max_new_tokens, eos, gamma, args.sampling_k, args.sampling_cap,
                              args.seed, top_k=args.top_k, top_p=args.top_p)
        for r in rows:
            print(f"  T={r['temperature']:<4} {r['acceptance']:<15} tokens/call {r['tokens_per_call']:.2f}  CR "
                  f"{r['cr_ratio']:.2f}  acceptance " + " ".join(fmt(a) for a in r["depth_acceptance"]))
        results[name] = dict(gamma=gamma, k=args.sampling_k, tree_cap=args.sampling_cap, top_k=args.top_k,
                             top_p=args.top_p, prompts=len(task_prompts), max_new_tokens=args.max_new_tokens, sweep=rows)
        T, V = 1.0, m.config.vocab_size
        if V ** 3 > MAX_ENUMERATED_CELLS:
            print(f"  distribution test skipped: enumerating 3 tokens of a {V}-token vocabulary is {V ** 3:,} cells")
            plot_sampling(rows, None, None, out, name)
            continue
        exact = first_tokens_distribution(m, test_prompt, T, args.top_k, args.top_p)
        tests = {}
        for rule in ACCEPTANCE_RULES:
            g = torch.Generator().manual_seed(args.seed)
            samples = [tuple(generate_speculative(m, test_prompt, 4, gamma=min(gamma, 2), k=args.sampling_k,
                                                  temperature=T, top_k=args.top_k, top_p=args.top_p, generator=g,
                                                  acceptance=rule).tokens[:3])
                       for _ in tqdm(range(args.dist_samples), desc=f"distribution test: {rule}", leave=False)]
            tests[rule] = distribution_test(samples, exact)
            print(f"  distribution of the first 3 tokens at T={T}, {rule}: TV {tests[rule]['tv']:.3f} (sampling "
                  f"bound {tests[rule]['tv_bound']:.3f}), chi-square p = {tests[rule]['p_value']:.3g}")
        plot_sampling(rows, tests, exact, out, name)
        results[name]["distribution_test"] = dict(
            temperature=T, prompt=test_prompt, gamma=min(gamma, 2), k=args.sampling_k,
            **{r: {k: v for k, v in t.items() if k != "frequencies"} for r, t in tests.items()})
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out}/results.json and plots")


# Flags that several subcommands use, each defined once; parser() gives every subcommand the ones it reads.
SHARED_FLAGS = {
    "--toy-dir": dict(default="checkpoints/toy", help="train_toy.py's --out-dir"),
    "--toy-gamma": dict(type=int, default=6, help="γ of the toy checkpoint to load"),
    "--n-stories": dict(type=int, default=4000, help="as given to train_toy.py"),
    "--seed": dict(type=int, default=0, help="as given to train_toy.py"),
    "--prompts": dict(type=int, default=20, help="number of held-out prompts"),
    "--max-new-tokens": dict(type=int, default=60,
                             help="new tokens per prompt at most (toy model; `sampling`: E2E too)"),
    "--repeats": dict(type=int, default=3, help="timed repetitions (median)"),
    "--prune-threshold": dict(type=float, default=0.1, help="pruning threshold of the pruned settings"),
    "--device": dict(default="cpu", help="cpu or cuda (timings then synchronise the GPU)"),
    "--task": dict(choices=["e2e", "sql", "dialogsum"], default="e2e", help="which real task"),
    "--task-dir": dict(default="checkpoints/tasks", help="train_task.py's --out-dir"),
    "--mode": dict(choices=["frozen", "shared"], default="frozen", help="the SS / Medusa recipe (train_task.py --mode)"),
    "--stream-targets": dict(choices=["self", "data"], default="self",
                             help="the SS / Medusa recipe (train_task.py --stream-targets)"),
    "--tag": dict(default="", help="the SS / Medusa recipe (train_task.py --tag)"),
    "--data-dir": dict(default=None, help="real-task data folder (else $SPECSTREAM_DATA, else ../shared/data)"),
    "--n-eval": dict(type=int, default=200, help="examples scored for quality"),
    "--results-dir": dict(default="results", help="results go to RESULTS_DIR/<benchmark's folder>/"),
}
TOY = ("--toy-dir", "--toy-gamma", "--n-stories", "--seed")  # the toy checkpoint and its stories
RECIPE = ("--task-dir", "--mode", "--stream-targets", "--tag")  # which SS / Medusa checkpoint of a task


def parser() -> argparse.ArgumentParser:
    """`bench.py SUBCOMMAND [flags]`: one subcommand per benchmark, each with the flags it reads."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="what", required=True,
                                help="which benchmark (see above); `bench.py SUBCOMMAND --help` lists its flags")

    def command(name: str, run: Callable, *shared: str) -> argparse.ArgumentParser:
        c = commands.add_parser(name, description=run.__doc__)
        for flag in shared:
            c.add_argument(flag, **SHARED_FLAGS[flag])
        c.add_argument("--threads", type=int, default=1, help="torch threads, fixed for the whole run")
        return c

    command("speed", run_speed, *TOY, "--prompts", "--max-new-tokens", "--repeats", "--device")
    c = command("toy", run_toy, *TOY, "--prompts", "--max-new-tokens", "--repeats", "--prune-threshold", "--device")
    c.add_argument("--out", default="results/toy", help="output folder")
    c.add_argument("--tree-cap", type=int, default=64, help="node cap of the trees in the γ x k grid")
    c.add_argument("--separate", type=int, nargs="*", default=[2, 4], help="γ of separately trained models")
    c = command("params", run_params, "--results-dir")
    c.add_argument("--gamma-params", type=int, default=4, help="γ of the accounting table")
    c.add_argument("--stream-adapter-params", type=int, default=32,
                   help="rank of the frozen mode's stream adapter in the accounting table")
    command("rows", run_rows, "--toy-dir", "--toy-gamma", "--device")
    c = command("task", run_task, "--task", *RECIPE, "--data-dir", "--results-dir", "--n-eval", "--prompts",
                "--repeats", "--prune-threshold", "--device")
    c.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="decoders compared with the autoregressive baseline")
    command("baselines", run_baselines, "--toy-dir", "--n-stories", "--seed", "--prompts", "--max-new-tokens",
            "--repeats", "--prune-threshold", "--results-dir", "--device")
    command("draftcost", run_draft_cost, "--task", *RECIPE, "--device")
    c = command("batch", run_batch, *TOY, "--prompts", "--max-new-tokens", "--repeats", *RECIPE, "--data-dir",
                "--results-dir", "--device")
    c.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="batch sizes")
    c = command("ablation", run_ablation, "--task", "--task-dir", "--data-dir", "--results-dir", "--n-eval",
                "--prompts", "--repeats", "--device")
    c.add_argument("--recipes", nargs="+", default=["ss_shared_data", "ss_shared_self", "ss_frozen_data",
                                                    "ss_frozen_self"],
                   help="SS checkpoints <task>_<recipe>_pruned.pt compared with the next-token model")
    c.add_argument("--split", choices=["test", "dev"], default="test", help="dev for model selection")
    c.add_argument("--mr-values", choices=["all", "seen", "unseen"], default="all",
                   help="E2E: only the MRs whose attribute values all occur in training (seen) or not (unseen)")
    c = command("sampling", run_sampling, *TOY, "--prompts", "--max-new-tokens", *RECIPE, "--data-dir",
                "--results-dir", "--device")
    c.add_argument("--sampling-gamma", type=int, default=4, help="γ of the temperature sweep")
    c.add_argument("--sampling-k", type=int, default=2, help="sampled siblings per node")
    c.add_argument("--sampling-cap", type=int, default=16, help="node cap of the sweep's trees")
    c.add_argument("--dist-samples", type=int, default=2000,
                   help="samples per acceptance rule in the distribution test")
    c.add_argument("--top-k", type=int, default=None, help="top-k of target and drafts (T > 0)")
    c.add_argument("--top-p", type=float, default=None, help="top-p of target and drafts (T > 0)")
    c = command("profile", run_profile, *TOY, "--max-new-tokens", "--task", *RECIPE, "--data-dir", "--results-dir",
                "--prune-threshold", "--device")
    c.add_argument("--toy", action="store_true", help="the toy model instead of --task's SS model")
    c.add_argument("--profile-calls", type=int, default=200, help="timed calls (median; + 10%% warm-up)")
    c.set_defaults(prompts=1)  # the profile decodes the first held-out prompt
    return p


def main(argv: list[str] | None = None):
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    {"speed": run_speed, "toy": run_toy, "params": run_params, "rows": run_rows, "task": run_task,
     "baselines": run_baselines, "draftcost": run_draft_cost, "batch": run_batch, "ablation": run_ablation,
     "sampling": run_sampling, "profile": run_profile}[args.what](args)


if __name__ == "__main__":
    main()
