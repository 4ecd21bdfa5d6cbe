"""Decode one prompt with a trained checkpoint, by Speculative Streaming and by greedy autoregressive decoding,
and check that both give the same output; --show draws every call's tree.

    python decode.py --model checkpoints/toy --prompt "the fox" --show
    python decode.py --help
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import torch

from benchmarks.precision import first_difference, near_tie
from checkpoint import load_model, read_checkpoint
from cli import ArgumentParser, positive_int, warn
from generate import DTYPES, StepTrace, cast_for_decoding, generate_autoregressive, generate_speculative
from model import GPT


CLI_HELP = """Decode one prompt with a trained toy or task model, by Speculative Streaming and by greedy
autoregressive decoding, and check that both give the same output.

    python decode.py --model checkpoints/toy --prompt "the fox"
    python decode.py --model checkpoints/tasks --mr "name[Aromi], eatType[coffee shop], area[city centre]" --show
    python decode.py --model checkpoints/tasks/sql_ss_frozen_self_pruned.pt --prompt "..." --k 3 --tree-cap 16

--model is a checkpoint file, or a folder: then the SS checkpoint with the pruning adapter inside it
(ss_*_pruned.pt from train_toy.py, <task>_ss_*_pruned.pt from train_task.py), the most recently written one
when there are several (the choice is printed; name the file to pick another).
Toy models: the prompt is words of the toy language separated by spaces (an <eos> is put in front, as in
training). Task models: the prompt text is encoded with the checkpoint's vocabulary; an E2E prompt is a meaning
representation (--mr, or --prompt), whose name and near values are delexicalised before encoding and put back
into the output. --dtype bfloat16 (or float16) decodes at that precision: the model is loaded in float32, LoRA
merged, then cast, and SS is compared with AR at the same precision; where they differ, the first difference is
checked against a float64 copy of the model (a near tie: the two tokens' logits closer than the precision's
rounding). Exit status 1 if the speculative output ever differs from the greedy one.
"""


def find_checkpoint(path: str) -> str:
    """`path` itself if it is a file; for a folder, its newest SS checkpoint with a pruning adapter."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise SystemExit(f"error: checkpoint {path} does not exist — train one first (python train_toy.py, or "
                         f"python train_task.py --task e2e) or give the path of a .pt file")
    found = sorted(set(glob.glob(os.path.join(path, "ss_*_pruned.pt")) + glob.glob(os.path.join(path, "*_ss_*_pruned.pt"))),
                   key=os.path.getmtime)
    if not found:
        raise SystemExit(f"error: {path} holds no Speculative Streaming checkpoint (ss_*_pruned.pt or "
                         f"<task>_ss_*_pruned.pt): train one, or give the path of a .pt file")
    if len(found) > 1:
        print(f"{len(found)} SS checkpoints in {path}: using the newest (name a file to pick another)")
    return found[-1]


class PromptCodec:
    """Text <-> token ids with a checkpoint's vocabulary: toy words, or a task's compact GPT-2 vocabulary."""

    def __init__(self, ckpt: dict, path: str, vocab_size: int):
        vocabulary = ckpt.get("vocabulary")
        self.task = ckpt.get("task")
        if isinstance(vocabulary, list):  # train_toy.py: the toy words
            self.words, self.index = vocabulary, {w: i for i, w in enumerate(vocabulary)}
            if "<eos>" not in self.index:
                raise SystemExit(f"error: the vocabulary of {path} has no <eos> word: it is not a toy vocabulary of "
                                 f"train_toy.py — train the model again")
            self.eos_id, size = self.index["<eos>"], len(vocabulary)
        elif isinstance(vocabulary, dict):  # train_task.py: a CompactVocab
            from data import EOS, CompactVocab
            self.words, self.vocab, self.eos_id = None, CompactVocab.from_dict(vocabulary), EOS
            size = self.vocab.size
        else:
            raise SystemExit(f"error: {path} holds no vocabulary, so prompts cannot be encoded: use the final "
                             f"checkpoint of a run (the *_pruned.pt one), which stores it")
        if size != vocab_size:
            raise SystemExit(f"error: the vocabulary of {path} has {size} tokens but its model has "
                             f"vocab_size={vocab_size}: the checkpoint is inconsistent — train the model again")
        self.slots: dict[str, str] = {}

    def encode(self, text: str, is_mr: bool, max_prompt_len: int) -> list[int]:
        if self.words is not None:
            if is_mr:
                raise SystemExit("error: --mr is for E2E task models; a toy model takes --prompt WORDS")
            unknown = [w for w in text.split() if w not in self.index]
            if unknown:
                raise SystemExit(f"error: unknown word(s) {unknown} for the toy vocabulary; the toy words are: "
                                 + " ".join(self.words))
            ids = [self.index[w] for w in text.split()]
            return ids if ids[:1] == [self.eos_id] else [self.eos_id] + ids
        from data import UNK, Example, delexicalise, mr_problems, prompt_ids
        if is_mr and self.task != "e2e":
            raise SystemExit(f"error: --mr is for E2E models, this one is a {self.task} model: use --prompt")
        example = Example(text, "", [])
        if self.task == "e2e":
            for problem in mr_problems(text):
                warn(f"{problem}: the model reads it as plain text and a name in it is not delexicalised "
                     f"(write attribute[value], e.g. name[Aromi])")
            example = delexicalise(example)
            self.slots = example.slots
        ids = prompt_ids(self.vocab, example, max_prompt_len)
        whole = len(self.vocab.encode(example.prompt)) + 1  # + SEP
        if whole > len(ids):
            warn(f"the prompt has {whole} tokens but only {len(ids)} fit before the output budget: its first "
                 f"{whole - len(ids)} tokens are cut (lower --max-new-tokens or shorten the prompt)")
        if UNK in ids:
            warn(f"{ids.count(UNK)} prompt token(s) never occurred in training and are encoded as UNK")
        return ids

    def decode(self, ids: list[int]) -> str:
        if self.words is not None:
            return " ".join(self.words[i] for i in ids)
        from data import relexicalise
        return relexicalise(self.vocab.decode(ids), self.slots)


def show_call(n: int, step: StepTrace, codec: PromptCodec, colour: bool) -> str:
    """One decode call's drafted tree, one node a line, indented by depth: `*` marks the accepted path, `x` a
    node removed by pruning; the tokens committed by the call follow."""
    accepted = {step.kept[i] for i in step.path}  # indices into the drafted tree
    lines = [f"call {n}: {len(step.drafted)} nodes drafted, {len(step.tree)} after pruning, "
             f"{len(step.path) - 1} draft(s) accepted, cache {step.cache_len}"]
    for i in range(len(step.drafted)):
        token, depth = int(step.drafted.tokens[i]), int(step.drafted.depths[i])
        mark = "*" if i in accepted else " " if i in step.kept else "x"
        line = f"  {mark} {'  ' * depth}{codec.decode([token])!r}  (depth {depth}, p={float(step.drafted.scores[i]):.3f})"
        if colour and mark != " ":
            line = f"\033[{'32' if mark == '*' else '2'}m{line}\033[0m"  # green: accepted, dim: pruned
        lines.append(line)
    lines.append(f"  committed: {codec.decode(step.committed)!r}")
    return "\n".join(lines)


def cli_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="decode.py", description=CLI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a checkpoint file, or a folder (its newest ss_*_pruned.pt)")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text (toy: words separated by spaces)")
    prompt.add_argument("--mr", help="E2E: a meaning representation, e.g. \"name[Aromi], eatType[coffee shop]\"")
    p.add_argument("--gamma", type=int, default=None, help="streams used for drafting (default: all of the model's)")
    p.add_argument("--k", type=int, default=1, help="top-k candidates per stream (tree branching)")
    p.add_argument("--tree-cap", type=int, default=None, help="keep only the N most probable tree nodes")
    p.add_argument("--prune-threshold", type=float, default=None, help="early-exit pruning threshold (e.g. 0.05)")
    p.add_argument("--stream-pass", choices=["tree", "accepted"], default="tree",
                   help="tree: streams on every tree node (the paper); accepted: streams of the accepted node only")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="default: the task's budget (toy: 60)")
    p.add_argument("--show", action="store_true", help="print each decode call's tree, accepted path marked")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (1 is fastest for these small models)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="decoding precision (loaded in float32, LoRA merged, then cast); AR runs at the same one")
    return p


def load(path: str) -> tuple[dict, GPT]:
    """The checkpoint dict and its model, ready to decode (eval mode, LoRA merged); one-line errors (and a warning
    for an unfinished checkpoint: checkpoint.load_model)."""
    try:
        ckpt = read_checkpoint(path)
        model = load_model(path).eval()
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if model.config.n_drafts == 0:
        raise SystemExit(f"error: {path} is a model without streams (n_streams=0): give a Speculative Streaming "
                         f"checkpoint (ss_*_pruned.pt or <task>_ss_*_pruned.pt)")
    model.merge_lora()  # inference: fold LoRA into the weights (the same for SS and AR)
    return ckpt, model


def main(argv: list[str] | None = None) -> int:
    """Decode one prompt (see CLI_HELP); returns the exit status: 0 when SS equals greedy AR, else 1."""
    args = cli_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    path = find_checkpoint(args.model)
    ckpt, model = load(path)
    cfg = model.config
    codec = PromptCodec(ckpt, path, cfg.vocab_size)
    try:
        cast_for_decoding(model, args.dtype)
    except ValueError as e:
        raise SystemExit(f"error: --dtype {args.dtype}: {e}") from None
    if args.max_new_tokens is None:
        from data import MAX_NEW_TOKENS
        args.max_new_tokens = MAX_NEW_TOKENS.get(codec.task, 60)
    if not args.max_new_tokens < cfg.block_size:
        raise SystemExit(f"error: --max-new-tokens={args.max_new_tokens} must be in 1..{cfg.block_size - 1}: the model's "
                         f"block_size={cfg.block_size} holds the prompt and the output together")
    prompt = codec.encode(args.prompt if args.mr is None else args.mr, args.mr is not None or codec.task == "e2e",
                          cfg.block_size - args.max_new_tokens + 1)
    options = dict(gamma=args.gamma, k=args.k, tree_cap=args.tree_cap, prune_threshold=args.prune_threshold,
                   stream_pass=args.stream_pass)
    try:
        ss = generate_speculative(model, prompt, args.max_new_tokens, eos_id=codec.eos_id, trace=args.show,
                                  **options)
        ar = generate_autoregressive(model, prompt, args.max_new_tokens, eos_id=codec.eos_id)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"model   : {path} (γ={cfg.n_drafts}, {cfg.n_layer} layers, {cfg.n_msa_layers} MSA)")
    print(f"prompt  : {codec.decode(prompt)!r} ({len(prompt)} tokens)")
    if args.show:
        colour = sys.stdout.isatty()
        for n, step in enumerate(ss.trace, 1):
            print(show_call(n, step, codec, colour))
    strip = lambda ids: [t for t in ids if t != codec.eos_id]
    print(f"output  : {codec.decode(strip(ss.tokens))}")
    print(f"forward calls: {ss.forward_calls} speculative vs {ar.forward_calls} greedy AR (prefill included); "
          f"CR {ar.forward_calls / ss.forward_calls:.2f}")
    print(f"tokens per call: {ss.tokens_per_call:.2f} (root token included)")
    print(f"greedy AR: {codec.decode(strip(ar.tokens))}")
    same = ss.tokens == ar.tokens
    print(f"equal to greedy AR: {'yes' if same else why_different(path, model, prompt, ss.tokens, ar.tokens)}")
    return 0 if same else 1


def why_different(path: str, model: GPT, prompt: list[int], ss: list[int], ar: list[int]) -> str:
    """The verdict on an SS output that differs from AR's: a near tie at the model's precision (the two tokens'
    float64 logits closer than its rounding, benchmarks.precision.near_tie) or a bug."""
    i = first_difference(ss, ar)
    if i < min(len(ss), len(ar)):
        reference = load_model(path).eval()
        reference.merge_lora()
        margin, tolerance = near_tie(reference.double(), [model], prompt + ar[:i], ar[i], ss[i])
        if margin <= tolerance:
            return (f"NO, from new token {i + 1} on: a near tie in {next(model.parameters()).dtype} (float64 margin "
                    f"{margin:.2g} <= its rounding {tolerance:.2g}), not a bug")
    return "NO: the speculative output differs (a bug, please report it)"


if __name__ == "__main__":
    raise SystemExit(main())
