"""Benchmarks: tokens per call, CR ratio, per-depth acceptance and wall-time speedup of Speculative Streaming
over the KV-cached greedy loop. Never a test: run it yourself and read the tables. One subcommand per benchmark;
`python bench.py SUBCOMMAND --help` lists its flags. This file is the command line only: the benchmarks are the
benchmarks/ package (timing harness, speed, tasks, profile, sampling, throughput, parameters, reports).

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
    python bench.py study --task e2e --recipes ss_frozen_self_s300 ss_frozen_self --values 300 1200 --label steps
                                   # one training setting against CR and acceptance on the dev split (no timing);
                                   # writes results/<task>/study_<name>.{md,json,png}
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
import functools

import torch

from cli import ArgumentParser, check_device, positive_int
from benchmarks.params import run_params
from benchmarks.profile import run_profile
from benchmarks.sampling import run_sampling
from benchmarks.speed import run_rows, run_speed, run_toy
from benchmarks.study import run_study
from benchmarks.tasks import METHODS, run_ablation, run_baselines, run_draft_cost, run_task
from benchmarks.throughput import run_batch
from generate import DTYPES

RUNNERS = {"speed": run_speed, "toy": run_toy, "params": run_params, "rows": run_rows, "task": run_task,
           "baselines": run_baselines, "draftcost": run_draft_cost, "batch": run_batch, "ablation": run_ablation,
           "sampling": run_sampling, "profile": run_profile, "study": run_study}  # subcommand -> the benchmark it runs

# Flags that several subcommands use, each defined once; parser() gives every subcommand the ones it reads.
SHARED_FLAGS = {
    "--toy-dir": dict(default="checkpoints/toy", help="train_toy.py's --out-dir"),
    "--toy-gamma": dict(type=positive_int, default=6, help="γ of the toy checkpoint to load"),
    "--n-stories": dict(type=positive_int, default=4000, help="as given to train_toy.py"),
    "--seed": dict(type=int, default=0, help="as given to train_toy.py"),
    "--prompts": dict(type=positive_int, default=20, help="number of held-out prompts"),
    "--max-new-tokens": dict(type=positive_int, default=60,
                             help="new tokens per prompt at most (toy model; `sampling`: E2E too)"),
    "--repeats": dict(type=positive_int, default=3, help="timed repetitions (median)"),
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
    "--dtype": dict(choices=list(DTYPES), default="float32",
                    help="decoding precision: the model is loaded in float32, LoRA merged, then cast (SS equals AR "
                         "at the same precision; differences from float32 are counted)"),
    "--draft-vocab": dict(type=int, default=0, metavar="N",
                          help="the drafters (streams, Medusa heads) score only the N most frequent tokens of the "
                               "training text; verification keeps every token (0 = the full vocabulary)"),
}
TOY = ("--toy-dir", "--toy-gamma", "--n-stories", "--seed")  # the toy checkpoint and its stories
RECIPE = ("--task-dir", "--mode", "--stream-targets", "--tag")  # which SS / Medusa checkpoint of a task


def parser() -> argparse.ArgumentParser:
    """`bench.py SUBCOMMAND [flags]`: one subcommand per benchmark, each with the flags it reads."""
    p = ArgumentParser(prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="what", required=True,
                                help="which benchmark (see above); `bench.py SUBCOMMAND --help` lists its flags")
    command = functools.partial(subcommand, commands)
    toy_commands(command)
    task_commands(command)
    return p


def subcommand(commands, name: str, *shared: str) -> argparse.ArgumentParser:
    """The subcommand `name` with the SHARED_FLAGS it reads, and --threads."""
    c = commands.add_parser(name, description=RUNNERS[name].__doc__)
    for flag in shared:
        c.add_argument(flag, **SHARED_FLAGS[flag])
    c.add_argument("--threads", type=positive_int, default=1, help="torch threads, fixed for the whole run")
    return c


def toy_commands(command):
    """The benchmarks of the toy model (train_toy.py) and of parameters."""
    command("speed", *TOY, "--prompts", "--max-new-tokens", "--repeats", "--device", "--dtype", "--draft-vocab")
    c = command("toy", *TOY, "--prompts", "--max-new-tokens", "--repeats", "--prune-threshold", "--device")
    c.add_argument("--out", default="results/toy", help="output folder")
    c.add_argument("--tree-cap", type=int, default=64, help="node cap of the trees in the γ x k grid")
    c.add_argument("--separate", type=int, nargs="*", default=[2, 4], help="γ of separately trained models")
    c = command("params", "--results-dir")
    c.add_argument("--gamma-params", type=int, default=4, help="γ of the accounting table")
    c.add_argument("--stream-adapter-params", type=int, default=32,
                   help="rank of the frozen mode's stream adapter in the accounting table")
    command("rows", "--toy-dir", "--toy-gamma", "--device")
    command("baselines", "--toy-dir", "--n-stories", "--seed", "--prompts", "--max-new-tokens",
            "--repeats", "--prune-threshold", "--results-dir", "--device")
    c = command("batch", *TOY, "--prompts", "--max-new-tokens", "--repeats", *RECIPE, "--data-dir",
                "--results-dir", "--device")
    c.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16], help="batch sizes")
    c = command("sampling", *TOY, "--prompts", "--max-new-tokens", *RECIPE, "--data-dir",
                "--results-dir", "--device")
    c.add_argument("--sampling-gamma", type=int, default=4, help="γ of the temperature sweep")
    c.add_argument("--sampling-k", type=int, default=2, help="sampled siblings per node")
    c.add_argument("--sampling-cap", type=int, default=16, help="node cap of the sweep's trees")
    c.add_argument("--dist-samples", type=int, default=2000,
                   help="samples per acceptance rule in the distribution test")
    c.add_argument("--top-k", type=int, default=None, help="top-k of target and drafts (T > 0)")
    c.add_argument("--top-p", type=float, default=None, help="top-p of target and drafts (T > 0)")


def task_commands(command):
    """The benchmarks of the real-task models (train_task.py), and the profile (toy or task)."""
    c = command("task", "--task", *RECIPE, "--data-dir", "--results-dir", "--n-eval", "--prompts",
                "--repeats", "--prune-threshold", "--device", "--dtype", "--draft-vocab")
    c.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="decoders compared with the autoregressive baseline")
    command("draftcost", "--task", *RECIPE, "--device")
    c = command("ablation", "--task", "--task-dir", "--data-dir", "--results-dir", "--n-eval",
                "--prompts", "--repeats", "--device", "--draft-vocab")
    c.add_argument("--recipes", nargs="+", default=["ss_shared_data", "ss_shared_self", "ss_frozen_data",
                                                    "ss_frozen_self"],
                   help="SS checkpoints <task>_<recipe>_pruned.pt compared with the next-token model")
    c.add_argument("--split", choices=["test", "dev"], default="test", help="dev for model selection")
    c.add_argument("--mr-values", choices=["all", "seen", "unseen"], default="all",
                   help="E2E: only the MRs whose attribute values all occur in training (seen) or not (unseen)")
    c = command("profile", *TOY, "--max-new-tokens", "--task", *RECIPE, "--data-dir", "--results-dir",
                "--prune-threshold", "--device", "--dtype", "--draft-vocab")
    c.add_argument("--toy", action="store_true", help="the toy model instead of --task's SS model")
    c.add_argument("--profile-calls", type=positive_int, default=200, help="timed calls (median; + 10%% warm-up)")
    c.set_defaults(prompts=1)  # the profile decodes the first held-out prompt
    c = command("study", "--task", "--task-dir", "--data-dir", "--results-dir", "--prompts", "--device")
    c.add_argument("--recipes", nargs="+", required=True, help="checkpoints <task>_<recipe>_pruned.pt (SS or Medusa)")
    c.add_argument("--values", type=float, nargs="+", required=True, help="the setting's value of each recipe")
    c.add_argument("--label", required=True, help="what the values are, e.g. 'stream training steps'")
    c.add_argument("--name", required=True, help="results/<task>/study_<name>.*")
    c.add_argument("--split", choices=["test", "dev"], default="dev", help="dev for model selection")
    c.add_argument("--mark", type=float, default=None, help="a value to mark on the plot (e.g. the paper's)")
    c.add_argument("--mark-label", default="", help="the mark's legend")
    c.add_argument("--draft-vocabs", type=int, nargs="+", default=None, metavar="N",
                   help="the --draft-vocab of each recipe, one number per recipe (0 = every token; default: all 0)")
    c.set_defaults(prompts=1000)  # every prompt of the split


def main(argv: list[str] | None = None):
    """Parse the command line, fix the thread count, run the benchmark; bad input ends as one `error:` line."""
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        check_device(getattr(args, "device", "cpu"))
        RUNNERS[args.what](args)
    except (ValueError, FileNotFoundError) as e:  # a checkpoint or data file missing or refused, a bad setting
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
