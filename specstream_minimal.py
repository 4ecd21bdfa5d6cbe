"""Speculative Streaming in one file: the minimal, slow, obviously correct version.

Paper: Bhendawade et al., "Speculative Streaming: Fast LLM Inference without Auxiliary Models", arXiv 2402.11131.
One model drafts and verifies. The top N_s blocks use multi-stream attention (MSA): besides the main stream,
every position carries γ speculative streams, and stream j at position t learns to predict x[t+1+j]
(the main stream predicts x[t+1]). Decoding drafts a tree of candidates from the streams and verifies it with
the main stream in the next forward pass, so the output is exactly greedy decoding, in fewer passes.

This file trades speed for readability: MSA uses one explicit (1+γ)T x (1+γ)T mask, there is no KV cache, and
every step recomputes the whole sequence. The optimised version is model.py / generate.py; the parameter names
here are the same as model.GPT's, so `load_state_dict` works both ways (LoRA off, no pruning adapter).
Only torch and the standard library are used.

    python specstream_minimal.py          # train a tiny word-level model (seconds on CPU), decode, compare
    python specstream_minimal.py --help
"""
from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class MiniConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True             # biases in Linear and LayerNorm
    n_streams: int = 2            # γ, the number of speculative streams
    n_msa_layers: int = 1         # N_s, the top blocks that carry streams
    stream_loss_weight: float = 0.1  # α_j of Eq. 5 (α_0 = 1)


# ----------------------------------------------------------------------------- the model

def msa_mask(T: int, n_streams: int, device=None) -> torch.Tensor:
    """The ((1+γ)T, (1+γ)T) boolean attention mask of MSA, True = may attend.

    Row r = j*T + t holds stream j at position t, with j = 0 the main stream: first the T main rows, then the
    T rows of stream 1, ..., then the T rows of stream γ. With n_streams = 0 this is the ordinary causal mask."""
    j = torch.arange(1 + n_streams, device=device).repeat_interleave(T)  # stream of each row
    t = torch.arange(T, device=device).repeat(1 + n_streams)              # position of each row
    q_j, q_t, k_j, k_t = j[:, None], t[:, None], j[None, :], t[None, :]   # query rows x key rows
    sees_main = (k_j == 0) & (k_t <= q_t)                                 # Eq. 1, Eq. 2: main keys <= t
    sees_own_streams = (q_j >= 1) & (k_j >= 1) & (k_j <= q_j) & (k_t == q_t)  # Eq. 2: streams 1..j at t
    return sees_main | sees_own_streams


class SelfAttention(nn.Module):
    """Multi-head attention over any set of rows, with an explicit boolean mask."""

    def __init__(self, config: MiniConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, R, C = x.size()  # R rows: T main rows, or (1+γ)T main and stream rows
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (z.view(B, R, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, nh, R, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, R, R)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = self.dropout(att) @ v  # (B, nh, R, hs)
        y = y.transpose(1, 2).reshape(B, R, C)
        return self.dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: MiniConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block. Main and stream rows go through the very same weights."""

    def __init__(self, config: MiniConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class MiniGPT(nn.Module):
    """A GPT-2 whose top n_msa_layers blocks carry γ speculative streams."""

    def __init__(self, config: MiniConfig):
        super().__init__()
        assert config.n_streams >= 1 and 1 <= config.n_msa_layers <= config.n_layer
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.transformer.stream_emb = nn.Parameter(0.02 * torch.randn(config.n_streams, config.n_embd))  # P_j
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """idx (B, T) -> main logits (B, T, V), predicting x[t+1], and stream logits (B, T, γ, V),
        stream j predicting x[t+1+j]."""
        B, T = idx.size()
        G, first_msa = self.config.n_streams, self.config.n_layer - self.config.n_msa_layers
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        causal = msa_mask(T, 0, idx.device)  # (T, T)
        for block in self.transformer.h[:first_msa]:
            x = block(x, causal)  # Eq. 1: the main stream alone
        s = x.unsqueeze(1) + self.transformer.stream_emb[:, None, :]  # Eq. 3: S_j = M + P_j, (B, γ, T, C)
        x = torch.cat([x, s.flatten(1, 2)], dim=1)  # (B, (1+γ)T, C): main rows, stream 1 rows, ..., stream γ rows
        mask = msa_mask(T, G, idx.device)  # ((1+γ)T, (1+γ)T)
        for block in self.transformer.h[first_msa:]:
            x = block(x, mask)  # Eq. 1 for the main rows, Eq. 2 for the stream rows
        logits = self.lm_head(self.transformer.ln_f(x)).view(B, 1 + G, T, -1)  # (B, 1+γ, T, V)
        return logits[:, 0], logits[:, 1:].transpose(1, 2)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Eq. 5: L = CE(main_t, x[t+1]) + sum_j α_j CE(stream_{t,j}, x[t+1+j]).
        targets[:, t] = x[t+1], -1 = ignore; stream j at t is scored against targets[:, t+j]."""
        main, streams = self(idx)
        loss = F.cross_entropy(main.flatten(0, 1), targets.flatten(), ignore_index=-1)
        for j in range(1, self.config.n_streams + 1):
            target_j = F.pad(targets[:, j:], (0, j), value=-1)  # x[t+1+j], ignored past the end
            ce = F.cross_entropy(streams[:, :, j - 1].flatten(0, 1), target_j.flatten(), ignore_index=-1)
            loss = loss + self.config.stream_loss_weight * ce
        return loss


# ----------------------------------------------------------------------------- decoding

def as_batch(rows: list[list[int]], model: nn.Module) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=model.lm_head.weight.device)


@torch.no_grad()
def greedy_decode(model: MiniGPT, prompt: list[int], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    """Plain greedy decoding, one full recompute per token: the output speculative decoding must reproduce."""
    tokens: list[int] = []
    while len(tokens) < max_new_tokens and eos_id not in tokens:
        main, _ = model(as_batch([prompt + tokens], model))
        tokens.append(int(main[0, -1].argmax()))
    return tokens


def draft_tree(root: int, candidates: list[list[int]]) -> list[list[int]]:
    """Full k-ary draft tree as root-to-node token paths, breadth first (by depth, then by the ranks chosen).
    The root is depth 0; the depth-j nodes are candidates[j-1] (stream j's top-k), each a child of every
    depth-(j-1) node: 1 + k + ... + k^depth nodes."""
    level, tree = [[root]], [[root]]
    for tokens in candidates:
        level = [path + [token] for path in level for token in tokens]
        tree += level
    return tree


@torch.no_grad()
def verify_tree(model: MiniGPT, context: list[int], tree: list[list[int]]
                ) -> tuple[list[int], int, torch.Tensor]:
    """Greedy verification ("hard matching") of a draft tree whose root follows `context`.

    Each root-to-leaf path becomes one row of a batch. Attention is causal, so the logits at a node's
    position depend on context + root..node only, which is exactly what a tree attention mask gives.
    Walk from the root: a child is accepted iff its token is the main argmax at its parent.
    Returns the accepted path (root first), the main argmax after its last node (the next root) and that
    node's stream logits (γ, V), from which the next tree is drafted."""
    depth = len(tree[-1]) - 1
    leaves = [path for path in tree if len(path) == depth + 1]
    main, streams = model(as_batch([context + leaf for leaf in leaves], model))
    P = len(context)  # the root's position
    best = main[:, P:].argmax(dim=-1)  # (n_leaves, 1 + depth): main argmax at every node of every path
    row, n = 0, 0  # the accepted path so far is leaves[row][:n + 1]
    while n < depth:
        wanted = leaves[row][:n + 1] + [int(best[row, n])]
        rows = [r for r, leaf in enumerate(leaves) if leaf[:n + 2] == wanted]
        if not rows:
            break
        row, n = rows[0], n + 1
    return leaves[row][:n + 1], int(best[row, n]), streams[row, P + n]


@torch.no_grad()
def speculative_decode(model: MiniGPT, prompt: list[int], max_new_tokens: int, gamma: int, k: int,
                       eos_id: int | None = None, verbose: bool = False,
                       decode: Callable[[list[int]], str] = str, trace: list | None = None
                       ) -> tuple[list[int], list[list[int]]]:
    """Greedy Speculative Streaming decoding (γ = gamma streams, top-k tree). Returns the new tokens and the
    tokens committed by each forward pass: steps[0] = [first root] from the prompt pass, then for every tree
    step the accepted drafts followed by the new root. sum(steps, []) == tokens == greedy_decode(...).
    A `trace` list receives, per forward pass, (context before the tree, tree, stream logits (depth, V) it was
    drafted from, accepted path, committed tokens); the prompt pass is the prompt as a chain (validate.py)."""
    assert 1 <= gamma <= model.config.n_streams and k >= 1
    if max_new_tokens <= 0:
        return [], []
    main, streams = model(as_batch([prompt], model))  # the first root and tree come from the last prompt position
    tokens, stream_logits = [int(main[0, -1].argmax())], streams[0, -1]
    steps = [tokens[:]]
    if trace is not None:
        trace.append(([], [prompt[:i + 1] for i in range(len(prompt))], None, prompt, tokens[:]))
    if verbose:
        print(f"  prompt pass: root {decode(tokens)!r}")
    while len(tokens) < max_new_tokens and eos_id not in tokens:
        depth = min(gamma, max_new_tokens - len(tokens) - 1)  # a step commits at most depth + 1 tokens
        drafted_from = stream_logits[:depth]  # (depth, V)
        candidates = drafted_from.topk(k, dim=-1).indices.tolist()  # (depth, k): stream j's top-k
        tree = draft_tree(tokens[-1], candidates)
        accepted, next_root, stream_logits = verify_tree(model, prompt + tokens[:-1], tree)
        new = accepted[1:] + [next_root]
        if eos_id in new:
            new = new[:new.index(eos_id) + 1]  # stop exactly at EOS
        if verbose:
            shown = "  ".join(f"d{j}:" + "|".join(repr(decode([c])) for c in cs) for j, cs in enumerate(candidates, 1))
            print(f"  step {len(steps)}: root {decode(tokens[-1:])!r}  drafts {shown or '-'}  "
                  f"-> {len(accepted) - 1}/{depth} accepted, commits {decode(new)!r}")
        if trace is not None:
            trace.append((prompt + tokens[:-1], tree, drafted_from, accepted, new))
        tokens += new
        steps.append(new)
    return tokens, steps


# ----------------------------------------------------------------------------- the demo

def toy_text(seed: int, n_sentences: int = 800) -> list[str]:
    """Template sentences as a list of words: fixed phrases that the streams can learn to draft, and a free
    choice at each slot that they cannot."""
    rng = random.Random(seed)
    subjects = ["the cat", "the old dog", "a small bird", "my best friend", "the teacher"]
    verbs = ["sat on", "looked at", "walked along", "jumped over"]
    objects = ["the mat", "the big tree", "a red box", "the river bank", "the wall of the old garden"]
    return " ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} ."
                    for _ in range(n_sentences)).split()


def train(model: MiniGPT, data: torch.Tensor, steps: int, batch_size: int, seq_len: int, lr: float):
    """AdamW on random windows of `data` with the Eq. 5 loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        start = torch.randint(len(data) - seq_len - 1, (batch_size,)).tolist()
        x = torch.stack([data[i:i + seq_len] for i in start])
        y = torch.stack([data[i + 1:i + 1 + seq_len] for i in start])
        loss = model.loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}")
    model.eval()


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description="Train a tiny Speculative Streaming model on toy text, "
                                                 "then decode with a draft tree and check it equals greedy.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--gamma", type=int, default=3, help="number of speculative streams γ")
    parser.add_argument("--k", type=int, default=2, help="top-k candidates per stream (tree width)")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    words = toy_text(args.seed)
    vocab = sorted(set(words))
    encode = lambda text: [vocab.index(w) for w in text.split()]
    decode = lambda ids: " ".join(vocab[i] for i in ids)
    config = MiniConfig(vocab_size=len(vocab), block_size=64, n_layer=4, n_head=4, n_embd=64,
                        n_streams=args.gamma, n_msa_layers=2)
    model = MiniGPT(config)
    print(f"{len(words)} words, vocab {len(vocab)}, {sum(p.numel() for p in model.parameters())} parameters "
          f"({config.n_streams * config.n_embd} of them stream embeddings)")
    t0 = time.time()
    train(model, torch.tensor(encode(" ".join(words))), args.steps, batch_size=16, seq_len=32, lr=3e-3)
    print(f"trained in {time.time() - t0:.1f} s")

    model.double()  # decode in float64 so that batched and unbatched forwards agree on every argmax
    n_tokens = n_greedy_calls = n_calls = n_prompts = 0
    for prompt in ["the cat", "a small bird looked", "my best friend walked along the"]:
        print(f"\nprompt {prompt!r}  (γ={args.gamma}, k={args.k})")
        tokens, steps = speculative_decode(model, encode(prompt), args.max_new_tokens, args.gamma, args.k,
                                           verbose=True, decode=decode)
        reference = greedy_decode(model, encode(prompt), args.max_new_tokens)
        print(f"  output {decode(tokens)!r}: {len(tokens)} tokens in {len(steps)} forward passes, "
              f"identical to greedy: {tokens == reference}")
        assert tokens == reference, "speculative decoding must reproduce greedy decoding"
        n_tokens += len(tokens)
        n_greedy_calls += len(reference)
        n_calls += len(steps)
        n_prompts += 1
    # tokens per decode call: the prompt pass commits only the first root, so it is left out (docs/CONVENTIONS.md)
    tau = (n_tokens - n_prompts) / (n_calls - n_prompts)
    print(f"\nall outputs identical to greedy. {n_tokens} tokens: greedy needs {n_greedy_calls} forward passes, "
          f"speculative streaming {n_calls} (CR {n_greedy_calls / n_calls:.2f}; {tau:.2f} tokens per decode call, "
          f"root token counted)")


if __name__ == "__main__":
    main()
