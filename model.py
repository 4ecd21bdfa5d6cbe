"""A compact GPT-2 with multi-stream attention (MSA): the model of Speculative Streaming.

Paper: Bhendawade et al., "Speculative Streaming: Fast LLM Inference without Auxiliary Models",
arXiv 2402.11131. Conventions (binding, see docs/CONVENTIONS.md):
  - main logits at position t predict x[t+1]; stream j (1..γ) at position t predicts x[t+1+j];
  - blocks n_layer-n_msa_layers .. n_layer-1 are MSA blocks, the blocks below see the main stream only;
  - only the main stream's keys/values are ever cached.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

STREAM_ADAPTER_PLACES = ("attn+mlp", "attn", "mlp")  # GPTConfig.stream_adapter_in: the MSA blocks' sublayers


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = True
    n_streams: int = 0            # γ, the number of speculative streams (0 = plain GPT)
    n_msa_layers: int = 0         # N_s, the top blocks that carry streams; the pruning adapter exits below them
    lora_rank: int = 0            # LoRA rank r on attention and MLP projections (0 = off)
    lora_alpha: float = 16.0      # LoRA scale is lora_alpha / lora_rank
    stream_loss_weight: float = 0.1  # α_j of Eq. 5 (α_0 = 1)
    prune_rank: int = 0           # rank of the early-exit pruning adapter (0 = no adapter)
    stream_adapter_rank: int = 0  # "frozen" mode: a low-rank adapter in the MSA blocks that only stream rows use
    stream_adapter_in: str = "attn+mlp"  # the sublayers of an MSA block that carry it: "attn", "mlp" or "attn+mlp"
    n_medusa_heads: int = 0       # Medusa baseline: drafting heads on the last hidden state instead of streams

    def __post_init__(self):
        def check(ok: bool, field: str, allowed: str):
            if not ok:
                raise ValueError(f"GPTConfig.{field}={getattr(self, field)!r} is invalid: it must be {allowed}")
        is_int = lambda name, low: isinstance(getattr(self, name), int) and getattr(self, name) >= low
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check(is_int(name, 1), name, "an integer >= 1")
        for name in ("n_streams", "lora_rank", "prune_rank", "stream_adapter_rank", "n_medusa_heads"):
            check(is_int(name, 0), name, "an integer >= 0")
        check(self.n_embd % self.n_head == 0, "n_embd", f"divisible by n_head={self.n_head}")
        check(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)")
        low = 1 if self.n_streams > 0 else 0  # without streams, N_s only places the pruning adapter's early exit
        check(is_int("n_msa_layers", low) and self.n_msa_layers <= self.n_layer, "n_msa_layers",
              f"in {low}..n_layer={self.n_layer}" + (" when n_streams > 0" if low else ""))
        check(self.lora_alpha > 0, "lora_alpha", "> 0")
        check(self.stream_loss_weight >= 0, "stream_loss_weight", ">= 0")
        check(self.stream_adapter_rank == 0 or self.n_streams > 0, "stream_adapter_rank", "0 when n_streams = 0")
        check(self.stream_adapter_in in STREAM_ADAPTER_PLACES, "stream_adapter_in", " or ".join(STREAM_ADAPTER_PLACES))
        check(self.n_medusa_heads == 0 or self.n_streams == 0, "n_medusa_heads",
              "0 when n_streams > 0 (a model drafts with streams or with Medusa heads, not both)")

    @property
    def n_drafts(self) -> int:
        """How many tokens ahead the model drafts: γ streams or Medusa heads."""
        return self.n_streams or self.n_medusa_heads

    @property
    def first_msa_layer(self) -> int:
        """Index N - N_s of the first MSA block (n_layer when there are no streams)."""
        return self.n_layer - self.n_msa_layers


class LoRALinear(nn.Linear):
    """nn.Linear plus an optional low-rank update W + (alpha/r) B A; B starts at zero, so a fresh adapter is a no-op.
    In MSA blocks of a "frozen"-mode model, a second update (stream_A, stream_B) applies to the stream rows only
    (rows n_main.. of the input): the main stream computes exactly what the frozen model computes."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int, alpha: float, stream_rank: int = 0):
        super().__init__(in_features, out_features, bias=bias)
        self.rank, self.scale, self.merged = rank, alpha / max(rank, 1), False
        self.stream_rank, self.stream_scale = stream_rank, alpha / max(stream_rank, 1)
        if rank > 0:
            self.lora_A = nn.Parameter(torch.randn(rank, in_features) / math.sqrt(in_features))
            self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        if stream_rank > 0:
            self.stream_A = nn.Parameter(torch.randn(stream_rank, in_features) / math.sqrt(in_features))
            self.stream_B = nn.Parameter(torch.zeros(out_features, stream_rank))
        for name in ("weight_t", "stream_weight_t"):  # set by `merge`
            self.register_buffer(name, None, persistent=False)

    def forward(self, x, n_main: int | None = None):
        """x: (B, rows, in); with a stream adapter, rows n_main.. are stream rows (None: no stream rows)."""
        if self.weight_t is not None and not torch.is_grad_enabled():
            return self.forward_merged(x, n_main)
        y = F.linear(x, self.weight, self.bias)
        if self.rank > 0 and not self.merged:
            y = y + F.linear(F.linear(x, self.lora_A) * self.scale, self.lora_B)  # scale at rank r: cheaper
        if self.stream_rank > 0 and n_main is not None and x.size(1) > n_main:
            y[:, n_main:] += F.linear(F.linear(x[:, n_main:], self.stream_A) * self.stream_scale, self.stream_B)
        return y

    def forward_merged(self, x, n_main: int | None = None):
        """Inference after `merge`: plain matmuls, main rows with W + BA, stream rows with W + BA + B_s A_s."""
        if self.stream_weight_t is None or n_main is None or x.size(1) <= n_main:
            return linear_t(x, self.weight_t, self.bias)
        if n_main == 0:  # stream rows only (GPT.streams_at)
            return linear_t(x, self.stream_weight_t, self.bias)
        return torch.cat([linear_t(x[:, :n_main], self.weight_t, self.bias),
                          linear_t(x[:, n_main:], self.stream_weight_t, self.bias)], dim=1)

    @torch.no_grad()
    def merge(self, merge: bool = True):
        """Inference (merge=True, used when gradients are off): fold the update into W, keep W^T contiguous (small-row
        matmuls read it much faster on a CPU) and (W + BA + B_s A_s)^T; merge=False takes it out (before training)."""
        if self.merged == merge:
            return
        if self.rank > 0:
            delta = (self.lora_B @ self.lora_A) * self.scale
            self.weight += delta if merge else -delta
        self.merged = merge
        self.weight_t = self.weight.t().contiguous() if merge else None
        self.stream_weight_t = None
        if merge and self.stream_rank > 0:  # the stream rows' weight
            self.stream_weight_t = (self.weight + (self.stream_B @ self.stream_A) * self.stream_scale).t().contiguous()


def linear_t(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight_t + bias: x (..., in), weight_t (in, out) contiguous -> (..., out)."""
    y = x.reshape(-1, x.size(-1))
    y = torch.mm(y, weight_t) if bias is None else torch.addmm(bias, y, weight_t)
    return y.view(*x.shape[:-1], weight_t.size(1))


class KVCache:
    """Main-stream keys/values of every block, preallocated: (B, nh, max_len + γ, hs) per layer. `length` entries
    are committed; a forward writes its T new entries at [length, length+T) ("pending"); `commit(keep)` moves the
    chosen pending entries right after the committed ones (cache compaction). After a commit, GPT.streams_at uses
    [length, length+γ) as scratch for its stream keys/values. Per-row lengths: batch.RowKVCache."""

    def __init__(self, config: GPTConfig, batch_size: int = 1, max_len: int | None = None, device=None, dtype=None):
        self.max_len = max_len or config.block_size
        shape = (batch_size, config.n_head, self.max_len + config.n_streams, config.n_embd // config.n_head)
        self.k, self.v = ([torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)] for _ in "kv")
        self.length, self.pending = 0, 0  # committed entries; entries written by the last forward, not committed yet

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store T pending entries of one layer; return all keys/values a query may see: (B, nh, length+T, hs)."""
        if self.length + k.size(2) > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length + k.size(2)} entries needed, {self.max_len} allocated")
        self.pending = k.size(2)
        return self.write_scratch(layer, k, v)

    def write_scratch(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write T entries of one layer at [length, length+T), not pending (GPT.streams_at's scratch, γ columns past
        max_len, for the next forward to overwrite); return the keys/values [0, length+T): (B, nh, length+T, hs)."""
        end = self.length + k.size(2)
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def select_pending(self, keep, layers: range):
        """Keep only the pending entries `keep` (indices into the last forward's new rows) in `layers`."""
        keep = keep.tolist() if isinstance(keep, torch.Tensor) else list(keep)
        if keep == list(range(len(keep))):
            return  # already in place (e.g. an accepted chain): nothing to move
        keep = torch.tensor(keep, device=self.k[0].device)
        for layer in layers:
            for buf in (self.k[layer], self.v[layer]):
                buf[:, :, self.length:self.length + len(keep)] = buf[:, :, self.length + keep]

    def commit(self, keep=None):
        """Compaction after acceptance: the pending entries `keep` (in this order; None = all) become committed."""
        if keep is None:
            self.length += self.pending
        else:
            self.select_pending(keep, range(len(self.k)))
            self.length += len(keep)
        self.pending = 0


class CausalSelfAttention(nn.Module):
    """Multi-head attention for the main stream and, in MSA blocks, for the γ streams (Eq. 1, Eq. 2)."""

    def __init__(self, config: GPTConfig, stream_rank: int = 0):
        super().__init__()
        r, a = config.lora_rank, config.lora_alpha
        self.c_attn = LoRALinear(config.n_embd, 3 * config.n_embd, config.bias, r, a, stream_rank)
        self.c_proj = LoRALinear(config.n_embd, config.n_embd, config.bias, r, a, stream_rank)
        self.attn_dropout, self.resid_dropout = nn.Dropout(config.dropout), nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.n_head, -1)).movedim(-2, 1)  # (B, ..., C) -> (B, nh, ..., hs)

    def forward(self, h, n_main, n_streams=0, mask=None, cache=None, layer=0, stream_rows=None):
        """h: (B, T + T'·γ, C): T main rows, then the γ stream rows of each of T' nodes (node by node); the
        streams belong to the main rows `stream_rows` (all when None). mask: (T, L+T) bool, True = may attend,
        or (B, 1, T, L+T) for a mask per batch row (None = causal on an empty cache). Returns (B, T + T'·γ, C)."""
        B, _, C = h.size()
        T, G = n_main, n_streams
        if mask is None and cache is not None and cache.length > 0:
            raise ValueError("a forward on top of a non-empty KV cache needs an explicit attention mask")
        q, k, v = self.c_attn(h, T).split(C, dim=-1)  # one matmul for main and stream rows (shared weights)
        qm, km, vm = (self.heads(t[:, :T]) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            km, vm = cache.write(layer, km, vm)  # (B, nh, L+T, hs): the cache, then the new rows
        # Eq. 1: the main stream attends to main keys only (causal, or the tree mask on top of the cache)
        y = F.scaled_dot_product_attention(qm, km, vm, attn_mask=mask, is_causal=mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        if G > 0:
            qs, ks, vs = (self.heads(t[:, T:].unflatten(1, (-1, G))) for t in (q, k, v))  # (B, nh, T', γ, hs)
            if mask is None:
                mask = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
            if stream_rows is not None:
                mask = mask[..., stream_rows, :]  # a stream sees exactly the main keys its own node sees
            ys = self.stream_attention(qs, ks, vs, km, vm, mask)  # (B, nh, T', γ, hs)
            ys = ys.movedim(1, -2).flatten(-2).flatten(1, 2)  # (B, T'·γ, C)
            y = torch.cat([y, ys], dim=1)  # (B, T + T'·γ, C)
        return self.resid_dropout(self.c_proj(y, T))

    def forward_streams(self, h, mask, cache, layer):
        """Eq. 2 for the γ streams of one already cached node alone (GPT.streams_at, inference): h (B, γ, C); stream
        j attends to the committed main keys and to streams 1..j, in one softmax. mask: (γ, L+γ) or, per batch row,
        (B, 1, γ, L+γ) over [committed cache + the γ streams]. Returns (B, γ, C)."""
        B, G, C = h.size()
        q, k, v = self.c_attn(h, 0).view(B, G, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, γ, hs)
        k, v = cache.write_scratch(layer, k, v)  # (B, nh, L+γ, hs): the committed keys, then the streams' own
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, γ, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, G, C), 0)


    def stream_attention(self, qs, ks, vs, km, vm, mask):
        """Eq. 2: stream j of node t attends, in one softmax, to the main keys t may see (mask: (T', L+T), or
        (B, 1, T', L+T) per batch row) and to streams 1..j of t. qs, ks, vs: (B, nh, T', γ, hs); km, vm:
        (B, nh, L+T, hs). Two score blocks, never a (1+γ)T square mask."""
        G = qs.size(3)
        stream_mask = torch.ones(G, G, dtype=torch.bool, device=qs.device).tril()
        if qs.size(2) == 1:  # one node (decoding): its γ queries share one key set, an ordinary attention
            keys, values = torch.cat([km, ks[:, :, 0]], dim=2), torch.cat([vm, vs[:, :, 0]], dim=2)
            main_mask = mask.expand(*mask.shape[:-2], G, -1)  # (γ, L+T) or (B, 1, γ, L+T)
            both = torch.cat([main_mask, stream_mask.expand(*main_mask.shape[:-1], G)], dim=-1)  # (..., γ, L+T+γ)
            ys = F.scaled_dot_product_attention(qs[:, :, 0], keys, values, attn_mask=both,
                                                dropout_p=self.dropout if self.training else 0.0)
            return ys.unsqueeze(2)
        scale = 1.0 / math.sqrt(qs.size(-1))
        att_main = (qs.transpose(2, 3) @ km.unsqueeze(2).transpose(-2, -1)) * scale  # (B, nh, γ, T', L+T)
        att_main = att_main.masked_fill(~mask.unsqueeze(-3), float("-inf"))  # the mask broadcast over streams
        att_self = (qs @ ks.transpose(-2, -1)) * scale  # (B, nh, T', γ, γ): same-node streams
        att_self = att_self.masked_fill(~stream_mask, float("-inf")).transpose(2, 3)  # (B, nh, γ, T', γ)
        att = self.attn_dropout(F.softmax(torch.cat([att_main, att_self], dim=-1), dim=-1))
        att_main, att_self = att.split([km.size(2), G], dim=-1)
        return (att_main @ vm.unsqueeze(2)).transpose(2, 3) + att_self.transpose(2, 3) @ vs  # (B, nh, T', γ, hs)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, stream_rank: int = 0):
        super().__init__()
        r, a = config.lora_rank, config.lora_alpha
        self.c_fc = LoRALinear(config.n_embd, 4 * config.n_embd, config.bias, r, a, stream_rank)
        self.c_proj = LoRALinear(4 * config.n_embd, config.n_embd, config.bias, r, a, stream_rank)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, n_main: int | None = None):
        """x: (B, rows, C); rows n_main.. are stream rows (they alone use the stream adapter, if any)."""
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x, n_main), approximate="tanh"), n_main))


class Block(nn.Module):
    """Pre-LayerNorm transformer block. Streams (if any) go through the very same weights as the main stream
    (plus, in "frozen" mode, a stream-only adapter in the sublayers that config.stream_adapter_in names)."""

    def __init__(self, config: GPTConfig, stream_rank: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, stream_rank if "attn" in config.stream_adapter_in else 0)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config, stream_rank if "mlp" in config.stream_adapter_in else 0)

    def forward(self, x, s=None, mask=None, cache=None, layer=0, stream_rows=None):
        """x: (B, T, C) main stream; s: (B, T', γ, C) streams of the rows `stream_rows` of x, or None."""
        T, G = x.size(1), 0 if s is None else s.size(2)
        h = x if s is None else torch.cat([x, s.flatten(1, 2)], dim=1)  # all rows through the same weights
        h = h + self.attn(self.ln_1(h), T, G, mask, cache, layer, stream_rows)
        h = h + self.mlp(self.ln_2(h), T)
        return h[:, :T], None if s is None else h[:, T:].view_as(s)

    def forward_streams(self, s, mask, cache, layer):
        """s: (B, γ, C), the streams of one already cached node alone (GPT.streams_at); mask: see the attention's."""
        s = s + self.attn.forward_streams(self.ln_1(s), mask, cache, layer)
        return s + self.mlp(self.ln_2(s), 0)


class PruneAdapter(nn.Module):
    """Rank-r adapter o(h) = h + up(down(h)) for early-exit logits lm_head(ln_f(o(h))) used to prune the tree."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.down = nn.Linear(config.n_embd, config.prune_rank, bias=False)
        self.up = nn.Linear(config.prune_rank, config.n_embd, bias=False)  # zero at init (GPT.__init__)

    def forward(self, h):
        return h + self.up(self.down(h))


class MedusaHeads(nn.Module):
    """The Medusa baseline (Cai et al., 2024): head j, a ResBlock h + SiLU(W_j h + b_j) then its own LM head,
    predicts x[t+1+j] from the last hidden state at t; ResBlocks start at zero, LM heads as copies of the base one."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        d, V, n = config.n_embd, config.vocab_size, config.n_medusa_heads
        self.res = nn.ModuleList([nn.Linear(d, d) for _ in range(n)])
        self.lm_heads = nn.ModuleList([nn.Linear(d, V, bias=False) for _ in range(n)])

    def forward(self, h, weights_t: torch.Tensor | None = None):
        """h: (..., C) -> logits (..., n_heads, V), or (..., n_heads, N) through trimmed heads (n_heads, C, N)."""
        h = [h + F.silu(res(h)) for res in self.res]
        if weights_t is None:
            return torch.stack([head(x) for x, head in zip(h, self.lm_heads)], dim=-2)
        return torch.stack([linear_t(x, w, None) for x, w in zip(h, weights_t)], dim=-2)


@dataclass
class GPTOutput:
    """Without targets: logits at every position. With targets (training), only the positions with something to learn
    go through the LM head(s): logits (N, V), stream_logits (N', γ, V), and the targets they were scored against."""
    logits: torch.Tensor | None          # (B, T, V) main stream, predicts x[t+1]; (N, V) with targets
    stream_logits: torch.Tensor | None   # (B, T', γ, V) stream (or Medusa head) j predicts x[t+1+j]; (N', γ, V)
    loss: torch.Tensor | None = None     # Eq. 5
    main_loss: torch.Tensor | None = None
    stream_losses: torch.Tensor | None = None  # (γ,)
    targets: torch.Tensor | None = None        # (N,) x[t+1] at the scored positions (-1 = not learned)
    stream_targets: torch.Tensor | None = None  # (N', γ) x[t+1+j] at the scored positions (-1 = not learned)


def stream_targets(targets: torch.Tensor, n_ahead: int) -> torch.Tensor:
    """Eq. 5's targets of stream j at t: x[t+1+j] = targets[:, t+j] (-1 past the end). (B, T) -> (B, T, γ)."""
    ahead = [F.pad(targets[:, j:], (0, min(j, targets.size(1))), value=-1) for j in range(1, n_ahead + 1)]
    return torch.stack(ahead, dim=-1) if ahead else targets.new_empty(*targets.shape, 0)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd), wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, config.stream_adapter_rank if layer >= config.first_msa_layer else 0)
                             for layer in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        if config.n_streams > 0:  # P_j of Eq. 3, one learned vector per stream
            self.transformer.stream_emb = nn.Parameter(torch.zeros(config.n_streams, config.n_embd))
        self.lm_head = LoRALinear(config.n_embd, config.vocab_size, False, 0, 1.0)  # no adapter: merge_lora only transposes it
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        if config.prune_rank > 0:
            self.prune_adapter = PruneAdapter(config)
        if config.n_medusa_heads > 0:
            self.medusa = MedusaHeads(config)
        for name in ("draft_ids", "draft_weight_t"):  # set by trim_draft_vocab (decoding only)
            self.register_buffer(name, None, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
            elif name == "transformer.stream_emb":
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name == "prune_adapter.up.weight" or name.startswith("medusa.res."):
                nn.init.zeros_(p)  # a fresh adapter / ResBlock is the identity (adapter: plain early exit)
        if config.n_medusa_heads > 0:
            self.init_medusa_from_lm_head()

    @torch.no_grad()
    def init_medusa_from_lm_head(self):
        """Medusa's LM heads start as copies of the base LM head (call again after loading base weights)."""
        for head in self.medusa.lm_heads:
            head.weight.copy_(self.lm_head.weight)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ---- the three pieces of a forward pass, shared by training and inference ----

    def embed(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings. idx: (B, T), pos: (T,) -> (B, T, C)."""
        if int(pos.max()) >= self.config.block_size:
            raise ValueError(f"position {int(pos.max())} is past block_size={self.config.block_size}")
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))

    def lower(self, x: torch.Tensor, mask=None, cache: KVCache | None = None) -> torch.Tensor:
        """Blocks 0 .. N-N_s-1, main stream only. Returns the hidden state at the input of block N-N_s."""
        for layer in range(self.config.first_msa_layer):
            x, _ = self.transformer.h[layer](x, None, mask, cache, layer)
        return x

    def upper(self, x: torch.Tensor, mask=None, cache: KVCache | None = None, stream_rows=None,
              n_streams: int | None = None):
        """MSA blocks N-N_s .. N-1 and the final LayerNorm. Streams 1..n_streams (default all) are attached to
        the rows `stream_rows` of x (all rows when None); streams 1..j never depend on streams > j, so fewer
        streams give the same values. Returns normalised main (B, T, C) and stream states (B, T', γ, C)."""
        s = None
        n_streams = self.config.n_streams if n_streams is None else n_streams
        if n_streams > 0 and (stream_rows is None or len(stream_rows) > 0):
            rows = x if stream_rows is None else x[:, stream_rows]
            s = rows.unsqueeze(2) + self.transformer.stream_emb[:n_streams]  # Eq. 3 (f = identity): S_j = M + P_j
        for layer in range(self.config.first_msa_layer, self.config.n_layer):
            x, s = self.transformer.h[layer](x, s, mask, cache, layer, None if s is None else stream_rows)
        return self.transformer.ln_f(x), None if s is None else self.transformer.ln_f(s)

    def draft_logits(self, states: torch.Tensor, trimmed: bool = False) -> torch.Tensor:
        """Logits of the drafters, (..., γ, V), all aiming at x[t+1+j] from position t: stream states (..., γ, C)
        through the shared LM head, or (Medusa baseline) the heads on final main states (..., C). Decoding passes
        trimmed=True: after `trim_draft_vocab`, only the columns of draft_ids, (..., γ, N)."""
        weights_t = self.draft_weight_t if trimmed else None
        if self.config.n_medusa_heads > 0:
            return self.medusa(states, weights_t)
        return self.lm_head(states) if weights_t is None else linear_t(states, weights_t[0], None)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None,
                stream_rows: torch.Tensor | None = None, main_loss: bool = True) -> GPTOutput:
        """Full-sequence forward (training). idx, targets: (B, T), targets[:, t] = x[t+1] (-1 = ignore); loss_mask:
        (B, T) bool, False where nothing is learned (prompt tokens); stream_rows: (T',) sorted positions that get
        streams / Medusa drafts (None = all; exact for those positions). main_loss=False (frozen mode, α0 = 0): no
        main-stream LM head, the loss is the stream terms of Eq. 5 only."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.config.block_size}")
        if not main_loss and self.config.n_drafts == 0:
            raise ValueError("main_loss=False leaves no loss on a model without streams or Medusa heads")
        pos = torch.arange(T, device=idx.device)
        main, drafts = self.upper(self.lower(self.embed(idx, pos)), stream_rows=stream_rows)  # drafts: streams
        if self.config.n_medusa_heads > 0:  # Medusa drafts from the main stream's rows
            drafts = main if stream_rows is None else main[:, stream_rows]
        if targets is None:
            return GPTOutput(self.lm_head(main), None if drafts is None else self.draft_logits(drafts))
        if loss_mask is not None:
            targets = targets.masked_fill(~loss_mask.bool(), -1)
        ahead = stream_targets(targets, self.config.n_drafts)  # (B, T, γ)
        ahead = ahead if stream_rows is None else ahead[:, stream_rows]  # (B, T', γ)
        rows, draft_rows = targets != -1, (ahead != -1).any(-1)  # only rows with a target need the LM head(s)
        logits = self.lm_head(main[rows]) if main_loss else None  # (N, V)
        draft = None if drafts is None else self.draft_logits(drafts[draft_rows])  # (N', γ, V)
        out = GPTOutput(logits, draft, targets=targets[rows], stream_targets=ahead[draft_rows])
        out.loss, out.main_loss, out.stream_losses = self.loss(logits, draft, out.targets, out.stream_targets)
        return out

    def loss(self, logits, draft_logits, targets, stream_targets):
        """Eq. 5: L = CE(main_t, x[t+1]) + sum_j α_j CE(stream_{t,j}, x[t+1+j]), each CE a mean over its valid
        targets. logits (..., V), draft_logits (..., γ, V) or None, targets (...) = x[t+1], stream_targets
        (..., γ) = x[t+1+j] (see `stream_targets`), -1 = ignored. Returns (L, main CE, (γ,) stream CEs)."""
        main_loss = None if logits is None else cross_entropy(logits, targets)
        if draft_logits is None:
            return main_loss, main_loss, None
        G = draft_logits.size(-2)  # one CE over all streams (no per-stream slices: their backward is costly)
        per_token = F.cross_entropy(draft_logits.reshape(-1, draft_logits.size(-1)), stream_targets.reshape(-1),
                                    ignore_index=-1, reduction="none").view(-1, G)
        counts = (stream_targets.reshape(-1, G) != -1).sum(0).clamp(min=1)
        stream_losses = per_token.sum(0) / counts  # (γ,) each stream's mean CE over its valid targets
        streams = self.config.stream_loss_weight * stream_losses.sum()
        return streams if main_loss is None else main_loss + streams, main_loss, stream_losses

    # ---- inference on top of a KV cache ----

    def forward_nodes(self, idx: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache: KVCache,
                      stream_rows=None, n_streams: int | None = None):
        """Forward new nodes (a prompt, one token, or a flattened tree) on top of the cache, all layers.
        idx: (B, T); pos: (T,); mask: (T, L+T) bool over [cache + new nodes]. Returns main logits (B, T, V)
        and stream states (B, T', γ, C) (apply `lm_head` only where needed). Entries stay pending in the cache."""
        h = self.lower(self.embed(idx, pos), mask, cache)
        main, streams = self.upper(h, mask, cache, stream_rows, n_streams)
        return self.lm_head(main), streams

    def streams_at(self, h: torch.Tensor, cache: KVCache, n_streams: int | None = None,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
        """Streams of the last committed node alone, after verification (Eq. 2): h (B, C) is its state at the input of
        block N-N_s; its streams see the committed cache (all of it, or what mask (B, 1, γ, L+γ) allows: batch.py)
        and streams 1..j. Returns (B, γ, C), equal to a forward with the node; uses the cache's scratch columns."""
        if cache.pending:
            raise ValueError(f"streams_at needs a committed cache: {cache.pending} pending entries would be "
                             f"overwritten by its scratch; call cache.commit first")
        G = self.config.n_streams if n_streams is None else n_streams
        if mask is None:  # stream j sees the L committed entries and streams 1..j
            mask = torch.ones(G, cache.length + G, dtype=torch.bool, device=h.device).tril(cache.length)
        s = h[:, None] + self.transformer.stream_emb[:G]  # (B, γ, C), Eq. 3
        for layer in range(self.config.first_msa_layer, self.config.n_layer):
            s = self.transformer.h[layer].forward_streams(s, mask, cache, layer)
        return self.transformer.ln_f(s)

    def early_exit_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Pruning logits z~ = lm_head(ln_f(o(h))) from the hidden state h at the input of block N-N_s."""
        return self.lm_head(self.transformer.ln_f(self.prune_adapter(h)))

    # ---- inference settings: a trimmed draft vocabulary, LoRA folded into the weights ----

    def trim_draft_vocab(self, ids: torch.Tensor | None):
        """Decoding: the drafters (streams, or each Medusa head) score only the token ids `ids` (N,), through
        contiguous (C, N) copies of their LM-head rows; verification, pruning and training keep all V. None: undo."""
        V, heads = self.config.vocab_size, self.medusa.lm_heads if self.config.n_medusa_heads > 0 else [self.lm_head]
        if ids is None:
            self.draft_ids = self.draft_weight_t = None
        elif ids.dim() == 1 and 0 < len(ids) == len(ids.unique()) and 0 <= ids.min() and ids.max() < V:
            self.draft_ids = ids.to(self.lm_head.weight.device, torch.long)
            self.draft_weight_t = torch.stack([h.weight.detach()[self.draft_ids].t() for h in heads]).contiguous()
        else:
            raise ValueError(f"not a draft vocabulary — give a 1-D tensor of 1..{V} distinct token ids in [0, {V})")

    def merge_lora(self, merge: bool = True):
        """Inference: fold LoRA into the weights and give every projection and the LM head the inference layout
        (LoRALinear.merge); merge=False undoes it (checkpoints always hold unmerged weights)."""
        for m in self.modules():
            if isinstance(m, LoRALinear):
                m.merge(merge)


def is_stream_param(name: str) -> bool:
    """Parameters only the streams use: the stream embeddings P_j and the stream-only adapter ("frozen" mode)."""
    return name == "transformer.stream_emb" or ".stream_A" in name or ".stream_B" in name


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE over targets != -1 (0 when there are none, instead of NaN)."""
    total = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-1, reduction="sum")
    return total / (targets != -1).sum().clamp(min=1)
