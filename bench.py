"""Benchmarks: tokens per call, CR ratio, per-depth acceptance and wall-time speedup of Speculative Streaming
over the KV-cached greedy loop. Never a test: run it yourself and read the tables.

    python bench.py speed          # a few (γ, k, pruning) settings on the toy model (train_toy.py first)
    python bench.py rows           # cost of a forward of n tree nodes relative to one node (the speedup's limit)
    python bench.py task --task e2e  # a real task (train_task.py first): quality of NTP vs SS, SS speed
    python bench.py params         # parameter accounting: SS vs 4 Medusa heads, toy to 7B-sized configs
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

import torch

from generate import generate_autoregressive, generate_speculative
from model import GPT, KVCache


PASSES = ("tree", "accepted")  # the paper's single pass, and streams of the accepted node only (generate.py)


def measure(model: GPT, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None, repeats: int,
            **ss_kwargs) -> dict:
    """AR vs SS (both stream passes) on the same prompts, interleaved per prompt. Returns the speedup of each
    pass, CR, tokens per call, per-depth acceptance and tree sizes (the drafts are the same for both passes)."""
    run_ss = lambda prompt, stream_pass: generate_speculative(model, prompt, max_new_tokens, eos_id=eos_id,
                                                              stream_pass=stream_pass, **ss_kwargs)
    for prompt in prompts[:2]:  # warm-up
        generate_autoregressive(model, prompt, max_new_tokens, eos_id)
        for stream_pass in PASSES:
            run_ss(prompt, stream_pass)
    totals = {name: [] for name in ("ar",) + PASSES}
    for _ in range(repeats):
        time_of = dict.fromkeys(totals, 0.0)
        ar_calls = ss_calls = 0
        lengths, attempted, accepted, drafted, kept = [], None, None, [], []
        for prompt in prompts:
            ar = generate_autoregressive(model, prompt, max_new_tokens, eos_id)
            time_of["ar"] += ar.wall_time
            for stream_pass in PASSES:
                ss = run_ss(prompt, stream_pass)
                if ss.tokens != ar.tokens:
                    raise AssertionError(f"speculative output differs from greedy: prompt {prompt}, {ss_kwargs}")
                time_of[stream_pass] += ss.wall_time
            ar_calls, ss_calls = ar_calls + ar.forward_calls, ss_calls + ss.forward_calls
            lengths += ss.accepted_lengths
            attempted = ss.depth_attempted if attempted is None else [a + b for a, b in zip(attempted, ss.depth_attempted)]
            accepted = ss.depth_accepted if accepted is None else [a + b for a, b in zip(accepted, ss.depth_accepted)]
            drafted += ss.tree_sizes
            kept += ss.pruned_tree_sizes
        for name in totals:
            totals[name].append(time_of[name])
    median = {name: statistics.median(t) for name, t in totals.items()}
    return dict(
        speedup=median["ar"] / median["tree"],
        speedup_accepted=median["ar"] / median["accepted"],
        cr_ratio=ar_calls / ss_calls,
        tokens_per_call=sum(lengths) / max(len(lengths), 1),
        acceptance=[a / t if t else None for a, t in zip(accepted, attempted)],
        tree_size=sum(drafted) / max(len(drafted), 1),
        tree_size_after_pruning=sum(kept) / max(len(kept), 1),
        ar_ms_per_token=1000 * median["ar"] / ar_calls,
        ss_ms_per_call=1000 * median["tree"] / ss_calls,
        ss_ms_per_call_accepted=1000 * median["accepted"] / ss_calls,
        times=median,
    )


def speedups(r: dict) -> str:
    return f"{r['speedup']:.2f}x / {r['speedup_accepted']:.2f}x"


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def load_toy(args):
    from train_toy import ToyData
    path = os.path.join(args.toy_dir, f"ss_gamma{args.toy_gamma}_pruned.pt")
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: run `python train_toy.py --out-dir {args.toy_dir}` first (or make demo)")
    model = GPT.from_checkpoint(path).to(args.device).eval()
    model.merge_lora()  # inference: fold LoRA into the weights (the same for AR and SS)
    data = ToyData(args.n_stories, args.seed)
    return model, data, data.prompts(args.prompts)


def run_speed(args):
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
    model = GPT.from_checkpoint(path).to(args.device).eval()
    model.merge_lora()
    return model


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


def write_toy_markdown(results: dict, path: str):
    s = results["setup"]
    lines = ["# Toy task: Speculative Streaming vs greedy autoregressive decoding\n",
             f"Command: `python bench.py toy` — {s['prompts']} held-out prompts, up to {s['max_new_tokens']} new tokens, "
             f"batch 1, greedy, {s['threads']} thread(s), median of {s['repeats']} interleaved runs. "
             f"Tokens per call counts the root/bonus token. Trees capped at {s['tree_cap']} nodes.\n",
             f"## One model trained with γ={s['model_gamma']}, used at smaller γ\n",
             "| γ | k | tokens/call | CR | speedup (tree pass / accepted pass) | acceptance at depth 1..γ |",
             "|---|---|---|---|---|---|"]
    for r in results["grid"]:
        lines.append(f"| {r['gamma']} | {r['k']} | {r['tokens_per_call']:.2f} | {r['cr_ratio']:.2f} | "
                     f"{speedups(r)} | {' '.join(fmt(a) for a in r['acceptance'])} |")
    lines += ["\n## Models trained separately with exactly γ streams (k = 1)\n",
              "| γ | tokens/call | CR | speedup (tree / accepted pass) | acceptance at depth 1..γ |", "|---|---|---|---|---|"]
    for r in results["separate"]:
        lines.append(f"| {r['gamma']} | {r['tokens_per_call']:.2f} | {r['cr_ratio']:.2f} | {speedups(r)} | "
                     f"{' '.join(fmt(a) for a in r['acceptance'])} |")
    lines += ["\n## Tree size, with and without pruning (γ = model's, k = 3)\n",
              "| cap | prune threshold | nodes drafted | nodes after pruning | tokens/call | CR | speedup (tree / accepted pass) |",
              "|---|---|---|---|---|---|---|"]
    for r in results["tree_size"]:
        lines.append(f"| {r['tree_cap']} | {r['prune_threshold'] or '-'} | {r['tree_size']:.1f} | "
                     f"{r['tree_size_after_pruning']:.1f} | {r['tokens_per_call']:.2f} | {r['cr_ratio']:.2f} | "
                     f"{speedups(r)} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot_toy(results: dict, out: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    G = results["setup"]["model_gamma"]
    k1 = [r for r in results["grid"] if r["k"] == 1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for depth in range(1, G + 1):
        pts = [(r["gamma"], r["acceptance"][depth - 1]) for r in k1 if r["gamma"] >= depth]
        axes[0].plot(*zip(*pts), "o-", label=f"depth {depth}")
        sep = [(r["gamma"], r["acceptance"][depth - 1]) for r in results["separate"] if r["gamma"] >= depth]
        if sep:
            axes[0].plot(*zip(*sep), "x", color=axes[0].lines[-1].get_color(), markersize=10, mew=2)
    axes[0].set(xlabel="γ (streams used)", ylabel="acceptance rate at depth j  (given depth j-1 accepted)",
                title=f"Acceptance vs γ, k=1\n(o-: one model trained with γ={G};  x: trained with that γ)", ylim=(0, 1.05))
    axes[0].legend(fontsize=8)
    axes[1].plot([r["gamma"] for r in k1], [r["tokens_per_call"] for r in k1], "o-", label=f"one model (γ={G})")
    if results["separate"]:
        axes[1].plot([r["gamma"] for r in results["separate"]], [r["tokens_per_call"] for r in results["separate"]],
                     "x--", markersize=10, mew=2, label="trained with that γ")
    axes[1].plot(range(1, G + 1), [g + 1 for g in range(1, G + 1)], ":", color="gray", label="γ+1 (every draft accepted)")
    axes[1].set(xlabel="γ", ylabel="mean accepted length (root token included)", title="Tokens per call, k=1")
    axes[1].legend(fontsize=8)
    fig.tight_layout(), fig.savefig(os.path.join(out, "acceptance_vs_gamma.png"), dpi=120), plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k in sorted({r["k"] for r in results["grid"]}):
        rows = [r for r in results["grid"] if r["k"] == k]
        axes[0].plot([r["gamma"] for r in rows], [r["cr_ratio"] for r in rows], "o-", label=f"k={k}")
        line, = axes[1].plot([r["gamma"] for r in rows], [r["speedup"] for r in rows], "o-", label=f"k={k}, tree pass")
        axes[1].plot([r["gamma"] for r in rows], [r["speedup_accepted"] for r in rows], "s--", color=line.get_color(),
                     label=f"k={k}, accepted-node pass")
    axes[0].set(xlabel="γ", ylabel="CR ratio (AR calls / SS calls)", title="Call reduction vs γ")
    axes[1].axhline(1.0, color="gray", lw=0.8)
    axes[1].set(xlabel="γ", ylabel="wall-time speedup over KV-cached greedy", title="Wall-time speedup vs γ (CPU)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(os.path.join(out, "speedup_cr_vs_gamma.png"), dpi=120), plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for prune, style in ((None, "o-"), (True, "s--")):
        rows = [r for r in results["tree_size"] if bool(r["prune_threshold"]) == bool(prune)]
        label = "no pruning" if prune is None else f"pruning (threshold {rows[0]['prune_threshold']})"
        axes[0].plot([r["tree_size_after_pruning"] for r in rows], [r["speedup"] for r in rows], style,
                     label=label + ", tree pass")
        axes[0].plot([r["tree_size_after_pruning"] for r in rows], [r["speedup_accepted"] for r in rows], style, alpha=0.5,
                     label=label + ", accepted-node pass")
        axes[1].plot([r["tree_size_after_pruning"] for r in rows], [r["cr_ratio"] for r in rows], style, label=label)
    axes[0].set(xscale="log", xlabel="nodes per forward (after pruning)", ylabel="wall-time speedup",
                title="Speedup vs tree size (caps 2..128, k=3)")
    axes[1].set(xscale="log", xlabel="nodes per forward (after pruning)", ylabel="CR ratio", title="CR vs tree size")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(os.path.join(out, "speedup_vs_tree_size.png"), dpi=120), plt.close(fig)


def run_rows(args):
    """Cost of one forward over n tree nodes (a chain) on top of a 40-token cache, relative to one node: the
    wall-time speedup is at most CR divided by this ratio (plus the streams' extra rows)."""
    import tree as tree_ops
    model, data, prompts = load_toy(args)
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


MAX_NEW_TOKENS = {"e2e": 80, "sql": 160, "dialogsum": 96}  # longer than nearly every reference completion


def quality(task: str, hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
    """E2E: BLEU (sacrebleu, all references) and ROUGE-L; SQL: exact match of the whitespace- and case-normalised
    query; DialogSum: ROUGE-1/2/L F1, best over the references, averaged (rouge-score, stemmed)."""
    from rouge_score import rouge_scorer
    if task == "sql":
        norm = lambda q: " ".join(q.lower().split())
        return dict(exact_match=100 * sum(norm(h) == norm(r[0]) for h, r in zip(hypotheses, references)) / len(hypotheses))
    kinds = ["rougeL"] if task == "e2e" else ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(kinds, use_stemmer=True)
    scores = [scorer.score_multi(r, h) for h, r in zip(hypotheses, references)]
    out = {k: 100 * sum(s[k].fmeasure for s in scores) / len(scores) for k in kinds}
    if task == "e2e":
        import sacrebleu
        n_refs = max(len(r) for r in references)
        streams = [[r[i] if i < len(r) else None for r in references] for i in range(n_refs)]
        out = dict(bleu=sacrebleu.corpus_bleu(hypotheses, streams).score, **out)
    return out


def run_task(args):
    """A real task: quality of the NTP baseline and of the SS model, and SS speed, on a fixed test subset."""
    from data import EOS, CompactVocab, load_task, prompt_ids
    task, folder = args.task, args.task_dir
    paths = {name: os.path.join(folder, f"{task}_{name}.pt") for name in ("ntp", "ss_pruned")}
    for path in paths.values():
        if not os.path.exists(path):
            raise SystemExit(f"{path} not found: run `python train_task.py --task {task} --out-dir {folder}` first")
    models = {}
    for name, path in paths.items():
        models[name] = GPT.from_checkpoint(path).to(args.device).eval()
        models[name].merge_lora()
    vocab = CompactVocab.from_dict(torch.load(paths["ss_pruned"], weights_only=True)["vocabulary"])
    examples = load_task(task, "test", args.data_dir)[:args.n_eval]  # the first n_eval test examples, fixed
    max_new, eos = MAX_NEW_TOKENS[task], EOS
    budget = models["ss_pruned"].config.block_size - max_new + 1
    prompts = [prompt_ids(vocab, ex, budget) for ex in examples]
    references = [ex.references for ex in examples]
    decode = lambda ids: vocab.decode([t for t in ids if t != eos])
    print(f"{task}: {len(examples)} test examples, up to {max_new} new tokens, {torch.get_num_threads()} thread(s)")
    ntp_out = [decode(generate_autoregressive(models["ntp"], p, max_new, eos).tokens) for p in prompts]
    ss = models["ss_pruned"]
    ss_out = [decode(generate_speculative(ss, p, max_new, k=1, eos_id=eos).tokens) for p in prompts]
    results = dict(task=task, n_examples=len(examples), max_new_tokens=max_new, config=vars(ss.config),
                   quality=dict(ntp=quality(task, ntp_out, references), ss=quality(task, ss_out, references)),
                   params=ss.parameter_counts(), speed=[], samples=[dict(prompt=e.prompt, ntp=a, ss=b) for e, a, b
                                                                    in zip(examples[:5], ntp_out, ss_out)])
    print("quality:", {k: {m: round(v, 2) for m, v in q.items()} for k, q in results["quality"].items()})
    speed_prompts = prompts[:args.prompts]
    for s in [dict(k=1), dict(k=2, tree_cap=8), dict(k=2, tree_cap=16, prune_threshold=0.1), dict(k=3, tree_cap=24)]:
        r = measure(ss, speed_prompts, max_new, eos, args.repeats, **s)
        results["speed"].append(dict(gamma=ss.config.n_streams, **s, **r))
        print(f"  k={s['k']} cap={s.get('tree_cap')} prune={s.get('prune_threshold')}: tokens/call "
              f"{r['tokens_per_call']:.2f}  CR {r['cr_ratio']:.2f}  speedup {speedups(r)}  acceptance "
              + " ".join(fmt(a) for a in r["acceptance"]))
    out = os.path.join(args.results_dir, task)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_task_markdown(results, args, os.path.join(out, "results.md"))
    print(f"wrote {out}/results.json and results.md")


def write_task_markdown(results: dict, args, path: str):
    q, extra = results["quality"], results["params"]["stream_emb"] + results["params"]["prune_adapter"]
    metric_names = list(q["ntp"])
    best = max(results["speed"], key=lambda r: max(r["speedup"], r["speedup_accepted"]))
    lines = [f"# {results['task']}: Speculative Streaming vs the next-token baseline\n",
             f"Command: `python bench.py task --task {results['task']} --n-eval {args.n_eval} --prompts {args.prompts} "
             f"--repeats {args.repeats}`: the first {results['n_examples']} test examples for quality, the first "
             f"{args.prompts} for speed; batch 1, greedy, {torch.get_num_threads()} thread(s), CPU unless stated. "
             f"Tokens per call count the root token. Speedup: paper's single pass / accepted-node stream pass.\n",
             "## In the layout of the paper's Table 1\n",
             "| method | speedup | CR | " + " | ".join(metric_names) + " | extra parameters |",
             "|---|---|---|" + "---|" * len(metric_names) + "---|",
             "| next-token LoRA (baseline) | 1.00x | 1.00 | " + " | ".join(f"{q['ntp'][m]:.2f}" for m in metric_names)
             + " | 0 |",
             f"| Speculative Streaming (γ={best['gamma']}, k={best['k']}, cap={best.get('tree_cap')}, prune="
             f"{best.get('prune_threshold')}) | {speedups(best)} | {best['cr_ratio']:.2f} | "
             + " | ".join(f"{q['ss'][m]:.2f}" for m in metric_names) + f" | {extra:,} |",
             "\n## Speed settings\n", "| k | cap | prune | tokens/call | CR | speedup | acceptance at depth 1..γ |",
             "|---|---|---|---|---|---|---|"]
    for r in results["speed"]:
        lines.append(f"| {r['k']} | {r.get('tree_cap') or '-'} | {r.get('prune_threshold') or '-'} | "
                     f"{r['tokens_per_call']:.2f} | {r['cr_ratio']:.2f} | {speedups(r)} | "
                     f"{' '.join(fmt(a) for a in r['acceptance'])} |")
    lines += ["\n## Samples\n"] + [f"- prompt: `{s['prompt'][:200]}`\n  - NTP: `{s['ntp']}`\n  - SS: `{s['ss']}`"
                                      for s in results["samples"]]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def run_params(args):
    """Parameter accounting: base, LoRA, stream embeddings, pruning adapter, and 4 Medusa heads on the same config."""
    from model import GPTConfig, medusa_head_params
    configs = {  # (d, V, layers, heads, context): toy, GPT-2 124M and the paper's model sizes
        "toy (train_toy.py defaults)": (128, 81, 4, 4, 128),
        "GPT-2 124M": (768, 50257, 12, 12, 1024),
        "OPT-1.3b-sized": (2048, 50272, 24, 32, 2048),
        "7B-sized (d, V of OpenLlama-7b; GPT-2 layout)": (4096, 32000, 32, 32, 2048),
    }
    print(f"γ = {args.gamma_params} streams on N_s = 2 MSA blocks, LoRA r = 32 on attention and MLP, rank-8 pruning adapter\n")
    print("| config | base | LoRA (r=32) | stream embeddings | pruning adapter | SS extra (streams + adapter) "
          "| 4 Medusa heads | Medusa / SS |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (d, V, L, H, ctx) in configs.items():
        if d <= 768:  # small enough to build and count for real
            cfg = GPTConfig(vocab_size=V, block_size=ctx, n_layer=L, n_head=H, n_embd=d, n_streams=args.gamma_params,
                            n_msa_layers=2, lora_rank=32, prune_rank=8)
            c = GPT(cfg).parameter_counts()
        else:  # same formulas, counted analytically (GPT-2 layout: 12 d^2 + 13 d per block)
            lora = L * 32 * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
            c = dict(base=V * d + ctx * d + L * (12 * d * d + 13 * d) + 2 * d, lora=lora,
                     stream_emb=args.gamma_params * d, prune_adapter=2 * 8 * d,
                     medusa_4_heads=medusa_head_params(d, V, 4))
        extra = c["stream_emb"] + c["prune_adapter"]
        print(f"| {name} | {c['base']:,} | {c['lora']:,} | {c['stream_emb']:,} | {c['prune_adapter']:,} | {extra:,} "
              f"| {c['medusa_4_heads']:,} | {c['medusa_4_heads'] / extra:,.0f}x |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["speed", "toy", "params", "rows", "task"], help="which benchmark")
    p.add_argument("--toy-dir", default="checkpoints/toy", help="train_toy.py's --out-dir")
    p.add_argument("--toy-gamma", type=int, default=6, help="γ of the toy checkpoint to load")
    p.add_argument("--n-stories", type=int, default=4000, help="as given to train_toy.py")
    p.add_argument("--seed", type=int, default=0, help="as given to train_toy.py")
    p.add_argument("--prompts", type=int, default=20, help="number of held-out prompts")
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, fixed for the whole run")
    p.add_argument("--device", default="cpu", help="cpu or cuda (timings then synchronise the GPU)")
    p.add_argument("--out", default="results/toy", help="output folder of `toy`")
    p.add_argument("--tree-cap", type=int, default=64, help="`toy`: node cap of the trees in the γ x k grid")
    p.add_argument("--prune-threshold", type=float, default=0.1, help="`toy`: pruning threshold of the tree-size sweep")
    p.add_argument("--task", choices=["e2e", "sql", "dialogsum"], default="e2e", help="`task`: which real task")
    p.add_argument("--task-dir", default="checkpoints/tasks", help="`task`: train_task.py's --out-dir")
    p.add_argument("--data-dir", default=None, help="`task`: data folder (else $SPECSTREAM_DATA, else ../shared/data)")
    p.add_argument("--results-dir", default="results", help="`task`: results go to RESULTS_DIR/<task>/")
    p.add_argument("--n-eval", type=int, default=200, help="`task`: test examples scored for quality")
    p.add_argument("--gamma-params", type=int, default=4, help="`params`: γ of the accounting table")
    p.add_argument("--separate", type=int, nargs="*", default=[2, 4], help="`toy`: γ of separately trained models")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"speed": run_speed, "toy": run_toy, "params": run_params, "rows": run_rows, "task": run_task}[args.what](args)


if __name__ == "__main__":
    main()
