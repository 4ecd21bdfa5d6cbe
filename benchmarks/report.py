"""What the benchmarks report: quality metrics (BLEU, ROUGE, exact match, E2E name realisation), the Markdown
tables and the plots of each benchmark, and the formatting helpers they share. The other modules of the package
measure and call these; this module imports none of them, nor bench.py.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from tree import ACCEPTANCE_RULES


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (benchmarks write PNGs, they never open a window)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# ---------------------------------------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------------------------------------

def fmt(x: float | None, digits: int = 2) -> str:
    """x with `digits` decimals, "-" for None (a missing value in a table)."""
    return "-" if x is None else f"{x:.{digits}f}"


def speedups(r: dict) -> str:
    """"tree pass / accepted-node pass" speedups of one `measure` result."""
    return f"{r['speedup']:.2f}x / {r['speedup_accepted']:.2f}x"


METHOD_NAMES = {"ss": "Speculative Streaming", "medusa": "Medusa (4 heads)", "two-model": "two-model SD",
                "prompt lookup": "prompt lookup"}


def setting(r: dict) -> str:
    """A side-by-side row's decoder setting in words (γ, k, cap, pruning, stream pass; or the baseline's own)."""
    if r["method"] in ("ss", "medusa"):
        return (f"γ={r['gamma']}, k={r['k']}, cap={r['tree_cap'] or '-'}, prune={r['prune_threshold'] or '-'}"
                + (f", {r['stream_pass']} pass" if r["method"] == "ss" else ""))
    if r["method"] == "two-model":
        return f"γ={r['gamma']}"
    if r["method"] == "prompt lookup":
        return f"3-gram, {r['num_draft']} drafts"
    return "-"


def best_of(rows: list[dict], method: str) -> dict | None:
    """The fastest row of `method` (by wall-time speedup), or None when it has none."""
    rows = [r for r in rows if r["method"] == method]
    return max(rows, key=lambda r: r["speedup"]) if rows else None


def print_rows(rows: list[dict]):
    """Every side-by-side row on one line: speedup, CR, tokens per call, draft calls, acceptance per depth."""
    for r in rows:
        print(f"  {r['name']:<40} speedup {fmt(r['speedup'])}  CR {fmt(r['cr_ratio'])}  tokens/call "
              f"{r['tokens_per_call']:.2f}  draft calls {r['draft_calls']}  acceptance "
              + " ".join(fmt(a) for a in r["acceptance"]))


# ---------------------------------------------------------------------------------------------------------
# Quality metrics
# ---------------------------------------------------------------------------------------------------------

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


def realisation(outputs: list[str], examples: list, seen: dict[str, set[str]]) -> dict[str, float | None]:
    """E2E: share of outputs that contain the MR's `name` / `near` value verbatim, for values seen in the
    training MRs and for unseen ones apart (None where no example has such a value). Examples may be
    delexicalised: their values are then in `slots`."""
    from data import E2E_PLACEHOLDERS, mr_values
    out = {}
    for slot in ("name", "near"):
        values = [ex.slots.get(E2E_PLACEHOLDERS[slot], mr_values(ex.prompt).get(slot)) for ex in examples]
        for kind in ("seen", "unseen"):
            hits = [value in text for text, value in zip(outputs, values)
                    if value is not None and (value in seen[slot]) == (kind == "seen")]
            out[f"{slot} {kind}"] = 100 * sum(hits) / len(hits) if hits else None
    return out


# ---------------------------------------------------------------------------------------------------------
# `bench.py toy`: the γ study
# ---------------------------------------------------------------------------------------------------------

def write_toy_markdown(results: dict, path: str):
    """results/toy/results.md: the γ x k grid, the separately trained models and the tree-size sweep."""
    s = results["setup"]
    lines = ["# Toy task: Speculative Streaming vs greedy autoregressive decoding\n",
             f"Command: `python bench.py toy` — {s['prompts']} held-out prompts, up to {s['max_new_tokens']} new tokens, "
             f"batch 1, greedy, {s['threads']} thread(s), median of {s['repeats']} interleaved runs. "
             f"Tokens per call counts the root/bonus token. Trees capped at {s['tree_cap']} nodes.\n",
             f"Machine: {s['machine']}.\n",
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
    """acceptance_vs_gamma.png, speedup_cr_vs_gamma.png and speedup_vs_tree_size.png of the γ study."""
    plt = pyplot()
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


# ---------------------------------------------------------------------------------------------------------
# `bench.py task`, `baselines`: every method side by side
# ---------------------------------------------------------------------------------------------------------

def models_markdown(quality_of: dict[str, dict], outputs: dict[str, list[str]], examples: list) -> list[str]:
    """`task`: the quality of each model ("target", "ss", "medusa") as a table, then each model's output on
    `examples` (the first test examples) beside the prompt."""
    metric_names = next(iter(quality_of.values()))
    lines = ["## Models\n", "| model | " + " | ".join(metric_names) + " |", "|---|" + "---|" * len(metric_names)]
    lines += [f"| {dict(target='next-token LoRA', ss='SS (γ=4)', medusa='Medusa (4 heads)')[k]} | "
              + " | ".join(fmt(v) for v in q.values()) + " |" for k, q in quality_of.items()]
    return lines + ["\nSamples (first test examples):\n"] + [
        f"- `{ex.prompt[:160]}`\n" + "".join(f"  - {key}: `{outputs[key][i][:300]}`\n" for key in outputs)
        for i, ex in enumerate(examples)]


def comparison_markdown(rows: list[dict], extra: dict[str, int], quality: dict[str, dict] | None) -> list[str]:
    """Tables in the layout of the paper's Table 1 (speedup, CR, quality, extra parameters) and Table 2 (target
    and draft calls), then every setting."""
    metric_names = list(next(iter(quality.values()))) if quality else []
    q = lambda model: " | ".join(fmt(quality[model][m]) for m in metric_names) + (" | " if metric_names else "")
    quality_of = dict(ss="ss", medusa="medusa", **{"two-model": "target", "prompt lookup": "target"})
    lines = ["## Side by side (layout of the paper's Table 1)\n",
             "| method | setting | speedup | CR | " + "".join(f"{m} | " for m in metric_names) + "extra parameters |",
             "|---|---|---|---|" + "---|" * len(metric_names) + "---|"]
    if quality:
        lines.append(f"| next-token LoRA (baseline) | greedy | 1.00x | 1.00 | {q('target')}0 |")
    for method, name in METHOD_NAMES.items():
        r = best_of(rows, method)
        if r:
            lines.append(f"| {name} | {setting(r)} | {r['speedup']:.2f}x | {r['cr_ratio']:.2f} | "
                         f"{q(quality_of[method]) if quality else ''}{extra.get(method, 0):,} |")
    lines += ["\nEach method's best setting by wall time; quality is that of the model each method decodes (its output "
              "equals that model's greedy output, checked on every timed prompt). Extra parameters: what the method adds "
              "to its target besides the LoRA every fine-tuned model has (SS: stream embeddings, stream adapter in frozen mode, pruning adapter; "
              "Medusa: heads + pruning adapter; two-model: the whole draft model).\n",
              "## Against a draft model (layout of the paper's Table 2)\n",
              "| method | setting | target calls | draft calls | tokens per target call | speedup | extra parameters |",
              "|---|---|---|---|---|---|---|"]
    for r in [r for r in rows if r["method"] == "two-model"] + [best_of(rows, "ss")]:
        if r:
            lines.append(f"| {METHOD_NAMES[r['method']]} | {setting(r)} | {r['forward_calls']} | {r['draft_calls']} | "
                         f"{r['tokens_per_call']:.2f} | {r['speedup']:.2f}x | {extra.get(r['method'], 0):,} |")
    lines += ["\n## Every setting\n",
              "| decoder | speedup | CR | tokens/call | nodes (after pruning) | ms/token | acceptance at depth 1..γ "
              "| outputs ≠ greedy |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {fmt(r['speedup'])}{'x' if r['speedup'] else ''} | {fmt(r['cr_ratio'])} | "
                     f"{r['tokens_per_call']:.2f} | {r['tree_size']:.1f} ({r['tree_size_after_pruning']:.1f}) | "
                     f"{r['ms_per_token']:.2f} | {' '.join(fmt(a) for a in r['acceptance'])} | "
                     f"{r['outputs_differing']} |")
    return lines


def plot_comparison(rows: list[dict], out: str, title: str):
    """speedup_vs_k.png (SS and Medusa, with and without pruning) and acceptance_ss_vs_medusa.png (k = 1)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, stream_pass, color in (("ss", "tree", "C0"), ("ss", "accepted", "C2"), ("medusa", "tree", "C1")):
        for pruned, style in ((False, "o-"), (True, "s--")):
            pts = [(r["k"], r["speedup"]) for r in rows if r["method"] == method and r["stream_pass"] == stream_pass
                   and bool(r["prune_threshold"]) == pruned]
            if pts:
                label = (METHOD_NAMES[method] + (f" ({stream_pass} pass)" if method == "ss" else "")
                         + (", pruned" if pruned else ""))
                ax.plot(*zip(*pts), style, color=color, label=label)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(sorted({r["k"] for r in rows if "k" in r}))  # the k of every tree setting run
    ax.set(xlabel="k (top-k per depth; trees capped at 8/16/24 nodes for k=2/3/4)", ylabel="wall-time speedup",
           title=f"{title}: speedup vs k")
    ax.legend(fontsize=7)
    fig.tight_layout(), fig.savefig(os.path.join(out, "speedup_vs_k.png"), dpi=120), plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, color in (("ss", "C0"), ("medusa", "C1")):
        r = next((r for r in rows if r["method"] == method and r["k"] == 1 and not r["prune_threshold"]), None)
        if r:
            ax.plot(range(1, len(r["acceptance"]) + 1), [a or 0 for a in r["acceptance"]], "o-", color=color,
                    label=METHOD_NAMES[method])
    ax.set_xticks(range(1, max(len(r["acceptance"]) for r in rows) + 1))
    ax.set(xlabel="depth j", ylabel="acceptance at depth j (given j-1 accepted)", ylim=(0, 1.05),
           title=f"{title}: per-depth acceptance, k = 1")
    ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(os.path.join(out, "acceptance_ss_vs_medusa.png"), dpi=120), plt.close(fig)


def write_comparison(out: str, title: str, header: list[str], rows: list[dict], extra: dict, quality: dict | None,
                     results: dict):
    """OUT/results.json (`results` + rows, extra parameters, quality), results.md (`header`, then the tables of
    comparison_markdown) and the plots of plot_comparison."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(dict(results, rows=rows, extra_parameters=extra, quality=quality), f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(header + comparison_markdown(rows, extra, quality)) + "\n")
    plot_comparison(rows, out, title)
    print(f"wrote {out}/results.json, results.md, speedup_vs_k.png, acceptance_ss_vs_medusa.png")


# ---------------------------------------------------------------------------------------------------------
# `bench.py ablation`: training recipes side by side
# ---------------------------------------------------------------------------------------------------------

def write_ablation(args: argparse.Namespace, rows: dict, n_eval: int, n_speed: int, machine: str):
    """RESULTS_DIR/<task>/ablation[_<split>][_<seen|unseen>_values][_draftvocab<N>].{md,json}: each model's quality
    and realisation, each recipe's decoding statistics, first samples; the command line rebuilt from `args`, and the
    machine the speeds were measured on."""
    out = os.path.join(args.results_dir, args.task)
    os.makedirs(out, exist_ok=True)
    name = "ablation" if args.split == "test" else f"ablation_{args.split}"
    name += ("" if args.mr_values == "all" else f"_{args.mr_values}_values") + (
        f"_draftvocab{args.draft_vocab}" if args.draft_vocab else "")
    metrics = list(rows["ntp"]["quality"])
    slots = list(rows["ntp"]["realisation"])
    subset = {"all": "", "seen": ", the MRs whose values all occur in training",
              "unseen": ", the MRs with a value never seen in training"}[args.mr_values]
    lines = [f"# {args.task}: training recipes side by side ({args.split} split{subset})\n",
             f"Command: `python bench.py ablation --task {args.task} --split {args.split} --recipes "
             f"{' '.join(args.recipes)} --n-eval {args.n_eval} --prompts {args.prompts} --repeats {args.repeats}"
             f"{' --mr-values ' + args.mr_values if args.mr_values != 'all' else ''}"
             f"{' --device ' + args.device if args.device != 'cpu' else ''}"
             f"{' --draft-vocab ' + str(args.draft_vocab) if args.draft_vocab else ''}`: {n_eval} examples for "
             f"quality, the first {n_speed} for speed, greedy, batch 1, {torch.get_num_threads()} thread(s), "
             f"{args.device}. Tokens per call count the root/bonus token; acceptance at depth j is P(depth j accepted "
             "| depth j-1 accepted), nodes cut by the cap counting as rejections"
             + (f"; the streams score the {args.draft_vocab} most frequent tokens of the training completions"
                if args.draft_vocab else "") + f".\n\nMachine: {machine}.\n",
             "| model | " + " | ".join(metrics + [f"{s} realised %" for s in slots]) + " | outputs = next-token model's |",
             "|---|" + "---|" * (len(metrics) + len(slots) + 1)]
    for model, r in rows.items():
        lines.append(f"| {model} | " + " | ".join([f"{r['quality'][m]:.2f}" for m in metrics]
                                                 + [fmt(r['realisation'][s], 1) for s in slots])
                     + f" | {r['same_as_ntp']}/{n_eval} |")
    lines += ["\n| recipe | setting | CR | tokens/call | acceptance at depth 1..γ | speedup |", "|---|---|---|---|---|---|"]
    for recipe in args.recipes:
        for setting_name, s in rows[recipe]["settings"].items():
            lines.append(f"| {recipe} | {setting_name} | {s['cr_ratio']:.2f} | {s['tokens_per_call']:.2f} | "
                         + " ".join(fmt(a) for a in s["acceptance"]) + f" | {s['speedup']:.2f}x |")
    lines += ["\nSamples (first examples):\n"] + [f"- {model}: " + " / ".join(f"`{t[:200]}`" for t in r["samples"])
                                                  for model, r in rows.items()]
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(dict(setup={k: v for k, v in vars(args).items()}, rows=rows), f, indent=1)
    print("\n".join(lines))
    print(f"wrote {out}/{name}.md, {name}.json")


# ---------------------------------------------------------------------------------------------------------
# `bench.py params`: parameter accounting
# ---------------------------------------------------------------------------------------------------------

def write_params(counts: dict[str, dict[str, int]], gamma: int, adapter_rank: int, path: str):
    """RESULTS_DIR/params.md, printed too: per config its GPT.parameter_counts (base, LoRA, stream embeddings,
    pruning adapter, stream adapter, 4 Medusa heads) and what SS adds in shared / frozen mode (ss_shared, ss_frozen)."""
    lines = [f"γ = {gamma} streams on N_s = 2 MSA blocks, LoRA r = 32 on attention and MLP, rank-8 pruning "
             f"adapter; frozen mode adds a rank-{adapter_rank} stream-only adapter on the MSA blocks' projections\n",
             "| config | base | LoRA (r=32) | stream embeddings | pruning adapter | stream adapter (frozen mode) "
             "| SS extra, shared / frozen mode | 4 Medusa heads | Medusa / SS, shared / frozen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, c in counts.items():
        shared, frozen, medusa = c["ss_shared"], c["ss_frozen"], c["medusa_4_heads"]
        lines.append(f"| {name} | {c['base']:,} | {c['lora']:,} | {c['stream_emb']:,} | {c['prune_adapter']:,} | "
                     f"{c['stream_adapter']:,} | {shared:,} / {frozen:,} | {medusa:,} | "
                     f"{medusa / shared:,.0f}x / {medusa / frozen:,.0f}x |")
    print("\n".join(lines))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("# Extra parameters: Speculative Streaming vs Medusa\n\nCommand: `python bench.py params`. Medusa "
                "heads as in its paper: a d x d ResBlock and an own d x V LM head each.\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------------------
# `bench.py batch`: throughput against batch size
# ---------------------------------------------------------------------------------------------------------

def write_batch(rows: list[dict], out: str, name: str, header: str):
    """results/batch/<name>.{json,md,png}: tokens/s against batch size, and SS's speedup and CR against it."""
    plt = pyplot()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(dict(header=header, rows=rows), f, indent=1)
    lines = [f"# Batched decoding: {name}\n", header + "\n",
             "| batch | decoder | tokens/s | speedup over batched AR | CR of the batch | CR per row | tokens/call |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['decoder']} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}x | {r['cr_batch']:.2f} "
              f"| {r['cr_rows']:.2f} | {r['tokens_per_call']:.2f} |" for r in rows]
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    decoders = list(dict.fromkeys(r["decoder"] for r in rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, d in enumerate(decoders):  # one colour per decoder in both panels
        rs = [r for r in rows if r["decoder"] == d]
        sizes = [r["batch"] for r in rs]
        ax1.plot(sizes, [r["tokens_per_s"] for r in rs], "o-", color=f"C{i}", label=d)
        if d != "ar":
            ax2.plot(sizes, [r["speedup"] for r in rs], "o-", color=f"C{i}", label=f"{d}: speedup")
            if d.endswith(" (tree)"):  # CR is the same for both stream passes: draw it once per setting
                ax2.plot(sizes, [r["cr_batch"] for r in rs], "x--", color=f"C{i}",
                         label=d.removesuffix(" (tree)") + ": CR of the batch")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2), ax.set_xticks(sizes, [str(b) for b in sizes]), ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("new tokens / s"), ax1.set_title(f"{name}: throughput"), ax1.legend(fontsize=7)
    ax2.axhline(1.0, color="gray", lw=0.8)
    ax2.set_ylabel("SS / batched AR"), ax2.set_title("speedup (o) and CR of the batch (x)"), ax2.legend(fontsize=6)
    fig.tight_layout(), fig.savefig(os.path.join(out, f"{name}.png"), dpi=120), plt.close(fig)
    print(f"wrote {out}/{name}.json, {name}.md, {name}.png")


# ---------------------------------------------------------------------------------------------------------
# `bench.py sampling`: acceptance against temperature, the distribution test
# ---------------------------------------------------------------------------------------------------------

def plot_sampling(rows: list[dict], tests: dict | None, exact: torch.Tensor | None, out: str, title: str):
    """results/sampling/<title>_acceptance.png, and <title>_distribution.png unless tests is None."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for rule, style in zip(ACCEPTANCE_RULES, ("o-", "s--", "^:")):
        rs = [r for r in rows if r["acceptance"] in (rule, "greedy")]
        ax1.plot([r["temperature"] for r in rs], [r["tokens_per_call"] for r in rs], style,
                 label=rule + ("" if rule == "recursive" else " (LOSSY)"))
    ax1.set_xlabel("temperature"), ax1.set_ylabel("tokens per call (root included)"), ax1.legend(fontsize=7)
    for r in [r for r in rows if r["acceptance"] in ("recursive", "greedy")]:
        acc = [a for a in r["depth_acceptance"] if a is not None]
        ax2.plot(range(1, len(acc) + 1), acc, "o-", label=f"T={r['temperature']}")
    ax2.set_xlabel("depth j"), ax2.set_ylabel("acceptance P(depth j | depth j-1)"), ax2.set_ylim(0, 1.02)
    ax2.set_xticks(range(1, len(rows[0]["depth_acceptance"]) + 1))
    ax2.legend(fontsize=7), ax2.set_title("recursive rejection (lossless)", fontsize=9)
    ax1.set_title(f"{title}: tokens per call vs temperature", fontsize=9)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(os.path.join(out, f"{title}_acceptance.png"), dpi=120), plt.close(fig)
    if tests is None:
        return
    top = exact.flatten().argsort(descending=True)[:30]
    fig, ax = plt.subplots(figsize=(11, 3.8))
    ax.bar(range(len(top)), exact.flatten()[top], color="lightgray", label="target (exact, by enumeration)")
    for (rule, t), marker in zip(tests.items(), ("o", "x", "^")):
        ax.plot(range(len(top)), t["frequencies"][top], marker, ms=5, ls="none",
                label=f"{rule}{'' if rule == 'recursive' else ' (LOSSY)'}: TV {t['tv']:.3f} (bound {t['tv_bound']:.3f}), "
                      f"chi-square p = {t['p_value']:.2g}")
    ax.set_xlabel("the 30 most probable (x1, x2, x3) of the target"), ax.set_ylabel("probability / frequency")
    ax.set_title(f"{title}: distribution test, first 3 sampled tokens, {next(iter(tests.values()))['n']} samples "
                 "per rule", fontsize=9)
    ax.legend(fontsize=7), ax.grid(alpha=0.3, axis="y")
    fig.tight_layout(), fig.savefig(os.path.join(out, f"{title}_distribution.png"), dpi=120), plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# `bench.py profile`: one decode call, part by part
# ---------------------------------------------------------------------------------------------------------

PROFILE_NOTE = (
    "The calls are generate.py's own (generate_autoregressive, generate_speculative), timed through hooks that wrap "
    "the functions their loops call, for the duration of the profile: the model's embed, lower, upper, "
    "early_exit_logits, streams_at, draft_logits and LM head, the tree functions, KVCache.commit / select_pending and "
    "generate.py's argmax and top-k drafting helpers. A hooked function called inside another counts toward the "
    "outer one's part (the LM head of drafting is drafting). Python bookkeeping is what no hook covers: the loop's "
    "own Python and the few tensor operations generate.py runs inline (e.g. the softmax of the early-exit logits), "
    "plus the hooks' own overhead, given in two rows: measured (the whole call minus the same call without the "
    "hooks; on a busy machine this difference is noisy) and estimated (the number of hooked calls times the cost of "
    "one hook on a no-op). The "
    "bare forward runs the same rows through the same model functions with the masks given: the drafted rows through "
    "embed and the lower blocks (and the early-exit head when pruning), the kept rows through the MSA blocks (with γ "
    "streams on every node in the tree pass; the γ stream rows of the accepted node after verification in the "
    "accepted pass), the LM head on the kept rows and on the γ stream rows. call / bare - 1 is the share of "
    "bookkeeping that is not arithmetic. profile_before.md next to this file holds the tables of an earlier version "
    "of the code, before the inference layout and the streams-only pass (each timed call then followed a call of "
    "another setting).")


def write_profile(profile: dict, path: str, title: str, command: str):
    """RESULTS_DIR/<toy|task>/profile.md, printed too: per setting the median time of each part of its timed call
    (share of the call), the whole call with and without the timing hooks, the bare forward, and the call's sizes."""
    cols, hook_us = profile["columns"], profile["hook_cost"] * 1e6
    ar = cols["AR step"]["unhooked"]
    lines = [f"# Profile of one decode call: {title}", "", f"    {command}", "",
             f"One context: a test prompt decoded greedily to the middle of its output ({profile['context_len']} "
             f"tokens), γ = {profile['gamma']}. Each setting decodes it with generate.py and times its second decode "
             "call, which follows a call of the same setting as in a decode loop; the settings take turns, so that "
             "load on the machine hits all alike. Median per part over the calls (so the parts need not add up to "
             f"the median whole call exactly). {torch.get_num_threads()} thread(s), device {profile['device']}. "
             "Times in ms (share of the call).", "", f"Machine: {profile['machine']}.", "",
             f"Settings: {profile['settings']}.", "",
             "| part | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for part in profile["parts"]:
        if any(part in c["parts"] for c in cols.values()):
            lines.append(f"| {part} | " + " | ".join(
                f"{c['parts'][part] * 1e3:.3f} ({100 * c['parts'][part] / c['total']:.0f}%)" if part in c["parts"]
                else "-" for c in cols.values()) + " |")
    rows = [("**whole call**", lambda c: f"**{c['total'] * 1e3:.3f}**"),
            ("the same call without the timing hooks", lambda c: f"{c['unhooked'] * 1e3:.3f}"),
            ("the timing hooks' overhead: whole call - the same call without them",
             lambda c: f"{(c['total'] - c['unhooked']) * 1e3:.3f}"),
            ("the same, estimated: hooked calls x the cost of one hook on a no-op",
             lambda c: f"{c['hooked_calls']} x {hook_us:.1f} µs = {c['hooked_calls'] * hook_us / 1e3:.3f}"),
            ("bare forward of the same rows", lambda c: f"{c['bare'] * 1e3:.3f}"),
            ("call / bare forward (without the hooks)", lambda c: f"{c['unhooked'] / c['bare']:.2f}x"),
            ("call / AR step (without the hooks)", lambda c: f"{c['unhooked'] / ar:.2f}x"),
            ("cache entries before the call", lambda c: f"{c['cache_len']}"),
            ("tree nodes drafted / after pruning", lambda c: f"{c['n_drafted']} / {c['n_kept']}"),
            ("tokens committed by the call (root included)", lambda c: f"{c['accepted']}")]
    lines += [f"| {name} | " + " | ".join(cell(c) for c in cols.values()) + " |" for name, cell in rows]
    lines += ["", PROFILE_NOTE]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[6:]))
    print(f"wrote {path}")
