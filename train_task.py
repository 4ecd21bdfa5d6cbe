"""Real tasks (E2E-NLG, ATIS text-to-SQL, DialogSum): small GPT-2-tokenized models, trained in stages.

  (a) the "pre-trained base": next-token loss on the union of the three tasks' training text (prompt and
      completion), cached in --out-dir and reused by every task (and a small draft base, for two-model SD);
  (b) per task, LoRA fine-tuning with next-token loss only: the quality baseline (loss on completions only);
  (c) --method ss: Speculative Streaming fine-tuning: γ streams on the top N_s blocks, LoRA + stream
      embeddings, Eq. 5 loss on completions only; then the pruning adapter (early-exit loss, rest frozen);
  (d) --method medusa: the Medusa baseline on the same base: γ heads + LoRA, the same Eq. 5 loss (α, steps,
      learning rate, stream positions), then its own pruning adapter;
  (e) --method draft: the draft model of two-model speculative decoding, fully fine-tuned on the task.

    python train_task.py --task e2e                      # every method for one task (the bases are trained once)
    python train_task.py --task sql --method ss medusa   # only some methods
    python train_task.py --task e2e --quick              # a tiny run, for tests
    python train_task.py --bases-only                    # only the two shared bases (make train-tasks: first)
    torchrun --standalone --nproc_per_node=N train_task.py --task e2e   # data-parallel: N processes (gloo on CPU,
                                                         # nccl with --device cuda), each a 1/N of every batch
    make tasks                                           # the full pipeline: all tasks, then bench.py task

Data comes from --data-dir, else $SPECSTREAM_DATA, else ../shared/data (see data.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time

import torch
from tqdm import tqdm

from data import EOS, MAX_NEW_TOKENS, SPLITS, CompactVocab, TaskData, load_task, prompt_ids
from batch import generate_autoregressive_batch
from checkpoint import load_weights, read_checkpoint, write_json
from model import GPT, GPTConfig
from train import StageConfig, rank_and_world, seed_everything, train_stage

BLOCK_SIZE = {"e2e": 160, "sql": 384, "dialogsum": 512}  # longest prompt + completion we train and decode
SELF_TARGET_CHUNK = 64  # prompts decoded together (and saved together) when generating self-distillation targets
BATCH_SIZE = {"e2e": 16, "sql": 8, "dialogsum": 8}  # sequences per step: about the same tokens per step
PRETRAIN_BLOCK = 512  # pretraining windows: long dialogues are cut from the left, over-long SQL is left out
METHODS = ("ss", "medusa", "draft")


def build_vocab(data_dir: str | None) -> CompactVocab:
    """One compact vocabulary for all tasks: the GPT-2 ids of every task's training text and of the *inputs*
    (prompts, never references) of every split, plus specials, as the models see them (E2E delexicalised)."""
    texts = []
    for task, splits in SPLITS.items():
        for split in splits:
            for ex in load_task(task, split, data_dir, delexicalised=True):
                texts += [ex.prompt, ex.completion] if split == "train" else [ex.prompt]
    return CompactVocab.build(texts)


def model_config(args, vocab: CompactVocab, draft: bool = False, **extra) -> GPTConfig:
    n_layer, n_embd, n_head = ((args.draft_layers, args.draft_embd, args.draft_heads) if draft
                               else (args.n_layer, args.n_embd, args.n_head))
    return GPTConfig(vocab_size=vocab.size, block_size=max(BLOCK_SIZE.values()), n_layer=n_layer, n_head=n_head,
                     n_embd=n_embd, dropout=args.dropout, bias=True, **extra)


def from_base(source: GPT, config: GPTConfig, device) -> GPT:
    """A new model with the weights of `source` (a base, or the next-token model for "frozen" mode); its own new
    parts (LoRA, streams, stream adapter, Medusa heads, pruning adapter) keep their fresh init (Medusa's LM heads
    start as copies of the LM head)."""
    model = GPT(config).to(device)
    own = model.state_dict()
    own.update(source.state_dict())
    load_weights(model, own, "base checkpoint")
    if config.n_medusa_heads > 0:
        model.init_medusa_from_lm_head()
    return model


@torch.no_grad()
def scale_stream_embeddings(model: GPT, idx: torch.Tensor):
    """Eq. 3's P_j start at the scale of the hidden state M_t they are added to (its RMS over a training batch),
    not at GPT's 0.02: against a hidden RMS of ~3 (this base, at block N - N_s) a 0.02 embedding leaves every
    stream a copy of the main stream, and on E2E the streams took hundreds of steps to tell themselves apart."""
    h = model.lower(model.embed(idx, torch.arange(idx.size(1), device=idx.device)))
    model.transformer.stream_emb.normal_(0.0, h.pow(2).mean().sqrt().item())


def greedy_continuations(model: GPT, prompts: list[list[int]], max_new_tokens: int, eos: int,
                         batch_size: int = 64) -> list[list[int]]:
    """Greedy continuations (EOS included when reached) of many prompts, `batch_size` rows at a time; each row
    equals its prompt decoded alone (generate_autoregressive_batch)."""
    return [r.tokens for start in range(0, len(prompts), batch_size)
            for r in generate_autoregressive_batch(model, prompts[start:start + batch_size], max_new_tokens, eos)]


def self_targets(args, model: GPT, vocab: CompactVocab, examples: list, limit: int, path: str,
                 quiet: bool) -> TaskData:
    """Self-distillation data: the next-token model's own greedy continuation of every distinct training prompt
    (the streams learn to predict what the main stream will say at decode time, not the varied references).

    At most `limit` prompts (a seeded random subset): the drafter stage draws ft_steps x batch sequences, and
    decoding more prompts than that costs time the stage cannot use (SQL: 3,200 of ~4,300 training questions).

    Generated once and cached at `path`, a JSON file: {"format": 1, "model_sha256": hash of the generating
    checkpoint's weights, "max_new_tokens": N, "prompts": [[ids]], "continuations": [[ids]]} (compact-vocabulary
    ids; prompts end with SEP, continuations with EOS unless cut at N). Prompts are decoded SELF_TARGET_CHUNK at a
    time, sorted by length (right-padded); the file is written after each chunk, atomically: an interrupted run
    resumes where it stopped; a changed model starts over. Under torchrun, rank 0 generates and the others read it."""
    max_new = MAX_NEW_TOKENS[args.task]
    budget = min(BLOCK_SIZE[args.task] - 1, model.config.block_size - max_new)  # prompt + SEP ids that fit
    prompts = sorted({tuple(prompt_ids(vocab, ex, budget)) for ex in examples})
    if len(prompts) > limit:
        prompts = random.Random(args.seed).sample(prompts, limit)
    prompts.sort(key=lambda p: (len(p), p))
    digest = hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes() for t in model.state_dict().values())).hexdigest()
    cache = dict(format=1, model_sha256=digest, max_new_tokens=max_new, prompts=[], continuations=[])
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("model_sha256") == digest and saved.get("max_new_tokens") == max_new:
            cache = saved
    done = {tuple(p) for p in cache["prompts"]}
    todo = [p for p in prompts if p not in done]
    rank, world = rank_and_world()
    if rank == 0:
        bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo),
                   desc=f"{args.task}: self-distillation targets", disable=quiet, dynamic_ncols=True)
        model.eval()
        for start in range(0, len(todo), SELF_TARGET_CHUNK):
            group = [list(p) for p in todo[start:start + SELF_TARGET_CHUNK]]
            cache["prompts"] += group
            cache["continuations"] += greedy_continuations(model, group, max_new, EOS)
            write_json(path, cache, indent=None)
            bar.update(len(group))
        bar.close()
    if world > 1:
        torch.distributed.barrier()
        with open(path) as f:
            cache = json.load(f)
    chosen = set(prompts)
    pairs = [(p, c) for p, c in zip(cache["prompts"], cache["continuations"]) if tuple(p) in chosen]
    return TaskData.from_sequences(vocab, pairs, BLOCK_SIZE[args.task])


def pretrain(args, vocab: CompactVocab, name: str, config: GPTConfig, steps: int, quiet: bool) -> GPT:
    """Pretrain (or load) a GPT on the union of the tasks' training text, loss on every token."""
    path = os.path.join(args.out_dir, f"{name}.pt")
    if os.path.exists(path) and read_checkpoint(path).get("vocabulary") != vocab.to_dict():
        raise ValueError(f"{path} was trained with another vocabulary (other data?): delete it or use --out-dir")
    union = TaskData(vocab, [ex for task in SPLITS for ex in load_task(task, "train", args.data_dir, True)],
                     PRETRAIN_BLOCK)

    def batch(step):
        idx, targets, _ = union.batch(step, args.pretrain_batch_size, seed=args.seed)
        return idx, targets, targets != -1  # pretraining: every real token counts

    model = GPT(config).to(args.device)
    train_stage(model, batch, StageConfig(f"pretrain {name} (all tasks)", steps, args.lr, seed=args.seed),
                path, extra=dict(vocabulary=vocab.to_dict()), quiet=quiet)
    return model


def recipe_name(method: str, args) -> str:
    """Checkpoint name of a drafter: method, mode, stream targets (and --tag), e.g. "ss_frozen_self"."""
    return f"{method}_{args.mode}_{args.stream_targets}{args.tag}"


def train_task(args, quiet: bool = False) -> dict[str, str]:
    """Run (or resume) the stages of args.methods for args.task; returns the checkpoint paths."""
    seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    vocab = build_vocab(args.data_dir)
    base = pretrain(args, vocab, "base", model_config(args, vocab), args.pretrain_steps, quiet)
    if args.bases_only:
        pretrain(args, vocab, "draft_base", model_config(args, vocab, draft=True), args.draft_pretrain_steps, quiet)
        return {name: os.path.join(args.out_dir, f"{name}.pt") for name in ("base", "draft_base")}
    examples = load_task(args.task, "train", args.data_dir, True)
    data = TaskData(vocab, examples, BLOCK_SIZE[args.task])
    batch_size = args.batch_size or BATCH_SIZE[args.task]
    batch = lambda data, seed: (lambda step: data.batch(step, batch_size, seed=seed))
    extra = dict(vocabulary=vocab.to_dict(), task=args.task)
    paths = {}

    def stage(name: str, model: GPT, title: str, steps: int, seed: int, lr: float = args.ft_lr, data=data, **options):
        """One stage, checkpointed as <task>_<name>.pt; `seed` offsets args.seed (batches and dropout)."""
        paths[name] = os.path.join(args.out_dir, f"{args.task}_{name}.pt")
        config = StageConfig(f"{args.task}: {title}", steps, lr, seed=args.seed + seed, **options)
        train_stage(model, batch(data, args.seed + seed), config, paths[name], extra, quiet)

    ntp = from_base(base, model_config(args, vocab, lora_rank=args.lora_rank), args.device)
    stage("ntp", ntp, "next-token LoRA", args.ft_steps, 1)
    drafters = [m for m in args.method if m != "draft"]
    if drafters and args.stream_targets == "self":
        limit = args.self_target_prompts or args.ft_steps * batch_size
        data = self_targets(args, ntp, vocab, examples, limit,
                            os.path.join(args.out_dir, f"{args.task}_self_targets.json"), quiet)
    for method in args.method:
        if method == "draft":  # not distilled: trained on the references, like the next-token model
            draft_base = pretrain(args, vocab, "draft_base", model_config(args, vocab, draft=True),
                                  args.draft_pretrain_steps, quiet)
            stage("draft", draft_base, "draft model (full fine-tuning)", args.ft_steps, 4, lr=args.lr)
            continue
        drafter = dict(n_streams=args.gamma) if method == "ss" else dict(n_medusa_heads=args.gamma)
        if args.mode == "frozen":  # the next-token model, frozen; only stream-side parameters / heads train
            if method == "ss":
                drafter["stream_adapter_rank"] = args.stream_adapter_rank
            source, loss = ntp, "streams"
        else:  # "shared": LoRA shared by the main stream and the drafters, trained from the base (paper v1)
            source, loss = base, "eq5"
        config = model_config(args, vocab, lora_rank=args.lora_rank, n_msa_layers=args.n_msa_layers, prune_rank=8,
                              **drafter)
        model = from_base(source, config, args.device)
        if method == "ss":  # (a resumed or finished stage then loads its own P_j over these)
            scale_stream_embeddings(model, data.batch(0, batch_size, seed=args.seed)[0].to(args.device))
        name, seed = recipe_name(method, args), 2 if method == "ss" else 5  # seeds: ntp 1, ss 2-3, draft 4, medusa 5-6
        lr = args.drafter_lr if args.mode == "frozen" else args.ft_lr  # shared mode trains LoRA: the LoRA rate
        stage(name, model, f"{name} (γ={args.gamma})", args.ft_steps, seed, lr=lr,
              data=data, loss=loss, stream_fraction=args.stream_fraction)
        stage(f"{name}_pruned", model, f"{name} pruning adapter", args.prune_steps, seed + 1, loss="early_exit")
    return paths


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(SPLITS), help="the task to train (required unless --bases-only)")
    p.add_argument("--bases-only", action="store_true",
                   help="pretrain (or find) the two bases every task shares, base and draft_base, and stop: "
                        "`make train-tasks` does this first, then trains the tasks two at a time")
    p.add_argument("--method", nargs="+", choices=METHODS, default=list(METHODS),
                   help="what to train besides the NTP baseline (default: all)")
    p.add_argument("--data-dir", default=None, help="folder with e2e/, text2sql/, dialogsum/ (else $SPECSTREAM_DATA, "
                                                    "else ../shared/data)")
    p.add_argument("--out-dir", default="checkpoints/tasks", help="checkpoints (the bases are shared by all tasks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--draft-layers", type=int, default=2, help="the draft model of two-model SD")
    p.add_argument("--draft-heads", type=int, default=2)
    p.add_argument("--draft-embd", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--mode", choices=["frozen", "shared"], default="frozen",
                   help="frozen: the next-token model is frozen, only stream embeddings + a stream-only adapter (or "
                        "Medusa heads) train, α0 = 0, output = the next-token model's; shared: LoRA shared by the "
                        "main stream and the drafters, Eq. 5 with α0 = 1 (paper v1)")
    p.add_argument("--stream-targets", choices=["self", "data"], default="self",
                   help="self: the drafters learn the next-token model's own greedy continuations (cached in "
                        "--out-dir); data: the references")
    p.add_argument("--self-target-prompts", type=int, default=0,
                   help="--stream-targets self: training prompts to distil (0 = ft-steps x batch size)")
    p.add_argument("--stream-adapter-rank", type=int, default=32, help="frozen mode: rank of the stream-only adapter")
    p.add_argument("--drafter-lr", type=float, default=1e-2,
                   help="frozen mode: learning rate of the stream-side parameters / Medusa heads (chosen on the E2E "
                        "dev split, results/e2e/ablation_dev.md); shared mode uses --ft-lr")
    p.add_argument("--tag", default="", help="suffix of the SS / Medusa checkpoint names (sweeps)")
    p.add_argument("--gamma", type=int, default=4, help="γ, speculative streams (and Medusa heads)")
    p.add_argument("--n-msa-layers", type=int, default=2, help="N_s, top blocks with multi-stream attention")
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=0, help="fine-tuning batch (0 = per task: "
                   + ", ".join(f"{t} {b}" for t, b in BATCH_SIZE.items()) + ")")
    p.add_argument("--pretrain-batch-size", type=int, default=8)
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--draft-pretrain-steps", type=int, default=1000)
    p.add_argument("--ft-steps", type=int, default=600, help="steps of each fine-tuning (NTP, SS, Medusa, draft)")
    p.add_argument("--prune-steps", type=int, default=100)
    p.add_argument("--stream-fraction", type=float, default=0.25,
                   help="share of positions whose streams / Medusa heads are scored each step (1 = exact Eq. 5)")
    p.add_argument("--lr", type=float, default=2e-3, help="pretraining (and draft fine-tuning) learning rate")
    p.add_argument("--ft-lr", type=float, default=5e-3, help="fine-tuning learning rate (LoRA, streams, Medusa heads)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps (tests, smoke runs)")
    return p


def parse(argv=None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.task is None and not args.bases_only:
        p.error("--task is required (or --bases-only, to pretrain the shared bases)")
    if args.quick:
        args.n_layer, args.n_head, args.n_embd, args.batch_size, args.pretrain_batch_size = 2, 2, 32, 4, 4
        args.draft_layers, args.draft_heads, args.draft_embd = 1, 1, 16
        args.pretrain_steps, args.draft_pretrain_steps, args.ft_steps, args.prune_steps = 4, 2, 4, 2
        args.lora_rank = 4
        args.out_dir = args.out_dir if args.out_dir != "checkpoints/tasks" else "checkpoints/tasks_quick"
    if not 0 < args.stream_fraction <= 1:
        raise SystemExit(f"--stream-fraction={args.stream_fraction} must be in (0, 1]")
    return args


def main(argv=None):
    args = parse(argv)
    distributed = "WORLD_SIZE" in os.environ  # started by torchrun: train.train_stage splits each batch over ranks
    if distributed:
        if args.device == "cuda":  # one GPU per process
            args.device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(args.device)
        torch.distributed.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    start = time.time()
    paths = train_task(args)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"{args.task or 'bases'}: trained in {time.time() - start:.0f} s -> " + ", ".join(paths.values()))
        if args.task:
            print(f"evaluate with: python bench.py task --task {args.task} --task-dir {args.out_dir}")
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
