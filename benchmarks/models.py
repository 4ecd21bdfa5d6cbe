"""What the benchmarks decode with: the checkpoints that train_toy.py and train_task.py write (found from the
command's flags, with a one-line message when one is missing), loaded for decoding, the prompts they decode, and the
two decoding settings: a precision (--dtype) and a trimmed draft vocabulary (--draft-vocab, ranked on the training
text)."""
from __future__ import annotations

import argparse
import os

import torch

from checkpoint import load_model
from generate import cast_for_decoding, frequent_tokens
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


def task_vocab(args: argparse.Namespace, task: str):
    """`task`'s vocabulary (a data.CompactVocab), from the next-token checkpoint in --task-dir."""
    from data import CompactVocab
    ntp = os.path.join(args.task_dir, f"{task}_ntp.pt")
    if not os.path.exists(ntp):
        raise SystemExit(f"error: {ntp} not found — run `python train_task.py --task {task} --out-dir {args.task_dir}` "
                         f"first")
    return CompactVocab.from_dict(torch.load(ntp, weights_only=True)["vocabulary"])


def task_setup(args: argparse.Namespace, task: str, split: str):
    """`task`'s vocabulary (from the next-token checkpoint in --task-dir), its `split` examples as the models see
    them, their prompts, the decoding budget and a decoder from ids to text (E2E: relexicalised)."""
    from data import EOS, MAX_NEW_TOKENS, load_task, prompt_ids, relexicalise
    vocab = task_vocab(args, task)
    ntp = os.path.join(args.task_dir, f"{task}_ntp.pt")
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


# ------------------------------------------------------------------------------------------------------------
# the decoding settings: --dtype and --draft-vocab
# ------------------------------------------------------------------------------------------------------------

def cast(model: GPT, dtype: str) -> GPT:
    """generate.cast_for_decoding (the model loaded in float32, LoRA merged), its refusal a one-line exit."""
    try:
        return cast_for_decoding(model, dtype)
    except ValueError as e:
        raise SystemExit(f"error: --dtype {dtype}: {e}") from None


def draft_vocabulary(sequences: list[list[int]], n: int, vocab_size: int) -> torch.Tensor | None:
    """--draft-vocab N: the N most frequent token ids of the training `sequences` (generate.frequent_tokens), for
    GPT.trim_draft_vocab; None when N = 0 (every token)."""
    if n == 0:
        return None
    if not 0 < n <= vocab_size:
        raise SystemExit(f"error: --draft-vocab {n} is no token count — give 0 (every token) or 1..{vocab_size}")
    try:
        return frequent_tokens(sequences, n, vocab_size)
    except ValueError as e:
        raise SystemExit(f"error: --draft-vocab {n}: {e}") from None


def task_draft_vocabulary(args: argparse.Namespace, task: str, n: int) -> torch.Tensor | None:
    """--draft-vocab N on a real task: the N most frequent tokens of its training completions (each with its EOS;
    E2E delexicalised, as the models see them) in the vocabulary of --task-dir's next-token checkpoint."""
    if n == 0:
        return None
    from data import EOS, load_task
    vocab = task_vocab(args, task)
    completions = [vocab.encode(ex.completion) + [EOS] for ex in load_task(task, "train", args.data_dir, True)]
    return draft_vocabulary(completions, n, vocab.size)


def variant(dtype: str, draft_vocab: int) -> str:
    """The suffix of a result written with non-default decoding settings ("" for float32 and the full vocabulary),
    so that such runs sit beside the default ones instead of replacing them: e.g. "_bfloat16_draftvocab2000"."""
    return ("" if dtype == "float32" else f"_{dtype}") + (f"_draftvocab{draft_vocab}" if draft_vocab else "")


def settings_line(model: GPT, dtype: str, draft_ids: torch.Tensor | None) -> str:
    """The decoding settings, said in a result's header."""
    V = model.config.vocab_size
    vocab = (f"{len(draft_ids):,} of the {V:,} tokens (the most frequent in the training text)"
             if draft_ids is not None else f"all {V:,} tokens")
    return (f"decoding in {dtype} (loaded in float32, LoRA merged, then cast); the drafters score {vocab}, "
            "verification all of them")
