"""Train a small GPT to speculate on a toy language, in three stages, in a few minutes on a laptop CPU.

  (a) pretrain a base GPT with next-token loss;
  (b) Speculative Streaming fine-tuning: γ streams on the top N_s blocks, LoRA + stream embeddings trainable,
      Eq. 5 loss (--method medusa: γ Medusa heads instead of streams, same loss and budget);
  (c) train the rank-8 pruning adapter (next-token loss of early-exit logits), everything else frozen.
  --method draft trains the small draft model of two-model speculative decoding instead of (b) and (c).

The toy language ("toy stories")
--------------------------------
A story is three sentences and an end token. Every sentence alternates *free choices* (a slot filled
uniformly at random: nobody can predict it) with *fixed phrases* (fully determined by the word that opened
them). For example, in

    the fox is afraid of the big red barn .

"fox", "is" and "big" are free choices, "afraid of the" is forced by "is", "red barn ." is forced by
"big". A stream that looks j tokens ahead can only be right when no free choice lies between; so the
acceptance of depth j falls with j at a rate set by how long the fixed phrases are. Counting sentences
("count : three four five six stop .") make some long, fully predictable runs, and the other sentences
repeat the animal of the first one (predictable only by attending back), so every stream has something
to learn at every depth, but never everything.

    python train_toy.py                   # default run, about 3-4 minutes on 2 CPU cores
    python train_toy.py --method medusa   # the Medusa baseline on the same base (reused)
    python train_toy.py --help
"""
from __future__ import annotations

import argparse
import os
import random
import time

import torch

from checkpoint import load_weights
from model import GPT, GPTConfig
from train import StageConfig, seed_everything, train_stage

ADJECTIVES = ["big", "small", "old", "happy", "quiet", "brave"]
ANIMALS = ["cat", "dog", "fox", "owl", "bear", "frog", "duck", "mouse"]
VERB_PHRASES = {  # the first word is chosen freely, the rest follows
    "jumps": ["over"], "runs": ["away", "from"], "looks": ["at"], "sleeps": ["next", "to"],
    "is": ["afraid", "of"], "dreams": ["about"],
}
OBJECTS = {  # after "the": the first word is chosen freely, the rest follows
    "big": ["red", "barn"], "tall": ["green", "tree"], "river": [], "little": ["house", "on", "the", "hill"],
    "old": ["wooden", "fence"], "moon": [],
}
DAYS = ["monday", "tuesday", "friday", "sunday"]
WEATHER = ["sunny", "rainy", "windy", "cold"]
PLACES = {"at": ["home"], "in": ["the", "forest"], "near": ["the", "lake"], "under": ["the", "bridge"]}
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
EOS = "<eos>"


def vocabulary() -> list[str]:
    words = [EOS, ".", ":", ",", "the", "and", "then", "again", "count", "stop", "on", "weather", "was",
             "stayed", "also"]
    for group in (ADJECTIVES, ANIMALS, DAYS, WEATHER, NUMBERS):
        words += group
    for table in (VERB_PHRASES, OBJECTS, PLACES):
        for first, rest in table.items():
            words += [first] + rest
    return list(dict.fromkeys(words))  # unique, in order


def story(rng: random.Random) -> list[str]:
    """One story: an animal sentence, a weather or counting sentence, and the first animal again."""
    animal = rng.choice(ANIMALS)

    def animal_sentence(name: str) -> list[str]:
        verb = rng.choice(list(VERB_PHRASES))
        obj = rng.choice(list(OBJECTS))
        return [name, verb, *VERB_PHRASES[verb], "the", obj, *OBJECTS[obj], "."]

    words = ["the", *animal_sentence(animal)]
    if rng.random() < 0.5:
        place = rng.choice(list(PLACES))
        words += ["on", rng.choice(DAYS), "the", "weather", "was", rng.choice(WEATHER), "and", "the", animal,
                  "stayed", place, *PLACES[place], "."]
    else:
        start = rng.randrange(0, 6)
        words += ["count", ":", *NUMBERS[start:start + rng.randint(3, 5)], "stop", "."]
    words += ["then", "the", rng.choice(ADJECTIVES), *animal_sentence(animal)[:-1], "again", ".", EOS]
    return words


class ToyData:
    """Token ids of many stories, and deterministic training batches (random windows) and prompts."""

    def __init__(self, n_stories: int = 4000, seed: int = 0):
        self.words = vocabulary()
        self.index = {w: i for i, w in enumerate(self.words)}
        rng = random.Random(seed)
        self.stories = [self.encode(story(rng)) for _ in range(n_stories)]
        self.stream = torch.tensor([t for s in self.stories for t in s])
        self.eos_id = self.index[EOS]

    def encode(self, words: list[str]) -> list[int]:
        return [self.index[w] for w in words]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)

    def batch(self, step: int, batch_size: int, block: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed * 7919 + step)
        starts = torch.randint(0, len(self.stream) - block - 1, (batch_size,), generator=g)
        x = torch.stack([self.stream[s:s + block] for s in starts])
        y = torch.stack([self.stream[s + 1:s + block + 1] for s in starts])
        return x, y, torch.ones_like(x, dtype=torch.bool)

    def prompts(self, n: int, seed: int = 1, prompt_words: int = 4) -> list[list[int]]:
        """Held-out prompts: the start of freshly drawn stories (EOS first, as after a previous story)."""
        rng = random.Random(10_000 + seed)
        return [[self.eos_id] + self.encode(story(rng)[:prompt_words]) for _ in range(n)]


def base_config(args, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                     n_embd=args.n_embd, dropout=0.0, bias=True)


def train_pipeline(args, quiet: bool = False) -> tuple[GPT, ToyData, dict]:
    """Run (or resume) the three stages; returns the final model (eval mode), the data and the histories."""
    seed_everything(args.seed)
    torch.set_num_threads(args.threads) if args.threads else None
    data = ToyData(args.n_stories, args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    batch = lambda seed, size=args.batch_size: (lambda step: data.batch(step, size, args.train_block, seed))
    histories = {}

    base = GPT(base_config(args, len(data.words))).to(args.device)
    base_path = os.path.join(args.out_dir, "base.pt")
    histories["pretrain"] = train_stage(base, batch(args.seed), StageConfig(
        "pretrain", args.pretrain_steps, args.lr, seed=args.seed), base_path, quiet=quiet)

    if args.method == "draft":  # two-model SD: a small GPT trained from scratch on the same text
        cfg = GPTConfig(vocab_size=len(data.words), block_size=args.block_size, n_layer=args.draft_layers,
                        n_head=args.draft_heads, n_embd=args.draft_embd, dropout=0.0, bias=True)
        model = GPT(cfg).to(args.device)
        histories["draft"] = train_stage(model, batch(args.seed + 3), StageConfig(
            "draft model", args.pretrain_steps, args.lr, seed=args.seed + 3),
            os.path.join(args.out_dir, "draft.pt"), extra=dict(vocabulary=data.words), quiet=quiet)
        return model, data, histories
    drafter = dict(n_streams=args.gamma) if args.method == "ss" else dict(n_medusa_heads=args.gamma)
    cfg = GPTConfig(**{**vars(base_config(args, len(data.words))), **drafter, "n_msa_layers": args.n_msa_layers,
                       "lora_rank": args.lora_rank, "prune_rank": 8})
    model = GPT(cfg).to(args.device)
    own = model.state_dict()
    own.update(base.state_dict())  # base weights; LoRA, streams / heads and adapter keep their init
    load_weights(model, own, base_path)
    if args.method == "medusa":
        model.init_medusa_from_lm_head()
    name = f"{args.method}_gamma{args.gamma}"
    histories["streams"] = train_stage(model, batch(args.seed + 1, args.ss_batch_size), StageConfig(
        f"{'streams' if args.method == 'ss' else 'medusa'} (γ={args.gamma})", args.ss_steps, args.ss_lr, seed=args.seed + 1),
        os.path.join(args.out_dir, f"{name}.pt"), quiet=quiet)
    histories["prune_adapter"] = train_stage(model, batch(args.seed + 2), StageConfig(
        "pruning adapter", args.prune_steps, args.prune_lr, loss="early_exit", seed=args.seed + 2),
        os.path.join(args.out_dir, f"{name}_pruned.pt"), extra=dict(vocabulary=data.words), quiet=quiet)
    return model, data, histories


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="checkpoints/toy", help="where checkpoints go (reused and resumed)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, init and batches")
    p.add_argument("--n-stories", type=int, default=4000, help="stories in the training text")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--block-size", type=int, default=128, help="context length of the model")
    p.add_argument("--train-block", type=int, default=64, help="length of training windows")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ss-batch-size", type=int, default=16, help="batch size of the stream fine-tuning")
    p.add_argument("--method", choices=["ss", "medusa", "draft"], default="ss",
                   help="ss: Speculative Streaming; medusa: the Medusa baseline (γ heads, same base, same budget); "
                        "draft: the small draft model of two-model speculative decoding")
    p.add_argument("--gamma", type=int, default=6, help="γ, number of speculative streams (or Medusa heads)")
    p.add_argument("--n-msa-layers", type=int, default=2, help="N_s, top blocks with multi-stream attention")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--draft-layers", type=int, default=1, help="--method draft: layers of the draft model")
    p.add_argument("--draft-heads", type=int, default=2)
    p.add_argument("--draft-embd", type=int, default=64)
    p.add_argument("--pretrain-steps", type=int, default=800, help="pretraining steps (also the draft model's)")
    p.add_argument("--ss-steps", type=int, default=600, help="Speculative Streaming fine-tuning steps")
    p.add_argument("--prune-steps", type=int, default=100, help="pruning-adapter steps")
    p.add_argument("--lr", type=float, default=2e-3, help="pretraining learning rate")
    p.add_argument("--ss-lr", type=float, default=5e-3, help="fine-tuning learning rate (LoRA + streams)")
    p.add_argument("--prune-lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (checkpoints load on any device)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    start = time.time()
    model, data, histories = train_pipeline(args)
    from generate import generate_autoregressive, generate_speculative
    if args.method == "draft":
        print(f"\ntrained the draft model in {time.time() - start:.0f} s")
        return
    model.merge_lora()  # inference: fold LoRA into the weights
    print(f"\ntrained in {time.time() - start:.0f} s; final per-stream top-1 accuracy (stream 1..γ): "
          + " ".join(f"{a:.2f}" for a in histories["streams"]["stream_acc"][-1]))
    for prompt in data.prompts(3):
        ss = generate_speculative(model, prompt, 60, k=1, eos_id=data.eos_id)
        ar = generate_autoregressive(model, prompt, 60, eos_id=data.eos_id)
        print(f"\nprompt : {data.decode(prompt)}\noutput : {data.decode(ss.tokens)}")
        print("steps  : " + " | ".join(data.decode(s) for s in ss.step_tokens))
        print(f"same as greedy: {ss.tokens == ar.tokens}; forward calls {ss.forward_calls} vs {ar.forward_calls}; "
              f"tokens per call {ss.tokens_per_call:.2f} (root token included)")


if __name__ == "__main__":
    main()
