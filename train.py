"""The training loop shared by train_toy.py and train_task.py: one stage = one set of trainable parameters
and one loss, with a progress bar, a linear learning-rate schedule, and atomic, resumable checkpoints.

`train_stage` is the loop; its parts are `resume` (an unfinished checkpoint, or a finished one), `step_batch`,
`stage_loss` (Eq. 5, its stream terms alone, or the pruning adapter's early-exit loss), `optimizer_step`,
`log_step` (history and progress bar) and `save_stage`. `new_model` and `from_base` build a stage's model from a
seed of its own; `stage_record` is what a checkpoint records of the inputs that made it.
Data-parallel under torchrun (see `train_stage`): `torchrun --nproc_per_node=N train_task.py ...`.

A resumed run equals a straight one, bit for bit at a fixed thread count: what drives step s is the weights, AdamW's
moments and the schedule's position (all in the checkpoint), the batch (get_batch(s), a function of s) and torch's
generator, seeded afresh at every step (`step_seed`); a stage's model is initialised from a seed of its own, never
from whatever the process ran before. A checkpoint is reused only when the inputs it records match this run's."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from checkpoint import load_weights, read_checkpoint, save_checkpoint
from cli import warn
from model import GPT, GPTConfig, GPTOutput, cross_entropy, is_stream_param, stream_targets

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # idx (B, T), targets (B, T), loss_mask (B, T) bool


@dataclass
class StageConfig:
    name: str                  # shown on the progress bar and stored in the checkpoint
    steps: int
    lr: float
    loss: str = "eq5"          # "eq5": Eq. 5 (next token + streams, "shared" mode); "streams": Eq. 5 with α_0 = 0 on a
                               # frozen model ("frozen" mode); "early_exit": pruning adapter's next-token loss
    weight_decay: float = 0.0
    warmup: int = 20
    grad_clip: float = 1.0
    save_every: int = 200
    seed: int = 0
    stream_fraction: float = 1.0  # share of positions whose streams (or Medusa heads) are trained each step


def sample_stream_rows(targets: torch.Tensor, loss_mask: torch.Tensor, n_ahead: int,
                       fraction: float) -> torch.Tensor | None:
    """A random share of the positions that have a stream target somewhere in the batch, sorted (None = all).
    Scoring the streams at a random subset is an unbiased estimate of Eq. 5's stream term, at a fraction of the
    cost: streams are (1+γ)x the rows in the MSA blocks and γ LM-head rows per position."""
    if fraction >= 1.0 or n_ahead == 0:
        return None
    candidates = (stream_targets(targets.masked_fill(~loss_mask, -1), n_ahead) != -1).any(-1).any(0).nonzero()[:, 0]
    n = max(1, math.ceil(fraction * len(candidates)))
    return candidates[torch.randperm(len(candidates), device=targets.device)[:n]].sort().values


def step_seed(stage: StageConfig, step: int) -> int:
    """The seed of torch's generator at `step` of `stage`: the stream rows and dropout masks of a step are a
    function of the step, so a resumed stage draws what a straight one draws."""
    return stage.seed * 1_000_003 + step


def check_ranges(recipe, at_least_one: tuple[str, ...] = (), at_least_zero: tuple[str, ...] = (),
                 positive: tuple[str, ...] = ()) -> None:
    """Refuse (ValueError) a recipe field out of its range, named as its flag (n_stories: --n-stories)."""
    rules = [(at_least_one, lambda v: v >= 1, ">= 1"), (at_least_zero, lambda v: v >= 0, ">= 0"),
             (positive, lambda v: v > 0, "> 0")]
    for names, ok, rule in rules:
        for name in names:
            flag, value = "--" + name.replace("_", "-"), getattr(recipe, name)
            if not ok(value):
                raise ValueError(f"{flag}={value} must be {rule} — give {flag} a value {rule}")


def check_stage(stage: StageConfig) -> None:
    """Refuse (ValueError) settings a stage cannot train with, before anything is written."""
    problems = [f"steps={stage.steps} (a stage trains at least one step)" if stage.steps < 1 else "",
                f"lr={stage.lr} (must be > 0)" if not stage.lr > 0 else "",
                f"warmup={stage.warmup} (must be >= 1)" if stage.warmup < 1 else "",
                f"save_every={stage.save_every} (must be >= 1)" if stage.save_every < 1 else "",
                f"stream_fraction={stage.stream_fraction} (must be in (0, 1])"
                if not 0 < stage.stream_fraction <= 1 else ""]
    if any(problems):
        raise ValueError(f"stage {stage.name!r}: " + ", ".join(p for p in problems if p)
                         + " — change the setting")


def stream_accuracy(stream_logits: torch.Tensor, stream_targets: torch.Tensor) -> list[float]:
    """Top-1 accuracy of each stream j against its targets x[t+1+j]. (..., γ, V), (..., γ) with -1 = ignored."""
    valid = stream_targets != -1
    hits = (stream_logits.argmax(-1) == stream_targets) & valid
    return (hits.flatten(0, -2).sum(0) / valid.flatten(0, -2).sum(0).clamp(min=1)).tolist()


def early_exit_loss(model: GPT, idx: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Next-token loss of the pruning adapter's early-exit logits at the input of block N-N_s."""
    h = model.lower(model.embed(idx, torch.arange(idx.size(1), device=idx.device)))
    rows = loss_mask & (targets != -1)  # only rows with a target go through the LM head (most of the cost)
    return cross_entropy(model.early_exit_logits(h[rows]), targets[rows])


def trainable_for(model: GPT, loss: str) -> list[torch.nn.Parameter]:
    """Which parameters a stage trains: "early_exit" only the pruning adapter; "streams" only what the drafters
    alone use (stream embeddings and stream adapter, or Medusa heads): the main stream stays the frozen model's;
    "eq5" with LoRA the LoRA tensors, stream parameters and Medusa heads (the paper's fine-tuning, "shared" mode);
    "eq5" without LoRA (pretraining) everything."""
    for name, p in model.named_parameters():
        if loss == "early_exit":
            p.requires_grad = name.startswith("prune_adapter.")
        elif loss == "streams":
            p.requires_grad = is_stream_param(name) or name.startswith("medusa.")
        elif model.config.lora_rank > 0:
            p.requires_grad = "lora_" in name or is_stream_param(name) or name.startswith("medusa.")
        else:
            p.requires_grad = True
    return [p for p in model.parameters() if p.requires_grad]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes: (0, 1) unless torchrun started a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of x over the processes (x itself, untouched, in a single process)."""
    _, world = rank_and_world()
    if world == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Data parallelism by hand: each gradient becomes its mean over the processes, in one all-reduce. Every rank
    runs the same code on the same stream rows, so the same parameters have a gradient on every rank."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = mean_over_ranks(torch.cat([g.flatten() for g in grads]))
    for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(mean.view_as(g))


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's tensors in state-dict order: the model a stage starts from, or a cache was made with."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def fingerprint(data) -> str:
    """sha256 of training data: a tensor's values, or any JSON value (e.g. lists of token ids)."""
    raw = data.cpu().numpy().tobytes() if isinstance(data, torch.Tensor) else json.dumps(data).encode()
    return hashlib.sha256(raw).hexdigest()


FINGERPRINTS = {"data": "the training data", "vocabulary": "the vocabulary",
                "parent": "the model it starts from"}  # record entries that are hashes, and what they hash


def stage_record(model: GPT, stage: StageConfig, inputs: dict | None = None) -> dict:
    """What determines a stage's result, as its checkpoint records it: the stage's name, the model's config, the
    stage's settings (save_every changes nothing: left out) and the caller's `inputs`: the data's fingerprint, the
    batch settings, the hash of the parent checkpoint's weights (FINGERPRINTS)."""
    settings = {k: v for k, v in dataclasses.asdict(stage).items() if k != "save_every"}
    return {**settings, **dataclasses.asdict(model.config), **(inputs or {})}


def differences(saved: dict, current: dict) -> list[str]:
    """The entries of two stage records that differ, as "name old → new" (fingerprints: "the data changed"). A
    model-config field that `saved` lacks counts as its default: a record written before the field existed."""
    defaults = {f.name: f.default for f in dataclasses.fields(GPTConfig)}
    out = []
    for key in list(current) + [k for k in saved if k not in current]:
        old, new = saved.get(key, defaults.get(key, "unset")), current.get(key, "unset")
        if old != new:
            out.append(f"{FINGERPRINTS[key]} changed" if key in FINGERPRINTS else f"{key} {old!r} → {new!r}")
    return out


def new_model(config: GPTConfig, device: str | torch.device, seed: int) -> GPT:
    """GPT(config) initialised from torch.manual_seed(seed): a function of the seed alone, whatever ran before."""
    torch.manual_seed(seed)
    return GPT(config).to(device)


def from_base(source: GPT, config: GPTConfig, device: str | torch.device = "cpu", *, seed: int) -> GPT:
    """A new model of `config` that starts a fine-tuning stage from a trained one: every tensor `source` has is
    copied (a base, or the next-token model of frozen mode); the new parts (LoRA, streams, stream adapter, Medusa
    heads, pruning adapter) keep their fresh init from `seed` (new_model), except Medusa's LM heads, which start as
    copies of the LM head."""
    model = new_model(config, device, seed)
    own = model.state_dict()
    own.update(source.state_dict())
    load_weights(model, own, "the base model")
    if config.n_medusa_heads > 0:
        model.init_medusa_from_lm_head()
    return model


# ---- one stage, in named parts ----

def new_history() -> dict:
    """Per logged step: the loss, the main-stream loss and each stream's loss and top-1 accuracy."""
    return dict(step=[], loss=[], main_loss=[], stream_loss=[], stream_acc=[])


def make_optimizer(params: list[torch.nn.Parameter], stage: StageConfig) -> tuple[Optimizer, LambdaLR]:
    """AdamW, and a schedule of `stage.warmup` linear warm-up steps, then a linear decay to zero at stage.steps."""
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay, betas=(0.9, 0.95))
    schedule = lambda s: min(1.0, (s + 1) / stage.warmup) * max(0.0, 1.0 - s / stage.steps)
    return optimizer, LambdaLR(optimizer, schedule)


def resume(model: GPT, optimizer: Optimizer, scheduler: LambdaLR, ckpt_path: str | None, record: dict,
           overwrite: bool = False) -> tuple[int, dict, bool]:
    """Load the stage's checkpoint, if there is one: (step, history, done). A finished stage loads its weights
    only; an unfinished one also its optimizer and schedule. A checkpoint whose recorded inputs differ from
    `record` (stage_record) is refused, or with `overwrite` ignored (the stage trains again and replaces it); one
    that records none (an earlier version wrote it) is reused with a warning."""
    if not (ckpt_path and os.path.exists(ckpt_path)):
        return 0, new_history(), False
    ckpt = read_checkpoint(ckpt_path)
    saved = ckpt.get("inputs")
    if saved is None:  # (an earlier version's checkpoint: its stage name is all it records)
        saved = {**record, "name": ckpt.get("stage")}
    changed = differences(saved, record)
    if changed and not overwrite:
        raise ValueError(f"{ckpt_path} was trained with other inputs ({', '.join(changed)}) — use another "
                         f"--out-dir, or --overwrite to retrain the stages whose inputs changed")
    if changed or (overwrite and "inputs" not in ckpt):  # (changed: only with overwrite, else refused above)
        warn(f"retraining {ckpt_path}: " + (", ".join(changed) or "it records no inputs"))
        return 0, new_history(), False
    if "inputs" not in ckpt:
        warn(f"{ckpt_path} records no training inputs (an earlier version wrote it): reused unchecked — "
             f"--overwrite retrains it")
    load_weights(model, ckpt["model"], ckpt_path)
    if not ckpt["done"]:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    return ckpt["step"], ckpt["history"], ckpt["done"]


def step_batch(get_batch: Callable[[int], Batch], stage: StageConfig, step: int, n_drafts: int,
               device: torch.device) -> tuple[Batch, torch.Tensor | None]:
    """This rank's share of the step's batch, and the positions whose streams are scored (None = all).
    Seeds torch first: the stream rows and the dropout masks are a function of the step (and of the rank)."""
    rank, world = rank_and_world()
    torch.manual_seed(step_seed(stage, step))
    batch = [x.to(device) for x in get_batch(step)]  # the step's whole batch: idx, targets, loss_mask
    rows = None
    if stage.loss != "early_exit":  # drawn from the whole batch: the same stream rows on every rank
        rows = sample_stream_rows(batch[1], batch[2], n_drafts, stage.stream_fraction)
    if world > 1:  # this rank's slice of the batch, and dropout masks of its own
        if len(batch[0]) % world:
            raise ValueError(f"a batch of {len(batch[0])} sequences does not split over {world} processes: "
                             f"use a batch size divisible by --nproc_per_node")
        batch = [x.chunk(world)[rank] for x in batch]
        torch.manual_seed(step_seed(stage, step) * world + rank)
    return tuple(batch), rows


def stage_loss(model: GPT, batch: Batch, rows: torch.Tensor | None,
               loss: str) -> tuple[torch.Tensor, GPTOutput | None]:
    """The loss a stage minimises, and the model's output when it has one (for the stream accuracies)."""
    idx, targets, loss_mask = batch
    if loss == "early_exit":
        return early_exit_loss(model, idx, targets, loss_mask), None
    # Eq. 5; "streams" (frozen mode): α_0 = 0, only the stream terms (and no main-stream LM head)
    out = model(idx, targets, loss_mask, rows, main_loss=loss == "eq5")
    return out.loss, out


def optimizer_step(loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer: Optimizer, scheduler: LambdaLR,
                   grad_clip: float) -> None:
    """Backward, gradients averaged over the processes, clipping, one AdamW step, one schedule step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if rank_and_world()[1] > 1:
        average_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()


def log_step(history: dict, bar: tqdm, step: int, loss: torch.Tensor, out: GPTOutput | None) -> None:
    """Append the step's losses and stream accuracies (means over the processes) to `history`; show them on the
    progress bar."""
    history["step"].append(step)
    history["loss"].append(mean_over_ranks(loss.detach()).item())
    postfix = dict(loss=f"{history['loss'][-1]:.3f}")
    if out is not None:
        if out.main_loss is not None:  # (none in frozen mode: no main LM head)
            history["main_loss"].append(mean_over_ranks(out.main_loss.detach()).item())
        if out.stream_losses is not None:
            accs = stream_accuracy(out.stream_logits.detach(), out.stream_targets)
            accs = mean_over_ranks(torch.tensor(accs, device=loss.device)).tolist()
            history["stream_loss"].append(mean_over_ranks(out.stream_losses.detach()).tolist())
            history["stream_acc"].append(accs)
            postfix["acc"] = "/".join(f"{a:.2f}" for a in accs)
    bar.set_postfix(postfix)


def save_stage(ckpt_path: str | None, model: GPT, stage: StageConfig, step: int, done: bool, optimizer: Optimizer,
               scheduler: LambdaLR, history: dict, extra: dict | None, record: dict) -> None:
    """The stage's checkpoint (rank 0 only): weights, optimizer, schedule, step, history, the stage's record
    ("inputs") and the caller's entries."""
    if ckpt_path and rank_and_world()[0] == 0:
        save_checkpoint(ckpt_path, model, stage=stage.name, done=done, step=step, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), history=history, inputs=record, **(extra or {}))


def train_stage(model: GPT, get_batch: Callable[[int], Batch], stage: StageConfig, ckpt_path: str | None = None,
                extra: dict | None = None, quiet: bool = False, inputs: dict | None = None,
                overwrite: bool = False) -> dict:
    """Train one stage. get_batch(step) must be deterministic in `step` so that a resumed run is identical.
    The checkpoint at ckpt_path holds model, optimizer, step, history and the stage's record (stage_record: the
    config, the stage's settings and `inputs`, e.g. the data's fingerprint and the parent's hash); an unfinished
    one is resumed, a finished one is loaded and returned, and either only when its record matches this call's
    (`resume`: otherwise an error, or with `overwrite` a new training). The checkpoint is marked done only after
    the last of stage.steps >= 1 steps. Returns the history: per logged step, the losses and per-stream accuracies.

    Under torchrun (`torchrun --nproc_per_node=N`, a process group initialised) the N processes share each step's
    batch: rank r trains on the r-th of N equal slices of get_batch(step), with the stream rows drawn from the
    whole batch (the same rows on every rank) and dropout masks of its own; gradients are averaged over ranks
    before clipping, so every rank takes the same step. Every rank resumes from the same checkpoint and starts
    from rank 0's weights; only rank 0 writes checkpoints and shows the progress bar; logged losses and accuracies
    are means over ranks. Each rank's loss is the mean over its own valid targets, so with N > 1 the step equals the
    single-process step only when every slice holds as many valid targets (otherwise tokens of short slices weigh
    a little more). N = 1 is the single-process run exactly."""
    check_stage(stage)
    rank, world = rank_and_world()
    params = trainable_for(model, stage.loss)
    optimizer, scheduler = make_optimizer(params, stage)
    record = stage_record(model, stage, inputs)
    step, history, done = resume(model, optimizer, scheduler, ckpt_path, record, overwrite)
    if done:
        model.eval()
        return history
    # Frozen mode ("streams"): the frozen model runs as it will at decode time, without dropout, so the drafters
    # learn from the very hidden states they will see (and a step is cheaper: no dropout masks, fused attention).
    model.train(stage.loss != "streams")
    device = next(model.parameters()).device
    if world > 1:  # every rank starts from rank 0's weights (as DDP does), whatever its own random state was
        for t in model.state_dict().values():
            dist.broadcast(t, 0)
    bar = tqdm(total=stage.steps, initial=step, desc=stage.name, disable=quiet or rank > 0, dynamic_ncols=True)
    while step < stage.steps:
        batch, rows = step_batch(get_batch, stage, step, model.config.n_drafts, device)
        loss, out = stage_loss(model, batch, rows, stage.loss)
        optimizer_step(loss, params, optimizer, scheduler, stage.grad_clip)
        step += 1
        if step % 10 == 0 or step == stage.steps:
            log_step(history, bar, step, loss, out)
        bar.update(1)
        if step % stage.save_every == 0 and step < stage.steps:
            save_stage(ckpt_path, model, stage, step, False, optimizer, scheduler, history, extra, record)
    bar.close()
    save_stage(ckpt_path, model, stage, step, True, optimizer, scheduler, history, extra, record)
    if world > 1:  # the checkpoint exists for every rank once train_stage returns
        dist.barrier()
    model.eval()
    return history
