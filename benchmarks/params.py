"""Parameter accounting: what Speculative Streaming and each baseline add to the model they speed up, and the table of
`bench.py params` (SS vs 4 Medusa heads, from the toy model to 7B-sized configs)."""
from __future__ import annotations

import argparse
import os

import torch

from benchmarks.report import write_params
from model import GPT, GPTConfig, is_stream_param

CONFIGS = {  # (d, V, layers, heads, context): toy, our task models, GPT-2 124M and the paper's model sizes
    "toy (train_toy.py defaults)": (128, 81, 4, 4, 128),
    "task models (train_task.py defaults; V of the compact vocabulary)": (256, 9960, 4, 4, 512),
    "GPT-2 124M": (768, 50257, 12, 12, 1024),
    "OPT-1.3b-sized": (2048, 50272, 24, 32, 2048),
    "7B-sized (d, V of OpenLlama-7b; GPT-2 layout)": (4096, 32000, 32, 32, 2048),
}


def parameter_counts(model: GPT) -> dict[str, int]:
    """Base, LoRA, stream-embedding, stream-adapter, pruning-adapter and Medusa-head parameters of `model`, and
    what 4 Medusa heads would cost on its config (each: a d x d ResBlock with bias and an own d x V LM head)."""
    c, counts = model.config, dict(base=0, lora=0, stream_emb=0, stream_adapter=0, prune_adapter=0, medusa=0)
    for name, p in model.named_parameters():  # the tied wte / lm_head is counted once
        kind = ("lora" if "lora_" in name else "stream_emb" if name == "transformer.stream_emb"
                else "stream_adapter" if is_stream_param(name) else "prune_adapter"
                if name.startswith("prune_adapter.") else "medusa" if name.startswith("medusa.") else "base")
        counts[kind] += p.numel()
    counts["medusa_4_heads"] = 4 * c.n_embd * (c.n_embd + 1 + c.vocab_size)
    return counts


def ss_extra_parameters(counts: dict[str, int], frozen: bool = True) -> int:
    """What SS adds to its target, from `parameter_counts`: stream embeddings, the pruning adapter and, in frozen
    mode, the stream-only adapter (a shared-mode model counts 0 there). LoRA, which every fine-tuned model has, is
    not counted."""
    return counts["stream_emb"] + counts["prune_adapter"] + (counts["stream_adapter"] if frozen else 0)


def extra_parameters(models: dict[str, GPT]) -> dict[str, int]:
    """What each method adds to its target (LoRA, shared by every fine-tuned model, is not counted)."""
    out = dict(autoregressive=0, **{"prompt lookup": 0})
    if "ss" in models:
        out["ss"] = ss_extra_parameters(parameter_counts(models["ss"]))
    if "medusa" in models:
        c = parameter_counts(models["medusa"])
        out["medusa"] = c["medusa"] + c["prune_adapter"]
    if "draft" in models:
        out["two-model"] = sum(p.numel() for p in models["draft"].parameters())
    return out


def run_params(args: argparse.Namespace):
    """Parameter accounting: base, LoRA, stream embeddings, the frozen mode's stream adapter, pruning adapter, and 4
    Medusa heads on the same config. Every model is built (on PyTorch's "meta" device for the large ones: shapes
    without memory) and counted by benchmarks.params.parameter_counts, the one source of the formulas."""
    counts = {}
    for name, (d, V, L, H, ctx) in CONFIGS.items():
        cfg = GPTConfig(vocab_size=V, block_size=ctx, n_layer=L, n_head=H, n_embd=d, n_streams=args.gamma_params,
                        n_msa_layers=2, lora_rank=32, prune_rank=8, stream_adapter_rank=args.stream_adapter_params)
        with torch.device("meta"):
            c = parameter_counts(GPT(cfg))
        counts[name] = dict(c, ss_shared=ss_extra_parameters(c, frozen=False), ss_frozen=ss_extra_parameters(c))
    write_params(counts, args.gamma_params, args.stream_adapter_params, os.path.join(args.results_dir, "params.md"))
