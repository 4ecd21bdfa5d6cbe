"""The training loop shared by train_toy.py and train_task.py: one stage = one set of trainable parameters
and one loss, with a progress bar, a linear learning-rate schedule, and atomic, resumable checkpoints.
Data-parallel under torchrun (see `train_stage`): `torchrun --nproc_per_node=N train_task.py ...`."""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from checkpoint import load_weights, read_checkpoint, save_checkpoint
from model import GPT, cross_entropy, is_stream_param, stream_targets

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


def sample_stream_rows(targets: torch.Tensor, loss_mask: torch.Tensor, n_ahead: int, fraction: float):
    """A random share of the positions that have a stream target somewhere in the batch, sorted (None = all).
    Scoring the streams at a random subset is an unbiased estimate of Eq. 5's stream term, at a fraction of the
    cost: streams are (1+γ)x the rows in the MSA blocks and γ LM-head rows per position."""
    if fraction >= 1.0 or n_ahead == 0:
        return None
    candidates = (stream_targets(targets.masked_fill(~loss_mask, -1), n_ahead) != -1).any(-1).any(0).nonzero()[:, 0]
    n = max(1, math.ceil(fraction * len(candidates)))
    return candidates[torch.randperm(len(candidates), device=targets.device)[:n]].sort().values


def seed_everything(seed: int):
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


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


def trainable_for(model: GPT, loss: str):
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


def average_gradients(params: list[torch.nn.Parameter]):
    """Data parallelism by hand: each gradient becomes its mean over the processes, in one all-reduce. Every rank
    runs the same code on the same stream rows, so the same parameters have a gradient on every rank."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = mean_over_ranks(torch.cat([g.flatten() for g in grads]))
    for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(mean.view_as(g))


def train_stage(model: GPT, get_batch: Callable[[int], Batch], stage: StageConfig, ckpt_path: str | None = None,
                extra: dict | None = None, quiet: bool = False) -> dict:
    """Train one stage. get_batch(step) must be deterministic in `step` so that a resumed run is identical.
    The checkpoint at ckpt_path holds model, optimizer, step and history; an unfinished one is resumed.
    Returns the history: per logged step, the losses and per-stream accuracies.

    Under torchrun (`torchrun --nproc_per_node=N`, a process group initialised) the N processes share each step's
    batch: rank r trains on the r-th of N equal slices of get_batch(step), with the stream rows drawn from the
    whole batch (the same rows on every rank) and dropout masks of its own; gradients are averaged over ranks
    before clipping, so every rank takes the same step. Every rank resumes from the same checkpoint and starts
    from rank 0's weights; only rank 0 writes checkpoints and shows the progress bar; logged losses and accuracies
    are means over ranks. Each rank's loss is the mean over its own valid targets, so with N > 1 the step equals the
    single-process step only when every slice holds as many valid targets (otherwise tokens of short slices weigh
    a little more). N = 1 is the single-process run exactly."""
    rank, world = rank_and_world()
    params = trainable_for(model, stage.loss)
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay, betas=(0.9, 0.95))
    schedule = lambda s: min(1.0, (s + 1) / stage.warmup) * max(0.0, 1.0 - s / stage.steps)  # warmup, then linear
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    step, history = 0, dict(step=[], loss=[], main_loss=[], stream_loss=[], stream_acc=[])
    if ckpt_path and os.path.exists(ckpt_path):
        ckpt = read_checkpoint(ckpt_path)
        if ckpt.get("stage") != stage.name:
            raise ValueError(f"{ckpt_path} belongs to stage {ckpt.get('stage')!r}, not {stage.name!r}; "
                             f"delete it or use another checkpoint folder")
        load_weights(model, ckpt["model"], ckpt_path)
        if ckpt["done"]:
            return ckpt["history"]
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, history = ckpt["step"], ckpt["history"]

    def save(done: bool):
        if ckpt_path and rank == 0:
            save_checkpoint(ckpt_path, model, stage=stage.name, done=done, step=step,
                            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), history=history,
                            **(extra or {}))

    # Frozen mode ("streams"): the frozen model runs as it will at decode time, without dropout, so the drafters
    # learn from the very hidden states they will see (and a step is cheaper: no dropout masks, fused attention).
    model.train(stage.loss != "streams")
    device = next(model.parameters()).device
    if world > 1:  # every rank starts from rank 0's weights (as DDP does), whatever its own random state was
        for t in model.state_dict().values():
            dist.broadcast(t, 0)
    bar = tqdm(total=stage.steps, initial=step, desc=stage.name, disable=quiet or rank > 0, dynamic_ncols=True)
    while step < stage.steps:
        torch.manual_seed(stage.seed * 1_000_003 + step)  # stream rows and dropout masks are a function of the step
        batch = [x.to(device) for x in get_batch(step)]  # the step's whole batch: idx, targets, loss_mask
        if stage.loss != "early_exit":  # drawn from the whole batch: the same stream rows on every rank
            rows = sample_stream_rows(batch[1], batch[2], model.config.n_drafts, stage.stream_fraction)
        if world > 1:  # this rank's slice of the batch, and dropout masks of its own
            if len(batch[0]) % world:
                raise ValueError(f"a batch of {len(batch[0])} sequences does not split over {world} processes: "
                                 f"use a batch size divisible by --nproc_per_node")
            batch = [x.chunk(world)[rank] for x in batch]
            torch.manual_seed((stage.seed * 1_000_003 + step) * world + rank)
        idx, targets, loss_mask = batch
        if stage.loss == "early_exit":
            loss = early_exit_loss(model, idx, targets, loss_mask)
            out = None
        else:
            # Eq. 5; "streams" (frozen mode): α_0 = 0, only the stream terms (and no main-stream LM head)
            out = model(idx, targets, loss_mask, rows, main_loss=stage.loss == "eq5")
            loss = out.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, stage.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        if step % 10 == 0 or step == stage.steps:
            history["step"].append(step)
            history["loss"].append(mean_over_ranks(loss.detach()).item())
            postfix = dict(loss=f"{history['loss'][-1]:.3f}")
            if out is not None:
                if out.main_loss is not None:  # (none in frozen mode: no main LM head)
                    history["main_loss"].append(mean_over_ranks(out.main_loss.detach()).item())
                if out.stream_losses is not None:
                    accs = stream_accuracy(out.stream_logits.detach(), out.stream_targets)
                    accs = mean_over_ranks(torch.tensor(accs, device=device)).tolist()
                    history["stream_loss"].append(mean_over_ranks(out.stream_losses.detach()).tolist())
                    history["stream_acc"].append(accs)
                    postfix["acc"] = "/".join(f"{a:.2f}" for a in accs)
            bar.set_postfix(postfix)
        bar.update(1)
        if step % stage.save_every == 0 and step < stage.steps:
            save(done=False)
    bar.close()
    save(done=True)
    if world > 1:  # the checkpoint exists for every rank once train_stage returns
        dist.barrier()
    model.eval()
    return history
