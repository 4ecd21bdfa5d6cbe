"""A second engine: the reference model on top of Hugging Face transformers (VALIDATING.md §7).

transformers.GPT2LMHeadModel.from_pretrained loads the portable folder's base model (the GPT-2 names we export) and
gives the main stream. The streams (Eq. 2-3) are the part GPT-2 lacks: forward pre-hooks catch the main stream
entering each MSA block, and the γ stream rows run through the same HF block modules. `HFStreams` has
specstream_minimal.MiniGPT's call signature, so minimal.minimal_trace decodes with it and writes its trace.
"""
from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import torch
import torch.nn as nn


class HFStreams(nn.Module):
    """idx (B, T) -> main logits (B, T, V) from GPT2LMHeadModel and stream logits (B, T, γ, V) on its blocks."""

    def __init__(self, model_dir: str):
        super().__init__()
        from safetensors.torch import load_file
        from transformers import GPT2LMHeadModel
        self.hf = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager").double().eval()
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)["specstream"]
        self.config = SimpleNamespace(n_streams=cfg["n_streams"])  # what the decoding loop reads
        self.first_msa = cfg["n_layer"] - cfg["n_msa_layers"]      # block N - N_s
        tensors = load_file(os.path.join(model_dir, "model.safetensors"))
        self.stream_emb = tensors["specstream.transformer.stream_emb"].double()  # (γ, C): row j-1 is P_j
        self.lm_head = self.hf.lm_head
        self.main_inputs: list[torch.Tensor] = []  # the main stream entering each MSA block, caught by the hooks
        for block in self.hf.transformer.h[self.first_msa:]:
            block.register_forward_pre_hook(lambda module, args: self.main_inputs.append(args[0]))

    @torch.no_grad()
    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.main_inputs.clear()
        logits = self.hf(idx).logits  # (B, T, V): the main stream, a plain causal GPT-2 forward
        s = self.main_inputs[0].unsqueeze(2) + self.stream_emb  # Eq. 3: S_j = M + P_j, (B, T, γ, C)
        for block, main in zip(self.hf.transformer.h[self.first_msa:], self.main_inputs):
            s = stream_block(block, main, s)
        return logits, self.lm_head(self.hf.transformer.ln_f(s))


def stream_block(block: nn.Module, main: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One HF GPT2Block for the streams (Eq. 2): stream j of position t attends, in one softmax, to the main keys
    of positions <= t and to streams 1..j of t. main: (B, T, C) entering the block; s: (B, T, γ, C)."""
    B, T, G, C = s.shape
    nh = block.attn.num_heads

    def heads(x: torch.Tensor) -> torch.Tensor:  # (B, ..., C) -> (B, nh, ..., C/nh)
        return x.unflatten(-1, (nh, -1)).movedim(-2, 1)
    _, km, vm = (heads(x) for x in block.attn.c_attn(block.ln_1(main)).split(C, dim=-1))  # (B, nh, T, hs)
    qs, ks, vs = (heads(x) for x in block.attn.c_attn(block.ln_1(s)).split(C, dim=-1))    # (B, nh, T, γ, hs)
    scale = 1 / math.sqrt(C // nh)
    to_main = torch.einsum("bhtgd,bhud->bhtgu", qs, km) * scale  # (B, nh, T, γ, T)
    to_main = to_main.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril()[:, None], float("-inf"))
    to_streams = torch.einsum("bhtgd,bhtjd->bhtgj", qs, ks) * scale  # (B, nh, T, γ, γ)
    to_streams = to_streams.masked_fill(~torch.ones(G, G, dtype=torch.bool).tril(), float("-inf"))
    att = torch.cat([to_main, to_streams], dim=-1).softmax(dim=-1)
    y = torch.einsum("bhtgu,bhud->bhtgd", att[..., :T], vm) + torch.einsum("bhtgj,bhtjd->bhtgd", att[..., T:], vs)
    s = s + block.attn.c_proj(y.movedim(1, -2).flatten(-2))  # (B, T, γ, C)
    return s + block.mlp(block.ln_2(s))
