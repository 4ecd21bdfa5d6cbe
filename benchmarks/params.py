"""Parameter accounting: what Speculative Streaming and each baseline add to the model they speed up."""
from __future__ import annotations

from model import GPT, is_stream_param


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
