"""Real tasks (E2E-NLG, ATIS text-to-SQL, DialogSum): a small GPT-2-tokenized model, trained in four stages.

  (a) the "pre-trained base": next-token loss on the union of the three tasks' training text (prompt and
      completion), cached in --out-dir and reused by every task;
  (b) per task, LoRA fine-tuning with next-token loss only: the quality baseline (loss on completions only);
  (c) per task, Speculative Streaming fine-tuning: γ streams on the top N_s blocks, LoRA + stream embeddings,
      Eq. 5 loss on completions only;
  (d) the pruning adapter of the SS model (early-exit next-token loss, everything else frozen).

    python train_task.py --task e2e                # the full run for one task (the base is trained once)
    python train_task.py --task sql --quick        # a tiny run, for tests
    python train_task.py --help

Data comes from --data-dir, else $SPECSTREAM_DATA, else ../shared/data (see data.py).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from data import SPLITS, CompactVocab, TaskData, load_task
from model import GPT, GPTConfig, load_checkpoint, load_weights
from train import StageConfig, seed_everything, train_stage

BLOCK_SIZE = {"e2e": 160, "sql": 256, "dialogsum": 512}  # longest prompt + completion we train and decode
PRETRAIN_BLOCK = 256  # pretraining windows: long dialogues are cut from the left, over-long SQL is left out


def build_vocab(data_dir: str | None) -> CompactVocab:
    """One compact vocabulary for all tasks: the GPT-2 ids of every task's training text and of the *inputs*
    (prompts, never references) of every split, plus specials. Test inputs hold names (E2E restaurants) that the
    model must copy; a full GPT-2 vocabulary would cover them too, at a 50k-row LM head."""
    texts = []
    for task, splits in SPLITS.items():
        for split in splits:
            for ex in load_task(task, split, data_dir):
                texts += [ex.prompt, ex.completion] if split == "train" else [ex.prompt]
    return CompactVocab.build(texts)


def model_config(args, vocab: CompactVocab, **extra) -> GPTConfig:
    return GPTConfig(vocab_size=vocab.size, block_size=max(BLOCK_SIZE.values()), n_layer=args.n_layer,
                     n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout, bias=True, **extra)


def from_base(base: GPT, config: GPTConfig, device) -> GPT:
    """A new model with the base weights; its LoRA, stream embeddings and adapter keep their fresh init."""
    model = GPT(config).to(device)
    own = model.state_dict()
    own.update(base.state_dict())
    load_weights(model, own, "base checkpoint")
    return model


def load_base(args, vocab: CompactVocab, quiet: bool = False) -> GPT:
    """Pretrain (or load) the base GPT on the union of the tasks' training text, loss on every token."""
    path = os.path.join(args.out_dir, "base.pt")
    if os.path.exists(path) and load_checkpoint(path).get("vocabulary") != vocab.to_dict():
        raise ValueError(f"{path} was trained with another vocabulary (other data?): delete it or use --out-dir")
    union = TaskData(vocab, [ex for task in SPLITS for ex in load_task(task, "train", args.data_dir)],
                     PRETRAIN_BLOCK)

    def batch(step):
        idx, targets, _ = union.batch(step, args.batch_size, seed=args.seed)
        return idx, targets, targets != -1  # pretraining: every real token counts

    base = GPT(model_config(args, vocab)).to(args.device)
    train_stage(base, batch, StageConfig("pretrain (all tasks)", args.pretrain_steps, args.lr, seed=args.seed),
                path, extra=dict(vocabulary=vocab.to_dict()), quiet=quiet)
    return base


def train_task(args, quiet: bool = False) -> dict[str, str]:
    """Run (or resume) all stages for args.task; returns the checkpoint paths."""
    seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    vocab = build_vocab(args.data_dir)
    base = load_base(args, vocab, quiet)
    data = TaskData(vocab, load_task(args.task, "train", args.data_dir), BLOCK_SIZE[args.task])
    batch = lambda seed: (lambda step: data.batch(step, args.batch_size, seed=seed))
    extra = dict(vocabulary=vocab.to_dict(), task=args.task)
    paths = {name: os.path.join(args.out_dir, f"{args.task}_{name}.pt") for name in ("ntp", "ss", "ss_pruned")}

    ntp = from_base(base, model_config(args, vocab, lora_rank=args.lora_rank), args.device)
    train_stage(ntp, batch(args.seed + 1), StageConfig(f"{args.task}: next-token LoRA", args.ft_steps, args.ft_lr,
                                                      seed=args.seed + 1), paths["ntp"], extra=extra, quiet=quiet)
    ss = from_base(base, model_config(args, vocab, lora_rank=args.lora_rank, n_streams=args.gamma,
                                      n_msa_layers=args.n_msa_layers, prune_rank=8), args.device)
    train_stage(ss, batch(args.seed + 2), StageConfig(f"{args.task}: streams (γ={args.gamma})", args.ft_steps,
                                                     args.ft_lr, seed=args.seed + 2), paths["ss"], extra=extra,
                quiet=quiet)
    train_stage(ss, batch(args.seed + 3), StageConfig(f"{args.task}: pruning adapter", args.prune_steps, args.ft_lr,
                                                     loss="early_exit", seed=args.seed + 3), paths["ss_pruned"],
                extra=extra, quiet=quiet)
    return paths


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(SPLITS), required=True)
    p.add_argument("--data-dir", default=None, help="folder with e2e/, text2sql/, dialogsum/ (else $SPECSTREAM_DATA, "
                                                    "else ../shared/data)")
    p.add_argument("--out-dir", default="checkpoints/tasks", help="checkpoints (the base is shared by all tasks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--gamma", type=int, default=4, help="γ, speculative streams")
    p.add_argument("--n-msa-layers", type=int, default=2, help="N_s, top blocks with multi-stream attention")
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pretrain-steps", type=int, default=3000)
    p.add_argument("--ft-steps", type=int, default=1500, help="steps of each LoRA fine-tuning (NTP and SS)")
    p.add_argument("--prune-steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3, help="pretraining learning rate")
    p.add_argument("--ft-lr", type=float, default=5e-4, help="fine-tuning learning rate (the paper's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps (tests, smoke runs)")
    return p


def parse(argv=None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.quick:
        args.n_layer, args.n_head, args.n_embd, args.batch_size = 2, 2, 32, 4
        args.pretrain_steps, args.ft_steps, args.prune_steps, args.lora_rank = 4, 4, 2, 4
        args.out_dir = args.out_dir if args.out_dir != "checkpoints/tasks" else "checkpoints/tasks_quick"
    return args


def main(argv=None):
    args = parse(argv)
    start = time.time()
    paths = train_task(args)
    print(f"{args.task}: trained in {time.time() - start:.0f} s -> " + ", ".join(paths.values()))
    print(f"evaluate with: python bench.py task --task {args.task} --task-dir {args.out_dir}")


if __name__ == "__main__":
    main()
