"""Speed on the toy task: a few (γ, k, pruning) settings (`bench.py speed`), the γ study (`bench.py toy`: acceptance
vs γ, speedup and CR vs γ per k, speedup vs tree size with and without pruning) and the cost of a forward of n tree
nodes relative to one node (`bench.py rows`, the speedup's limit)."""
from __future__ import annotations

import argparse
import json
import os

import torch

import tree as tree_ops
from benchmarks.harness import Clock, mean_ms, measure
from benchmarks.models import cast, draft_vocabulary, load_for_decoding, load_toy, settings_line, toy_model
from benchmarks.precision import machine_description
from benchmarks.report import fmt, plot_toy, speedups, write_toy_markdown
from model import GPT, KVCache

SPEED_SETTINGS = [dict(k=1), dict(k=2, tree_cap=8), dict(k=2, tree_cap=16),  # `speed`: (k, tree cap, pruning) at each γ
                  dict(k=2, tree_cap=16, prune_threshold=0.05), dict(k=3, tree_cap=24, prune_threshold=0.05)]


def run_speed(args: argparse.Namespace):
    """A few (γ, k, tree cap, pruning) settings on the toy model: tokens per call, CR, wall-time speedup of both
    stream passes over the KV-cached greedy loop (AR and SS at the same --dtype), tree sizes."""
    model, data, prompts = load_toy(args)
    cast(model, args.dtype)
    draft_ids = draft_vocabulary(data.stories, args.draft_vocab, model.config.vocab_size)
    model.trim_draft_vocab(draft_ids)
    print(machine_description(args.device))
    print(f"toy model ({args.toy_dir}), {len(prompts)} prompts, max {args.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}; "
          f"{settings_line(model, args.dtype, draft_ids)}")
    print("speedup: the paper's single pass (streams on every node) / streams of the accepted node only")
    print(f"{'γ':>2} {'k':>2} {'cap':>4} {'prune':>6} | {'tok/call':>8} {'CR':>5} {'speedup':>13} | tree (pruned)")
    for gamma in sorted({1, 2, 4, model.config.n_streams}):
        for s in SPEED_SETTINGS:
            r = measure(model, prompts, args.max_new_tokens, data.eos_id, args.repeats, args.device, gamma=gamma, **s)
            print(f"{gamma:>2} {s['k']:>2} {s.get('tree_cap') or '-':>4} {s.get('prune_threshold') or '-':>6} | "
                  f"{r['tokens_per_call']:8.2f} {r['cr_ratio']:5.2f} {speedups(r):>13} | "
                  f"{r['tree_size']:.1f} ({r['tree_size_after_pruning']:.1f})"
                  + (f" | {r['near_ties']} output(s) ≠ AR at a near tie" if r["near_ties"] else ""))


def separately_trained(args: argparse.Namespace, gamma: int) -> GPT:
    """The toy model fine-tuned with exactly `gamma` streams (same base, same budget); trained if missing."""
    path = os.path.join(args.toy_dir, f"ss_gamma{gamma}_pruned.pt")
    if not os.path.exists(path):
        from train_toy import ToyRecipe, train_pipeline
        print(f"training a toy model with γ={gamma} streams (base reused from {args.toy_dir})")
        recipe = ToyRecipe(gamma=gamma, seed=args.seed, n_stories=args.n_stories, device=args.device)
        train_pipeline(recipe, args.toy_dir)
    return load_for_decoding(path, args.device)


def run_toy(args: argparse.Namespace):
    """The γ study on the toy task: writes results/toy/{results.json, results.md, *.png}."""
    model, data, prompts = load_toy(args)
    G, cap = model.config.n_streams, args.tree_cap
    run = lambda m, **kw: measure(m, prompts, args.max_new_tokens, data.eos_id, args.repeats, args.device, **kw)
    results = dict(setup=dict(prompts=len(prompts), max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                              threads=torch.get_num_threads(), tree_cap=cap, model_gamma=G,
                              config=vars(model.config), machine=machine_description(args.device)),
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
            print(f"  cap {tree_cap:>3} prune {prune or '-'}: nodes {r['tree_size']:.1f} -> "
                  f"{r['tree_size_after_pruning']:.1f}  CR {r['cr_ratio']:.2f}  speedup {speedups(r)}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_toy_markdown(results, os.path.join(args.out, "results.md"))
    plot_toy(results, args.out)
    print_toy_summary(results)
    print(f"wrote {args.out}/results.json, results.md and plots")


def print_toy_summary(results: dict):
    """The γ study's k = 1 rows, and its fastest setting."""
    print("\nSummary (k = 1; speedup = tree pass / accepted-node pass; tokens per call count the root token):")
    print(f"{'γ':>3} {'tokens/call':>11} {'CR':>5} {'speedup':>15}")
    for r in (r for r in results["grid"] if r["k"] == 1):
        print(f"{r['gamma']:>3} {r['tokens_per_call']:>11.2f} {r['cr_ratio']:>5.2f} {speedups(r):>15}")
    best = max(results["grid"] + results["tree_size"], key=lambda r: max(r["speedup"], r["speedup_accepted"]))
    print(f"fastest setting: {dict((k, best[k]) for k in ('gamma', 'k', 'tree_cap', 'prune_threshold') if k in best)}"
          f" at {speedups(best)}, CR {best['cr_ratio']:.2f}")


def run_rows(args: argparse.Namespace):
    """Cost of one forward over n tree nodes (a chain) on top of a 40-token cache, relative to one node: the
    wall-time speedup is at most CR divided by this ratio (plus the streams' extra rows)."""
    model = toy_model(args)
    cache_len, reps, G = 40, 200, model.config.n_streams
    print(f"toy model, {torch.get_num_threads()} thread(s): one forward of n nodes over a {cache_len}-token cache "
          f"(main stream only / with γ={G} streams on every node)")
    base = None
    with torch.inference_mode():
        for n in (1, 2, 4, 8, 16, 32, 64):
            zeros = torch.zeros(n - 1, 1, dtype=torch.long, device=args.device)
            t = tree_ops.draft_tree(0, zeros, torch.ones(n - 1, 1, device=args.device))  # a chain
            mask, pos = tree_ops.tree_attention_mask(t, cache_len), tree_ops.position_ids(t, cache_len)
            steps = {}
            for n_streams in (0, G):
                cache = KVCache(model.config, 1, cache_len + n, device=args.device)
                cache.length = cache_len
                steps[n_streams] = lambda c=cache, s=n_streams: model.upper(
                    model.lower(model.embed(t.tokens[None], pos), mask, c), mask, c,
                    n_streams=s)
            ms = mean_ms(steps, reps, Clock(args.device))
            base = base or ms[0]
            print(f"  n={n:>3}: {ms[0]:.3f} ms ({ms[0] / base:.2f}x one node) | with streams {ms[G]:.3f} ms "
                  f"({ms[G] / base:.2f}x)")
