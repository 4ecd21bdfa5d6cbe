"""What the benchmarks decode with: the checkpoints that train_toy.py and train_task.py write (found from the
command's flags, with a one-line message when one is missing), loaded for decoding, and the prompts they decode."""
from __future__ import annotations

import argparse
import os

import torch

from checkpoint import load_model
from model import GPT


def load_for_decoding(path: str, device: str) -> GPT:
    """A checkpoint's model on `device`, in eval mode, LoRA merged for inference."""
    model = load_model(path).to(device).eval()
    model.merge_lora()  # inference: fold LoRA into the weights (the same for every decoder of this model)
    return model


def toy_model(args: argparse.Namespace) -> GPT:
    """The toy checkpoint of --toy-dir and --toy-gamma (train_toy.py writes it), LoRA merged."""
    path = os.path.join(args.toy_dir, f"ss_gamma{args.toy_gamma}_pruned.pt")
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} not found — run `python train_toy.py --out-dir {args.toy_dir}` first (or make "
                         f"demo)")
    return load_for_decoding(path, args.device)


def load_toy(args: argparse.Namespace):
    """The toy model, its stories (--n-stories, --seed as given to train_toy.py) and --prompts held-out prompts."""
    from train_toy import ToyData
    model = toy_model(args)
    data = ToyData(args.n_stories, args.seed)
    return model, data, data.prompts(args.prompts)


def drafter_path(args: argparse.Namespace, method: str, task: str) -> str:
    """The checkpoint of `method` ("ss", "medusa") for the recipe of --mode, --stream-targets, --tag (named as
    train_task.recipe_name names it)."""
    return os.path.join(args.task_dir, f"{task}_{method}_{args.mode}_{args.stream_targets}{args.tag}_pruned.pt")


def task_setup(args: argparse.Namespace, task: str, split: str):
    """`task`'s vocabulary (from the next-token checkpoint in --task-dir), its `split` examples as the models see
    them, their prompts, the decoding budget and a decoder from ids to text (E2E: relexicalised)."""
    from data import EOS, MAX_NEW_TOKENS, CompactVocab, load_task, prompt_ids, relexicalise
    ntp = os.path.join(args.task_dir, f"{task}_ntp.pt")
    if not os.path.exists(ntp):
        raise SystemExit(f"error: {ntp} not found — run `python train_task.py --task {task} --out-dir {args.task_dir}` "
                         f"first")
    vocab = CompactVocab.from_dict(torch.load(ntp, weights_only=True)["vocabulary"])
    examples = load_task(task, split, args.data_dir, delexicalised=True)
    max_new = MAX_NEW_TOKENS[task]
    budget = load_model(ntp).config.block_size - max_new + 1
    prompts = [prompt_ids(vocab, ex, budget) for ex in examples]
    text = lambda ids, ex: relexicalise(vocab.decode([t for t in ids if t != EOS]), ex.slots)
    return examples, prompts, max_new, text


def e2e_ss_model(args: argparse.Namespace) -> tuple[GPT, list[list[int]]] | None:
    """The E2E SS model and the first --prompts test prompts, or None (said) when it is not on this machine."""
    path = drafter_path(args, "ss", "e2e")
    if not os.path.exists(path):
        print(f"E2E skipped: {path} not found (train it with `python train_task.py --task e2e`, or run this "
              "benchmark where the checkpoint is)")
        return None
    _, prompts, _, _ = task_setup(args, "e2e", "test")
    return load_for_decoding(path, args.device), prompts[:args.prompts]
