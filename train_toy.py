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
from dataclasses import dataclass, replace

import torch

from cli import ArgumentParser, check_device
from model import GPT, GPTConfig
from train import (StageConfig, check_ranges, fingerprint, from_base, new_model, step_seed, train_stage,
                   weights_sha256)

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


@dataclass(frozen=True)
class ToyRecipe:
    """Every setting of the toy pipeline: train_toy.py's flags, under the same names, with the same defaults.
    From Python: `train_pipeline(ToyRecipe(gamma=4), "checkpoints/toy")`, or a preset with a few fields changed,
    `train_pipeline(dataclasses.replace(NOTEBOOK, gamma=4))`."""
    seed: int = 0                # data, init and batches
    n_stories: int = 4000        # stories in the training text
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128        # context length of the model
    train_block: int = 64        # length of training windows
    batch_size: int = 32
    ss_batch_size: int = 16      # batch size of the stream fine-tuning
    method: str = "ss"           # "ss", "medusa" (γ heads, same base and budget) or "draft" (two-model SD)
    gamma: int = 6               # γ, speculative streams (or Medusa heads)
    n_msa_layers: int = 2        # N_s, top blocks with multi-stream attention
    lora_rank: int = 16
    draft_layers: int = 1        # method "draft": the draft model's size
    draft_heads: int = 2
    draft_embd: int = 64
    pretrain_steps: int = 800    # also the draft model's
    ss_steps: int = 600          # Speculative Streaming (or Medusa) fine-tuning
    prune_steps: int = 100       # pruning adapter
    lr: float = 2e-3             # pretraining
    ss_lr: float = 5e-3          # fine-tuning (LoRA + streams)
    prune_lr: float = 2e-3
    threads: int = 0             # torch threads (0 = torch's default)
    device: str = "cpu"

    def __post_init__(self):
        """Settings out of range are refused here, before anything is trained or written."""
        check_ranges(self, at_least_one=("n_stories", "n_layer", "n_head", "n_embd", "block_size", "train_block",
                                         "batch_size", "ss_batch_size", "gamma", "draft_layers", "draft_heads",
                                         "draft_embd", "pretrain_steps", "ss_steps", "prune_steps"),
                     at_least_zero=("n_msa_layers", "lora_rank", "threads"), positive=("lr", "ss_lr", "prune_lr"))
        if self.method not in ("ss", "medusa", "draft"):
            raise ValueError(f"--method={self.method!r} is not a method — use ss, medusa or draft")
        if self.train_block > self.block_size:
            raise ValueError(f"--train-block={self.train_block} is longer than the model's --block-size="
                             f"{self.block_size} — shorten the windows or lengthen the context")


# Fixed small recipes. TINY: a few seconds (tests). NOTEBOOK: notebook 02's model, about a minute on one thread;
# notebooks 03 and 05 change a few of its settings. (The committed reference model's: validate.REFERENCE_TRAINING.)
TINY = ToyRecipe(n_stories=100, n_layer=2, n_embd=16, n_head=2, block_size=64, train_block=16, batch_size=4, gamma=2,
                 n_msa_layers=1, lora_rank=2, pretrain_steps=6, ss_steps=6, prune_steps=3)
NOTEBOOK = ToyRecipe(n_stories=1000, n_embd=64, gamma=3, batch_size=16, pretrain_steps=150, ss_steps=150,
                     prune_steps=30, threads=1)


def base_config(recipe: ToyRecipe, vocab_size: int) -> GPTConfig:
    """The pretrained GPT: no dropout, biases."""
    return GPTConfig(vocab_size=vocab_size, block_size=recipe.block_size, n_layer=recipe.n_layer,
                     n_head=recipe.n_head, n_embd=recipe.n_embd, dropout=0.0, bias=True)


def train_pipeline(recipe: ToyRecipe, out_dir: str | None = None, quiet: bool = False,
                   overwrite: bool = False) -> tuple[GPT, ToyData, dict]:
    """Run (or resume) the stages of `recipe`; returns the final model (eval mode), the data and the histories.
    Checkpoints go to out_dir and are reused there when the inputs they record match (None: train in memory,
    write nothing); overwrite=True retrains the stages whose inputs changed instead of refusing them."""
    check_device(recipe.device)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    data = ToyData(recipe.n_stories, recipe.seed)
    if len(data.stream) < recipe.train_block + 2:
        raise ValueError(f"--n-stories={recipe.n_stories} give {len(data.stream)} tokens, too few for training "
                         f"windows of --train-block={recipe.train_block} — use more stories")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    path = lambda name: os.path.join(out_dir, name) if out_dir else None
    batches = lambda seed, size=recipe.batch_size: (lambda step: data.batch(step, size, recipe.train_block, seed))
    inputs = lambda size=recipe.batch_size, **more: dict(data=fingerprint(data.stream), batch_size=size,
                                                         train_block=recipe.train_block, **more)
    run = lambda model, batch, stage, name, **kw: train_stage(model, batch, stage, path(name), quiet=quiet,
                                                              overwrite=overwrite, **kw)
    histories = {}

    pretrain = StageConfig("pretrain", recipe.pretrain_steps, recipe.lr, seed=recipe.seed)
    base = new_model(base_config(recipe, len(data.words)), recipe.device, recipe.seed)
    histories["pretrain"] = run(base, batches(recipe.seed), pretrain, "base.pt", inputs=inputs())
    # Every later model starts from the generator as the base's last step seeded it (how these models were always
    # initialised): a function of the recipe, whether the base was trained now or loaded.
    init_seed = step_seed(pretrain, pretrain.steps - 1)
    if recipe.method == "draft":  # two-model SD: a small GPT trained from scratch on the same text
        cfg = replace(base_config(recipe, len(data.words)), n_layer=recipe.draft_layers, n_head=recipe.draft_heads,
                      n_embd=recipe.draft_embd)
        model = new_model(cfg, recipe.device, init_seed)
        histories["draft"] = run(model, batches(recipe.seed + 3), StageConfig(
            "draft model", recipe.pretrain_steps, recipe.lr, seed=recipe.seed + 3), "draft.pt",
            extra=dict(vocabulary=data.words), inputs=inputs())
        return model, data, histories
    drafter = dict(n_streams=recipe.gamma) if recipe.method == "ss" else dict(n_medusa_heads=recipe.gamma)
    cfg = replace(base_config(recipe, len(data.words)), **drafter, n_msa_layers=recipe.n_msa_layers,
                  lora_rank=recipe.lora_rank, prune_rank=8)
    model = from_base(base, cfg, recipe.device, seed=init_seed)  # LoRA, streams / heads and adapter: fresh
    name, title = f"{recipe.method}_gamma{recipe.gamma}", "streams" if recipe.method == "ss" else "medusa"
    histories["streams"] = run(model, batches(recipe.seed + 1, recipe.ss_batch_size), StageConfig(
        f"{title} (γ={recipe.gamma})", recipe.ss_steps, recipe.ss_lr, seed=recipe.seed + 1), f"{name}.pt",
        inputs=inputs(recipe.ss_batch_size, parent=weights_sha256(base)))
    histories["prune_adapter"] = run(model, batches(recipe.seed + 2), StageConfig(
        "pruning adapter", recipe.prune_steps, recipe.prune_lr, loss="early_exit", seed=recipe.seed + 2),
        f"{name}_pruned.pt", extra=dict(vocabulary=data.words), inputs=inputs(parent=weights_sha256(model)))
    return model, data, histories


def parser() -> argparse.ArgumentParser:
    """The command line: one flag per ToyRecipe field (defaults from ToyRecipe), --out-dir and --overwrite."""
    d = ToyRecipe()
    p = ArgumentParser(prog="train_toy.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="checkpoints/toy",
                   help="where checkpoints go (reused when they record the same inputs, resumed when unfinished)")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain the stages whose checkpoints in --out-dir were trained with other inputs")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for data, init and batches")
    p.add_argument("--n-stories", type=int, default=d.n_stories, help="stories in the training text")
    p.add_argument("--n-layer", type=int, default=d.n_layer)
    p.add_argument("--n-head", type=int, default=d.n_head)
    p.add_argument("--n-embd", type=int, default=d.n_embd)
    p.add_argument("--block-size", type=int, default=d.block_size, help="context length of the model")
    p.add_argument("--train-block", type=int, default=d.train_block, help="length of training windows")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--ss-batch-size", type=int, default=d.ss_batch_size, help="batch size of the stream fine-tuning")
    p.add_argument("--method", choices=["ss", "medusa", "draft"], default=d.method,
                   help="ss: Speculative Streaming; medusa: the Medusa baseline (γ heads, same base, same budget); "
                        "draft: the small draft model of two-model speculative decoding")
    p.add_argument("--gamma", type=int, default=d.gamma, help="γ, number of speculative streams (or Medusa heads)")
    p.add_argument("--n-msa-layers", type=int, default=d.n_msa_layers,
                   help="N_s, top blocks with multi-stream attention")
    p.add_argument("--lora-rank", type=int, default=d.lora_rank)
    p.add_argument("--draft-layers", type=int, default=d.draft_layers, help="--method draft: layers of the draft model")
    p.add_argument("--draft-heads", type=int, default=d.draft_heads)
    p.add_argument("--draft-embd", type=int, default=d.draft_embd)
    p.add_argument("--pretrain-steps", type=int, default=d.pretrain_steps,
                   help="pretraining steps (also the draft model's)")
    p.add_argument("--ss-steps", type=int, default=d.ss_steps, help="Speculative Streaming fine-tuning steps")
    p.add_argument("--prune-steps", type=int, default=d.prune_steps, help="pruning-adapter steps")
    p.add_argument("--lr", type=float, default=d.lr, help="pretraining learning rate")
    p.add_argument("--ss-lr", type=float, default=d.ss_lr, help="fine-tuning learning rate (LoRA + streams)")
    p.add_argument("--prune-lr", type=float, default=d.prune_lr)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, ... (checkpoints load on any device)")
    return p


def parse(argv: list[str] | None = None) -> tuple[ToyRecipe, str, bool]:
    """The recipe, the checkpoint folder and --overwrite of a command line."""
    args = vars(parser().parse_args(argv))
    out_dir, overwrite = args.pop("out_dir"), args.pop("overwrite")
    return ToyRecipe(**args), out_dir, overwrite


def main(argv: list[str] | None = None) -> None:
    start = time.time()
    try:
        recipe, out_dir, overwrite = parse(argv)
        model, data, histories = train_pipeline(recipe, out_dir, overwrite=overwrite)
    except (ValueError, FileNotFoundError) as e:  # bad settings, a checkpoint of other inputs
        raise SystemExit(f"error: {e}") from None
    from generate import generate_autoregressive, generate_speculative
    if recipe.method == "draft":
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
