"""`bench.py study`: how one setting moves acceptance, on a task's development split.

Several drafter checkpoints that differ in one training setting (stream training steps, N_s, the stream adapter's
rank, ...), or one checkpoint decoded with several draft vocabularies (--draft-vocabs), decode the same prompts at
k = 1..4 with the tree caps of `bench.py task`; their CR, tokens per call and acceptance per depth are written as a
table and drawn against the setting. No wall times: acceptance and call counts do not depend on the machine or its
load, so a study can run beside other jobs. Every output is checked to equal the next-token model's (frozen mode
keeps the main stream exactly that model).
"""
from __future__ import annotations

import argparse
import json
import math
import os

import torch
from tqdm import tqdm

from benchmarks.harness import summary
from benchmarks.models import load_for_decoding, task_draft_vocabulary, task_setup
from benchmarks.report import pyplot
from generate import GenerationResult, generate_autoregressive, generate_speculative

STUDY_SETTINGS = [(1, None), (2, 8), (3, 16), (4, 24)]  # (k, tree cap): the tree settings of `bench.py task`


def perfect_drafter_cr(reference: list[GenerationResult], gamma: int) -> float:
    """The CR of a drafter that is never wrong, on these outputs: the prefill commits one token, every later call
    γ + 1 (the whole draft and the bonus token), so an output of L tokens takes 1 + ceil((L - 1) / (γ + 1)) calls."""
    calls = sum(1 + math.ceil((len(r.tokens) - 1) / (gamma + 1)) for r in reference)
    return sum(r.forward_calls for r in reference) / calls


def decode_recipe(model, prompts: list[list[int]], reference: list, max_new: int, eos: int, name: str) -> list[dict]:
    """One drafter at every study setting: CR against the reference (greedy) calls, tokens per call, acceptance per
    depth and how many outputs equal the reference's."""
    rows = []
    for k, cap in tqdm(STUDY_SETTINGS, desc=name):
        results = [generate_speculative(model, p, max_new, k=k, tree_cap=cap, eos_id=eos, stream_pass="accepted")
                   for p in prompts]
        stats = summary(results, 0.0)
        rows.append(dict(k=k, cap=cap, cr=sum(r.forward_calls for r in reference) / stats["forward_calls"],
                         tokens_per_call=stats["tokens_per_call"], acceptance=stats["acceptance"],
                         same=sum(a.tokens == b.tokens for a, b in zip(results, reference))))
    return rows


def run_study(args: argparse.Namespace):
    """A setting against acceptance, on the dev split: each of --recipes (checkpoints <task>_<recipe>_pruned.pt, SS
    or Medusa, with its --draft-vocabs) at its --values, CR and acceptance at k = 1..4, a table and a plot."""
    from data import EOS
    draft_vocabs = args.draft_vocabs or [0] * len(args.recipes)
    for flag, given in (("--values", args.values), ("--draft-vocabs", draft_vocabs)):
        if len(given) != len(args.recipes):
            raise SystemExit(f"error: {len(args.recipes)} recipes but {len(given)} {flag}: give one {flag} number "
                             f"per recipe")
    _, prompts, max_new, _ = task_setup(args, args.task, args.split)
    prompts = prompts[:args.prompts]
    ntp = load_for_decoding(os.path.join(args.task_dir, f"{args.task}_ntp.pt"), args.device)
    reference = [generate_autoregressive(ntp, p, max_new, EOS) for p in tqdm(prompts, desc="next-token model")]
    rows, gammas = [], set()
    for recipe, value, n in zip(args.recipes, args.values, draft_vocabs):
        path = os.path.join(args.task_dir, f"{args.task}_{recipe}_pruned.pt")
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} not found — train it first (train_task.py --task {args.task} --tag ...)")
        model = load_for_decoding(path, args.device)
        gammas.add(model.config.n_drafts)
        model.trim_draft_vocab(task_draft_vocabulary(args, args.task, n))
        for row in decode_recipe(model, prompts, reference, max_new, EOS, recipe):
            rows.append(dict(recipe=recipe, method=recipe.split("_")[0], value=value, draft_vocab=n, **row))
    write_study(args, rows, len(prompts), {g: perfect_drafter_cr(reference, g) for g in sorted(gammas)})


def command(args: argparse.Namespace) -> str:
    """The command line that made a study, rebuilt from its flags."""
    return (f"python bench.py study --task {args.task} --split {args.split} --name {args.name} --recipes "
            f"{' '.join(args.recipes)} --values {' '.join(f'{v:g}' for v in args.values)} --label '{args.label}'"
            + (f" --mark {args.mark:g} --mark-label '{args.mark_label}'" if args.mark is not None else "")
            + (f" --draft-vocabs {' '.join(map(str, args.draft_vocabs))}" if args.draft_vocabs else "")
            + f" --prompts {args.prompts}")


def write_study(args: argparse.Namespace, rows: list[dict], n_prompts: int, ceilings: dict[int, float]):
    """RESULTS_DIR/<task>/study_<name>.{md,json,png}: the table, the rows and the curves; `ceilings`: γ -> the CR
    of a drafter that is never wrong (perfect_drafter_cr)."""
    out = os.path.join(args.results_dir, args.task)
    os.makedirs(out, exist_ok=True)
    lines = [f"# {args.task}: {args.label} against acceptance ({args.split} split)\n",
             f"Command: `{command(args)}` (after training the recipes). {n_prompts} prompts, greedy, the accepted-node "
             "stream pass; CR = greedy calls / calls; tokens per call count the root/bonus token; acceptance at depth "
             "j = P(depth j accepted | depth j-1 accepted), nodes cut by the cap counting as rejections. A drafter "
             "that is never wrong would reach CR " + ", ".join(f"{c:.2f} (γ = {g})" for g, c in ceilings.items())
             + " on these outputs: the prefill commits one token, every later call at most γ + 1.\n",
             f"| recipe | {args.label} | k | cap | CR | tokens/call | acceptance at depth 1..γ | outputs = next-token "
             "model's |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['recipe']} | {r['value']:g} | {r['k']} | {r['cap'] or '-'} | {r['cr']:.2f} | "
              f"{r['tokens_per_call']:.2f} | " + " ".join("-" if a is None else f"{a:.2f}" for a in r["acceptance"])
              + f" | {r['same']}/{n_prompts} |" for r in rows]
    with open(os.path.join(out, f"study_{args.name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, f"study_{args.name}.json"), "w") as f:
        json.dump(dict(command=command(args), threads=torch.get_num_threads(), perfect_drafter_cr=ceilings,
                       rows=rows), f, indent=1)
    plot_study(args, rows, os.path.join(out, f"study_{args.name}.png"))
    print("\n".join(lines))
    print(f"wrote {out}/study_{args.name}.md, .json, .png")


def plot_study(args: argparse.Namespace, rows: list[dict], path: str):
    """Left: CR against the setting, one line per method and k. Right: acceptance per depth at k = 1."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        for k, style in zip((1, 2, 3, 4), ("o-", "s--", "^-.", "v:")):
            rs = sorted((r for r in rows if r["method"] == method and r["k"] == k), key=lambda r: r["value"])
            left.plot([r["value"] for r in rs], [r["cr"] for r in rs], style, color=f"C{i}", label=f"{method} k={k}")
        rs = sorted((r for r in rows if r["method"] == method and r["k"] == 1), key=lambda r: r["value"])
        for j in range(len(rs[0]["acceptance"]) if rs else 0):
            right.plot([r["value"] for r in rs], [r["acceptance"][j] for r in rs], "o-", color=f"C{i}",
                       alpha=1 - 0.2 * j, label=f"{method} depth {j + 1}")
    ticks = sorted(set(args.values))
    for ax, ylabel in ((left, "CR (greedy calls / calls)"), (right, "acceptance at depth j, k = 1")):
        if args.mark is not None:
            ax.axvline(args.mark, color="grey", linestyle=":", label=args.mark_label)
        if max(args.values) >= 8 * min(args.values) > 0:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.set_xlabel(args.label)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(f"{args.task} ({args.split} split): {args.label}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
