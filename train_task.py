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
import json
import os
import random
import time
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

import data as data_files
from data import EOS, MAX_NEW_TOKENS, SEP, SPLITS, CompactVocab, TaskData, load_task, prompt_ids
from batch import generate_autoregressive_batch
from checkpoint import write_json
from cli import ArgumentParser, check_device, warn
from model import STREAM_ADAPTER_PLACES, GPT, GPTConfig
from train import (StageConfig, check_ranges, fingerprint, from_base, new_model, rank_and_world, train_stage,
                   weights_sha256)

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


@dataclass(frozen=True)
class TaskRecipe:
    """Every setting of train_task.py but --out-dir: its flags under the same names (--method: `methods`), with
    the same defaults. `quick` turns a recipe into --quick's tiny one."""
    task: str | None = None             # "e2e", "sql" or "dialogsum" (required unless bases_only)
    bases_only: bool = False            # only pretrain the two bases every task shares
    methods: tuple[str, ...] = METHODS  # trained besides the next-token baseline
    data_dir: str | None = None         # else $SPECSTREAM_DATA, else ../shared/data
    seed: int = 0
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    draft_layers: int = 2               # the draft model of two-model SD
    draft_heads: int = 2
    draft_embd: int = 128
    dropout: float = 0.1
    mode: str = "frozen"                # "frozen" or "shared" (see --help)
    stream_targets: str = "self"        # "self" (the next-token model's greedy continuations) or "data"
    self_target_prompts: int = 0        # prompts to distil (0 = ft_steps x batch size)
    stream_adapter_rank: int = 32       # frozen mode: rank of the stream-only adapter
    stream_adapter_in: str = "attn+mlp"  # frozen mode: the MSA blocks' sublayers that carry it
    drafter_lr: float = 1e-2            # frozen mode: learning rate of the stream-side parameters / Medusa heads
    tag: str = ""                       # suffix of the SS / Medusa checkpoint names
    gamma: int = 4                      # γ, speculative streams (and Medusa heads)
    n_msa_layers: int = 2               # N_s, top blocks with multi-stream attention
    lora_rank: int = 32
    batch_size: int = 0                 # fine-tuning batch (0 = BATCH_SIZE of the task)
    pretrain_batch_size: int = 8
    pretrain_steps: int = 1500
    draft_pretrain_steps: int = 1000
    ft_steps: int = 600                 # each fine-tuning (NTP, SS, Medusa, draft)
    drafter_steps: int = 0              # the SS / Medusa stage alone (0 = ft_steps)
    prune_steps: int = 100
    stream_fraction: float = 0.25       # share of positions whose streams / Medusa heads are scored each step
    lr: float = 2e-3                    # pretraining (and draft fine-tuning)
    ft_lr: float = 5e-3                 # fine-tuning (LoRA, streams, Medusa heads)
    threads: int = 0                    # torch threads (0 = torch's default)
    device: str = "cpu"

    def __post_init__(self):
        """Settings out of range are refused here, before anything is trained or written."""
        check_ranges(self, at_least_one=("n_layer", "n_head", "n_embd", "draft_layers", "draft_heads", "draft_embd",
                                         "gamma", "pretrain_batch_size", "pretrain_steps", "draft_pretrain_steps",
                                         "ft_steps", "prune_steps"),
                     at_least_zero=("self_target_prompts", "stream_adapter_rank", "n_msa_layers", "lora_rank",
                                    "batch_size", "threads", "drafter_steps"), positive=("drafter_lr", "lr", "ft_lr"))
        choices = dict(task=(None, *SPLITS), mode=("frozen", "shared"), stream_targets=("self", "data"),
                       stream_adapter_in=STREAM_ADAPTER_PLACES)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)!r} — use one of {allowed}")
        if not set(self.methods) <= set(METHODS):
            raise ValueError(f"--method {' '.join(self.methods)}: unknown method — use some of {METHODS}")
        if not 0 < self.stream_fraction <= 1:
            raise ValueError(f"--stream-fraction={self.stream_fraction} must be in (0, 1] — 1 scores every position")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout={self.dropout} must be in [0, 1) — e.g. 0.1")


def quick(recipe: TaskRecipe) -> TaskRecipe:
    """The same recipe on a tiny model with a few steps (what --quick trains: tests, smoke runs)."""
    return replace(recipe, n_layer=2, n_head=2, n_embd=32, batch_size=4, pretrain_batch_size=4, draft_layers=1,
                   draft_heads=1, draft_embd=16, pretrain_steps=4, draft_pretrain_steps=2, ft_steps=4, prune_steps=2,
                   lora_rank=4, drafter_steps=0)


QUICK = quick(TaskRecipe())


def model_config(recipe: TaskRecipe, vocab: CompactVocab, draft: bool = False, **extra) -> GPTConfig:
    """The base GPT (draft: the draft model's) for `vocab`; `extra` adds GPTConfig fields (LoRA, streams, ...)."""
    n_layer, n_embd, n_head = ((recipe.draft_layers, recipe.draft_embd, recipe.draft_heads) if draft
                               else (recipe.n_layer, recipe.n_embd, recipe.n_head))
    return GPTConfig(vocab_size=vocab.size, block_size=max(BLOCK_SIZE.values()), n_layer=n_layer, n_head=n_head,
                     n_embd=n_embd, dropout=recipe.dropout, bias=True, **extra)


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


def self_targets(recipe: TaskRecipe, model: GPT, vocab: CompactVocab, examples: list, limit: int, path: str,
                 quiet: bool) -> TaskData:
    """Self-distillation data: the next-token model's own greedy continuation of every distinct training prompt
    (the streams learn to predict what the main stream will say at decode time, not the varied references).

    At most `limit` prompts (a seeded random subset): the drafter stage draws its steps x batch sequences, and
    decoding more prompts than that costs time the stage cannot use (SQL: 3,200 of ~4,300 training questions).

    Generated once and cached at `path`, a JSON file: {"format": 1, "model_sha256": hash of the generating
    checkpoint's weights, "max_new_tokens": N, "prompts": [[ids]], "continuations": [[ids]]} (compact-vocabulary
    ids; prompts end with SEP, continuations with EOS unless cut at N). Prompts are decoded SELF_TARGET_CHUNK at a
    time, sorted by length (right-padded); the file is written after each chunk, atomically: an interrupted run
    resumes where it stopped; a changed model starts over, and so does a cache that is not what it must be
    (`read_self_targets`). Every chosen prompt must have its continuation before training on them. Under
    torchrun, rank 0 generates and the others read it."""
    max_new = MAX_NEW_TOKENS[recipe.task]
    budget = min(BLOCK_SIZE[recipe.task] - 1, model.config.block_size - max_new)  # prompt + SEP ids that fit
    prompts = sorted({tuple(prompt_ids(vocab, ex, budget)) for ex in examples})
    if len(prompts) > limit:
        prompts = random.Random(recipe.seed).sample(prompts, limit)
    prompts.sort(key=lambda p: (len(p), p))
    digest = weights_sha256(model)
    cache = (read_self_targets(path, digest, max_new, vocab.size)
             or dict(format=1, model_sha256=digest, max_new_tokens=max_new, prompts=[], continuations=[]))
    done = {tuple(p) for p in cache["prompts"]}
    todo = [p for p in prompts if p not in done]
    rank, world = rank_and_world()
    if rank == 0:
        bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo),
                   desc=f"{recipe.task}: self-distillation targets", disable=quiet, dynamic_ncols=True)
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
        cache = read_self_targets(path, digest, max_new, vocab.size) or dict(prompts=[], continuations=[])
    chosen = set(prompts)
    pairs = [(p, c) for p, c in zip(cache["prompts"], cache["continuations"]) if tuple(p) in chosen]
    if len(pairs) != len(prompts):
        raise ValueError(f"{path} holds the targets of {len(pairs)} of the {len(prompts)} chosen prompts — delete "
                         f"it and run again")
    return TaskData.from_sequences(vocab, pairs, BLOCK_SIZE[recipe.task])


def read_self_targets(path: str, digest: str, max_new: int, vocab_size: int) -> dict | None:
    """The self-distillation cache at `path` when it holds targets of the model of sha256 `digest` for `max_new`
    tokens, well formed (cache_problem); else None (a warning says why it is generated again, unless it is
    simply absent or of another model or budget)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        warn(f"{path} is not valid JSON (cut short? {e}): generating its self-distillation targets again")
        return None
    if not isinstance(saved, dict) or saved.get("format") != 1:
        warn(f"{path} is not a self-distillation cache of format 1: generating it again")
        return None
    if saved.get("model_sha256") != digest or saved.get("max_new_tokens") != max_new:
        return None  # made by another next-token model, or for another budget
    problem = cache_problem(saved, max_new, vocab_size)
    if problem:
        warn(f"{path}: {problem}: generating its self-distillation targets again")
        return None
    return saved


def cache_problem(cache: dict, max_new: int, vocab_size: int) -> str | None:
    """What is wrong with a self-distillation cache's content, or None: as many continuations as prompts, ids in
    the vocabulary, prompts ending with SEP, continuations of 1..max_new ids ending with EOS unless cut at max_new."""
    prompts, continuations = cache.get("prompts"), cache.get("continuations")
    if not isinstance(prompts, list) or not isinstance(continuations, list):
        return "it lacks the prompts or continuations list"
    if len(prompts) != len(continuations):
        return f"it holds {len(prompts)} prompts but {len(continuations)} continuations"
    ids = lambda x: isinstance(x, list) and x and all(type(t) is int and 0 <= t < vocab_size for t in x)
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        if not (ids(p) and p[-1] == SEP):
            return f"prompt {i} is not a list of ids of the vocabulary ending with SEP"
        if not (ids(c) and len(c) <= max_new and (c[-1] == EOS or len(c) == max_new)):
            return f"continuation {i} is not 1..{max_new} ids of the vocabulary ending with EOS or cut at {max_new}"
    return None


def pretrain(recipe: TaskRecipe, out_dir: str, vocab: CompactVocab, name: str, config: GPTConfig, steps: int,
             quiet: bool, overwrite: bool = False) -> GPT:
    """Pretrain (or load) a GPT on the union of the tasks' training text, loss on every token; initialised from
    recipe.seed whether the other base was trained before it or not."""
    union = TaskData(vocab, [ex for task in SPLITS for ex in load_task(task, "train", recipe.data_dir, True)],
                     PRETRAIN_BLOCK)

    def batch(step):
        idx, targets, _ = union.batch(step, recipe.pretrain_batch_size, seed=recipe.seed)
        return idx, targets, targets != -1  # pretraining: every real token counts

    model = new_model(config, recipe.device, recipe.seed)
    inputs = dict(data=fingerprint(union.encoded), batch_size=recipe.pretrain_batch_size,
                  vocabulary=fingerprint(vocab.to_dict()))
    train_stage(model, batch, StageConfig(f"pretrain {name} (all tasks)", steps, recipe.lr, seed=recipe.seed),
                os.path.join(out_dir, f"{name}.pt"), dict(vocabulary=vocab.to_dict()), quiet, inputs, overwrite)
    return model


def recipe_name(method: str, recipe: TaskRecipe) -> str:
    """Checkpoint name of a drafter: method, mode, stream targets (and --tag), e.g. "ss_frozen_self"."""
    return f"{method}_{recipe.mode}_{recipe.stream_targets}{recipe.tag}"


def drafter(recipe: TaskRecipe, method: str, vocab: CompactVocab, base: GPT, ntp: GPT,
            seed: int) -> tuple[GPT, GPT, str, float]:
    """The SS or Medusa model of recipe.mode (its new parts initialised from `seed`), the model it starts from, its
    stage's loss and learning rate. Frozen mode: the next-token model, frozen, with stream embeddings and a
    stream-only adapter (or Medusa heads), α_0 = 0. Shared mode: the base, with LoRA shared by the main stream
    and the drafters, the full Eq. 5 (paper v1), LoRA's learning rate."""
    heads = dict(n_streams=recipe.gamma) if method == "ss" else dict(n_medusa_heads=recipe.gamma)
    if recipe.mode == "frozen" and method == "ss":
        heads.update(stream_adapter_rank=recipe.stream_adapter_rank, stream_adapter_in=recipe.stream_adapter_in)
    config = model_config(recipe, vocab, lora_rank=recipe.lora_rank, n_msa_layers=recipe.n_msa_layers, prune_rank=8,
                          **heads)
    if recipe.mode == "frozen":
        return from_base(ntp, config, recipe.device, seed=seed), ntp, "streams", recipe.drafter_lr
    return from_base(base, config, recipe.device, seed=seed), base, "eq5", recipe.ft_lr


def train_task(recipe: TaskRecipe, out_dir: str = "checkpoints/tasks", quiet: bool = False,
               overwrite: bool = False) -> dict[str, str]:
    """Run (or resume) the stages of recipe.methods for recipe.task, checkpointed in out_dir (the bases are shared
    by every task); returns the checkpoint paths. A checkpoint is reused when the inputs it records match;
    overwrite=True retrains the stages whose inputs changed instead of refusing them."""
    check_device(recipe.device)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    vocab = build_vocab(recipe.data_dir)
    os.makedirs(out_dir, exist_ok=True)
    base = pretrain(recipe, out_dir, vocab, "base", model_config(recipe, vocab), recipe.pretrain_steps, quiet,
                    overwrite)
    draft_base = lambda: pretrain(recipe, out_dir, vocab, "draft_base", model_config(recipe, vocab, draft=True),
                                  recipe.draft_pretrain_steps, quiet, overwrite)
    if recipe.bases_only:
        draft_base()
        return {name: os.path.join(out_dir, f"{name}.pt") for name in ("base", "draft_base")}
    examples = load_task(recipe.task, "train", recipe.data_dir, True)
    data = TaskData(vocab, examples, BLOCK_SIZE[recipe.task])
    batch_size = recipe.batch_size or BATCH_SIZE[recipe.task]
    extra = dict(vocabulary=vocab.to_dict(), task=recipe.task)
    paths = {}

    def stage(name: str, model: GPT, parent: GPT, title: str, steps: int, seed: int, lr: float = recipe.ft_lr,
              data=data, **options):
        """One stage, checkpointed as <task>_<name>.pt, starting from `parent`'s weights; `seed` offsets
        recipe.seed (batches and dropout)."""
        paths[name] = os.path.join(out_dir, f"{recipe.task}_{name}.pt")
        config = StageConfig(f"{recipe.task}: {title}", steps, lr, seed=recipe.seed + seed, **options)
        batches = lambda step: data.batch(step, batch_size, seed=recipe.seed + seed)
        inputs = dict(data=fingerprint(data.encoded), batch_size=batch_size,
                      vocabulary=fingerprint(extra["vocabulary"]), parent=weights_sha256(parent))
        train_stage(model, batches, config, paths[name], extra, quiet, inputs, overwrite)

    # each model's new parts are initialised from its stage's seed: ntp 1, ss 2-3, draft 4, medusa 5-6
    ntp = from_base(base, model_config(recipe, vocab, lora_rank=recipe.lora_rank), recipe.device,
                    seed=recipe.seed + 1)
    stage("ntp", ntp, base, "next-token LoRA", recipe.ft_steps, 1)
    drafter_steps = recipe.drafter_steps or recipe.ft_steps
    if any(m != "draft" for m in recipe.methods) and recipe.stream_targets == "self":
        limit = recipe.self_target_prompts or drafter_steps * batch_size
        data = self_targets(recipe, ntp, vocab, examples, limit,
                            os.path.join(out_dir, f"{recipe.task}_self_targets.json"), quiet)
    for method in recipe.methods:
        if method == "draft":  # not distilled: trained on the references, like the next-token model
            model = draft_base()
            stage("draft", model, model, "draft model (full fine-tuning)", recipe.ft_steps, 4, lr=recipe.lr)
            continue
        name, seed = recipe_name(method, recipe), 2 if method == "ss" else 5
        model, parent, loss, lr = drafter(recipe, method, vocab, base, ntp, recipe.seed + seed)
        if method == "ss":  # (a resumed or finished stage then loads its own P_j over these)
            scale_stream_embeddings(model, data.batch(0, batch_size, seed=recipe.seed)[0].to(recipe.device))
        stage(name, model, parent, f"{name} (γ={recipe.gamma})", drafter_steps, seed, lr=lr,
              data=data, loss=loss, stream_fraction=recipe.stream_fraction)
        stage(f"{name}_pruned", model, model, f"{name} pruning adapter", recipe.prune_steps, seed + 1,
              loss="early_exit")
    return paths


def parser() -> argparse.ArgumentParser:
    """The command line: one flag per TaskRecipe field (defaults from TaskRecipe), --out-dir, --overwrite,
    --unverified-data and --quick."""
    d = TaskRecipe()
    p = ArgumentParser(prog="train_task.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(SPLITS), help="the task to train (required unless --bases-only)")
    p.add_argument("--bases-only", action="store_true",
                   help="pretrain (or find) the two bases every task shares, base and draft_base, and stop: "
                        "`make train-tasks` does this first, then trains the tasks two at a time")
    p.add_argument("--method", nargs="+", choices=METHODS, default=list(d.methods),
                   help="what to train besides the NTP baseline (default: all)")
    p.add_argument("--data-dir", default=d.data_dir,
                   help="folder with e2e/, text2sql/, dialogsum/ (else $SPECSTREAM_DATA, else ../shared/data)")
    p.add_argument("--out-dir", default="checkpoints/tasks",
                   help="checkpoints (the bases are shared by all tasks); reused when they record the same inputs")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain the stages whose checkpoints in --out-dir were trained with other inputs")
    p.add_argument("--unverified-data", action="store_true",
                   help="accept data files whose content is not the published data sets' (your own data)")
    recipe_flags(p, d)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps (tests, smoke runs)")
    return p


def recipe_flags(p: argparse.ArgumentParser, d: TaskRecipe):
    """The flags of the model, the drafters and the optimisation, with TaskRecipe's defaults `d`."""
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--n-layer", type=int, default=d.n_layer)
    p.add_argument("--n-head", type=int, default=d.n_head)
    p.add_argument("--n-embd", type=int, default=d.n_embd)
    p.add_argument("--draft-layers", type=int, default=d.draft_layers, help="the draft model of two-model SD")
    p.add_argument("--draft-heads", type=int, default=d.draft_heads)
    p.add_argument("--draft-embd", type=int, default=d.draft_embd)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--mode", choices=["frozen", "shared"], default=d.mode,
                   help="frozen: the next-token model is frozen, only stream embeddings + a stream-only adapter (or "
                        "Medusa heads) train, α0 = 0, output = the next-token model's; shared: LoRA shared by the "
                        "main stream and the drafters, Eq. 5 with α0 = 1 (paper v1)")
    p.add_argument("--stream-targets", choices=["self", "data"], default=d.stream_targets,
                   help="self: the drafters learn the next-token model's own greedy continuations (cached in "
                        "--out-dir); data: the references")
    p.add_argument("--self-target-prompts", type=int, default=d.self_target_prompts,
                   help="--stream-targets self: training prompts to distil (0 = ft-steps x batch size)")
    p.add_argument("--stream-adapter-rank", type=int, default=d.stream_adapter_rank,
                   help="frozen mode: rank of the stream-only adapter")
    p.add_argument("--stream-adapter-in", choices=STREAM_ADAPTER_PLACES, default=d.stream_adapter_in,
                   help="frozen mode: the sublayers of each MSA block that carry the stream-only adapter")
    p.add_argument("--drafter-lr", type=float, default=d.drafter_lr,
                   help="frozen mode: learning rate of the stream-side parameters / Medusa heads (chosen on the E2E "
                        "dev split, results/e2e/ablation_dev.md); shared mode uses --ft-lr")
    p.add_argument("--tag", default=d.tag, help="suffix of the SS / Medusa checkpoint names (sweeps)")
    p.add_argument("--gamma", type=int, default=d.gamma, help="γ, speculative streams (and Medusa heads)")
    p.add_argument("--n-msa-layers", type=int, default=d.n_msa_layers,
                   help="N_s, top blocks with multi-stream attention")
    p.add_argument("--lora-rank", type=int, default=d.lora_rank)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="fine-tuning batch (0 = per task: "
                   + ", ".join(f"{t} {b}" for t, b in BATCH_SIZE.items()) + ")")
    p.add_argument("--pretrain-batch-size", type=int, default=d.pretrain_batch_size)
    p.add_argument("--pretrain-steps", type=int, default=d.pretrain_steps)
    p.add_argument("--draft-pretrain-steps", type=int, default=d.draft_pretrain_steps)
    p.add_argument("--ft-steps", type=int, default=d.ft_steps,
                   help="steps of each fine-tuning (NTP, SS, Medusa, draft)")
    p.add_argument("--drafter-steps", type=int, default=d.drafter_steps,
                   help="steps of the SS / Medusa stage alone (0 = --ft-steps): the next-token model stays the same")
    p.add_argument("--prune-steps", type=int, default=d.prune_steps)
    p.add_argument("--stream-fraction", type=float, default=d.stream_fraction,
                   help="share of positions whose streams / Medusa heads are scored each step (1 = exact Eq. 5)")
    p.add_argument("--lr", type=float, default=d.lr, help="pretraining (and draft fine-tuning) learning rate")
    p.add_argument("--ft-lr", type=float, default=d.ft_lr,
                   help="fine-tuning learning rate (LoRA, streams, Medusa heads)")


def parse(argv: list[str] | None = None) -> tuple[TaskRecipe, str, bool]:
    """The recipe, the checkpoint folder and --overwrite of a command line (--quick: the tiny recipe, in
    checkpoints/tasks_quick unless --out-dir says otherwise; a warning names each given flag it overrides)."""
    p = parser()
    args = vars(p.parse_args(argv))
    out_dir, is_quick, methods = args.pop("out_dir"), args.pop("quick"), tuple(args.pop("method"))
    overwrite = args.pop("overwrite")
    if args.pop("unverified_data"):
        data_files.use_unverified_data()
    if args["task"] is None and not args["bases_only"]:
        p.error("--task is required (or --bases-only, to pretrain the shared bases)")
    recipe = TaskRecipe(**args, methods=methods)
    if is_quick:
        given = {k: v for k, v in vars(recipe).items() if v != getattr(TaskRecipe(), k)}
        recipe = quick(recipe)
        for name, value in given.items():
            if getattr(recipe, name) != value:
                warn(f"--quick sets --{name.replace('_', '-')}={getattr(recipe, name)}, not the given {value} — "
                     f"leave out --quick to train with {value}")
        out_dir = out_dir if out_dir != "checkpoints/tasks" else "checkpoints/tasks_quick"
    return recipe, out_dir, overwrite


def main(argv: list[str] | None = None) -> None:
    try:
        recipe, out_dir, overwrite = parse(argv)
        check_device(recipe.device)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    distributed = "WORLD_SIZE" in os.environ  # started by torchrun: train.train_stage splits each batch over ranks
    if distributed:
        if recipe.device == "cuda":  # one GPU per process
            recipe = replace(recipe, device=f"cuda:{os.environ['LOCAL_RANK']}")
            torch.cuda.set_device(recipe.device)
        torch.distributed.init_process_group("nccl" if recipe.device.startswith("cuda") else "gloo")
    start = time.time()
    try:
        paths = train_task(recipe, out_dir, overwrite=overwrite)
    except (ValueError, FileNotFoundError) as e:  # bad settings or data, checkpoints of other inputs
        raise SystemExit(f"error: {e}") from None
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"{recipe.task or 'bases'}: trained in {time.time() - start:.0f} s -> " + ", ".join(paths.values()))
        if data_files.unverified_files():
            warn("trained on data files that are not the published data sets: "
                 + ", ".join(data_files.unverified_files()))
        if recipe.task:
            print(f"evaluate with: python bench.py task --task {recipe.task} --task-dir {out_dir}")
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
