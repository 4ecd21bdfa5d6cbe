"""Validate another implementation of Speculative Streaming against this one (the guide: VALIDATING.md).

    python validate.py export CHECKPOINT OUT_DIR          # portable weights: model.safetensors, config.json, vocabulary
    python validate.py trace --model DIR --prompts FILE --out FILE [--k 2 --tree-cap N --prune-threshold P]
    python validate.py compare REFERENCE CANDIDATE        # the first divergence and its likely cause
    python validate.py outputs --model DIR --answers FILE # final outputs, accepted lengths and calls only
    python validate.py minimal --model DIR --prompts FILE --out FILE   # specstream_minimal.py as "the other one"
    python validate.py reference                          # retrain the small toy model, rewrite reference/

Exit status: 0 the candidate agrees, 1 it diverges (compare) or fails (outputs), 2 bad input (a file that is not a
trace, a prompts or answers file, a missing file): one line `error: <what> — <how to fix>`.
The work is done by the `validation` package; this file is its command line.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from checkpoint import export_portable
from cli import ArgumentParser, non_negative_float, positive_int
from train_toy import ToyRecipe
from validation.compare import LOGPROB_ATOL, compare_command
from validation.minimal import minimal_trace
from validation.outputs import check_outputs
from validation.records import InputError, write_jsonl
from validation.traces import trace


def export(checkpoint: str, out_dir: str, toy_vocabulary: bool = False) -> str:
    """`validate.py export`: the portable format (checkpoint.export_portable); a checkpoint without a vocabulary
    gets train_toy.py's word list with toy_vocabulary=True."""
    vocabulary = None
    if toy_vocabulary:
        from train_toy import vocabulary as toy_words
        vocabulary = toy_words()
    return export_portable(checkpoint, out_dir, vocabulary)


# ------------------------------------------------------------------------------------------------------------
# the committed reference
# ------------------------------------------------------------------------------------------------------------

REFERENCE_TRAINING = ToyRecipe(n_stories=1000, n_layer=3, n_head=2, n_embd=64, block_size=96, train_block=48,
                               batch_size=16, ss_batch_size=16, gamma=4, n_msa_layers=2, lora_rank=8,
                               pretrain_steps=300, ss_steps=300, prune_steps=60, threads=1)
REFERENCE_TRACES = {  # file name -> decoding settings
    "trace_k2.jsonl": dict(k=2),
    "trace_k3_cap10_pruned.jsonl": dict(k=3, tree_cap=10, prune_threshold=0.05),
}


def make_reference(out_dir: str = "reference", work_dir: str = "checkpoints/reference", n_prompts: int = 6,
                   max_new_tokens: int = 40, recipe: ToyRecipe = REFERENCE_TRAINING) -> str:
    """Train the small toy model of `recipe` (about a minute on one core), export it, write prompts and golden
    traces."""
    from train_toy import ToyData, train_pipeline
    train_pipeline(recipe, work_dir)
    export(os.path.join(work_dir, f"ss_gamma{recipe.gamma}_pruned.pt"), os.path.join(out_dir, "model"))
    data = ToyData(recipe.n_stories, recipe.seed)
    write_jsonl(os.path.join(out_dir, "prompts.jsonl"), [
        dict(id=f"p{i}", prompt_ids=p, max_new_tokens=max_new_tokens, eos_id=data.eos_id)
        for i, p in enumerate(data.prompts(n_prompts))])
    for name, settings in REFERENCE_TRACES.items():
        trace(os.path.join(out_dir, "model"), os.path.join(out_dir, "prompts.jsonl"), os.path.join(out_dir, name),
              **settings)
    return out_dir


# ------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="validate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (1 is fastest for the tiny reference model)")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="checkpoint -> model.safetensors (HF GPT-2 names) + config.json + vocabulary")
    e.add_argument("checkpoint")
    e.add_argument("out_dir")
    e.add_argument("--toy-vocabulary", action="store_true",
                   help="the checkpoint has no vocabulary entry: write train_toy.py's word list")
    t = sub.add_parser("trace", help="golden trace of generate_speculative on a prompts file")
    t.add_argument("--model", required=True, help="an exported folder (validate.py export)")
    t.add_argument("--prompts", required=True, help="JSON lines: id, prompt_ids, max_new_tokens, eos_id")
    t.add_argument("--out", required=True)
    t.add_argument("--gamma", type=int, default=None, help="streams used (default: all)")
    t.add_argument("--k", type=positive_int, default=1, help="top-k per stream")
    t.add_argument("--tree-cap", type=int, default=None)
    t.add_argument("--prune-threshold", type=float, default=None)
    t.add_argument("--stream-pass", choices=["tree", "accepted"], default="tree")
    t.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    c = sub.add_parser("compare", help="first divergence of CANDIDATE from REFERENCE; exit 0 agree, 1 divergence, "
                                       "2 not a trace")
    c.add_argument("reference")
    c.add_argument("candidate")
    c.add_argument("--atol", type=non_negative_float, default=LOGPROB_ATOL, help="tolerance on log-probabilities")
    o = sub.add_parser("outputs", help="outputs, accepted lengths and forward calls against the reference's run "
                                       "with the same settings; exit 0 pass, 1 fail, 2 bad input")
    o.add_argument("--model", required=True)
    o.add_argument("--answers", required=True, help="JSON lines: a settings header, then prompt_id, output_ids, "
                                                    "accept_lengths, forward_calls per prompt")
    o.add_argument("--prompts", default="reference/prompts.jsonl", help="every prompt here needs one answer")
    m = sub.add_parser("minimal", help="the same trace written by specstream_minimal.py (full tree, no pruning)")
    m.add_argument("--model", required=True)
    m.add_argument("--prompts", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--k", type=positive_int, default=1, help="top-k per stream")
    m.add_argument("--answers", default=None, help="also write its outputs as an answers file here")
    r = sub.add_parser("reference", help="retrain the toy reference model and rewrite reference/")
    r.add_argument("--out-dir", default="reference")
    r.add_argument("--work-dir", default="checkpoints/reference", help="training checkpoints (resumed if present)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        return run_command(args)
    except (ValueError, OSError) as e:  # bad input (InputError: a file the kit reads), named with its fix
        message = str(e) if isinstance(e, InputError) or " — " in str(e) else f"{e} — check the command's arguments"
        print(f"error: {message}")
        return 2


def run_command(args: argparse.Namespace) -> int:
    """Run one subcommand; returns the exit status."""
    if args.command == "export":
        print(f"wrote {export(args.checkpoint, args.out_dir, args.toy_vocabulary)}")
    elif args.command == "trace":
        out = trace(args.model, args.prompts, args.out, args.k, args.tree_cap, args.prune_threshold, args.gamma,
                    args.stream_pass, args.dtype)
        print(f"wrote {out}")
    elif args.command == "compare":
        return compare_command(args.reference, args.candidate, args.atol)
    elif args.command == "outputs":
        ok, lines = check_outputs(args.model, args.answers, args.prompts)
        print("\n".join(lines))
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    elif args.command == "minimal":
        print(f"wrote {minimal_trace(args.model, args.prompts, args.out, args.k, args.answers)}")
    elif args.command == "reference":
        print(f"wrote {make_reference(args.out_dir, args.work_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
