"""Batched decoding: several prompts decoded together, each losslessly, with ragged acceptance.

Layout (one design for AR and SS):
 - prompts are right-padded to the longest one and prefilled with the plain causal mask: a real token never
   sees a later column, so padding never reaches a real row (the pad id changes nothing);
 - from then on row b holds its own number of committed cache entries, RowKVCache.row_lengths[b]. A forward
   writes every row's new nodes at the same columns [length, length+N) (length = the longest row's), and the
   per-row mask (B, 1, N, length+N) lets row b see its first row_lengths[b] columns, never the stale ones
   between its own length and `length`. Position of a node = its row's cache length + its depth;
 - every row drafts its own tree (caps, pruning and the depth left before max_new_tokens make the sizes
   differ); trees are padded to the largest one with dummy nodes that see only themselves and that no node
   sees, and are never committed;
 - verification and cache compaction are per row (verify_greedy, RowKVCache.commit_rows); a row that finishes
   (EOS or max_new_tokens) leaves the batch (RowKVCache.select_rows) and the others go on with fewer rows.
The decoders run generate.py's named steps on every row at once: speculative_prefill_rows, then one
speculative_step_rows per call (draft_rows, forward_trees, verify_rows, commit_rows); autoregressive decoding is
prefill_rows, then one autoregressive_step_rows per call.
Each row's result is that of the same prompt decoded alone: tokens, step_tokens, forward_calls (the batched
forwards the row took part in, prefill included) and per-depth acceptance; wall_time is the time until that
row finished, so the batch took max(wall_time) and made max(forward_calls) batched forwards.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from generate import (GenerationResult, SpecSettings, causal_mask, check_int, check_prompt, check_speculative,
                      commit_tokens, draft_topk, greedy_tokens, record_call)
from model import GPT, KVCache
from tree import Tree, draft_tree, prune_tree, subtree, verify_greedy


class RowKVCache(KVCache):
    """A KV cache whose batch rows hold different numbers of committed entries: after `commit_rows`, row b holds
    its own row_lengths[b] entries at [0, row_lengths[b]), `length` is the longest row's, and the columns
    [row_lengths[b], length) are stale for row b (its attention mask must hide them). Writes stay one slice."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.row_lengths: list[int] | None = None  # committed entries per row, once set by commit_rows

    def select_pending_rows(self, keep: torch.Tensor, layers: range):
        """Per-row `select_pending`: row b keeps its pending entries keep[b] (keep: (B, n) indices into the last
        forward's new rows), moved to the first n pending columns, in `layers`."""
        index = (self.length + keep)[:, None, :, None]  # (B, 1, n, 1), broadcast over heads and head size
        for layer in layers:
            for buf in (self.k[layer], self.v[layer]):
                buf[:, :, self.length:self.length + keep.size(1)] = torch.take_along_dim(buf, index, dim=2)

    def commit_rows(self, keep: list[list[int]]):
        """Per-row compaction: row b's pending entries keep[b] (in this order) are appended to its own committed
        entries. Rows may keep different numbers of entries; `length` becomes the longest row's."""
        if len(keep) != self.k[0].size(0):
            raise ValueError(f"commit_rows needs one list of entries per row: got {len(keep)} for "
                             f"{self.k[0].size(0)} rows")
        lengths = self.row_lengths or [self.length] * len(keep)
        rows, src, dst = [], [], []
        for b, kept in enumerate(keep):
            rows += [b] * len(kept)
            src += [self.length + i for i in kept]
            dst += range(lengths[b], lengths[b] + len(kept))
        if src != dst:  # nothing to move when every row's kept entries are already in place
            rows, src, dst = (torch.tensor(x, dtype=torch.long, device=self.k[0].device) for x in (rows, src, dst))
            for buf in self.k + self.v:
                buf[rows, :, dst] = buf[rows, :, src]  # (N, nh, hs) entries, gathered before they are written
        self.row_lengths = [n + len(kept) for n, kept in zip(lengths, keep)]
        self.length, self.pending = max(self.row_lengths), 0

    def select_rows(self, rows: list[int]):
        """Keep only the batch rows `rows`, in this order (rows that finished decoding leave the batch)."""
        lengths = self.row_lengths or [self.length] * self.k[0].size(0)
        index = torch.tensor(rows, dtype=torch.long, device=self.k[0].device)
        self.k, self.v = [buf[index] for buf in self.k], [buf[index] for buf in self.v]
        self.row_lengths = [lengths[r] for r in rows]
        self.length = max(self.row_lengths, default=0)


def check_prompts(model: GPT, prompts, max_new_tokens: int, pad_id: int) -> list[list[int]]:
    """Validate a non-empty list of prompts (each a list of ints or a 1-D LongTensor) and the padding token;
    return the prompts as lists."""
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0 or any(isinstance(p, int) for p in prompts):
        raise TypeError("prompts must be a non-empty list of prompts, each a list of token ids (one prompt: [ids])")
    check_int("pad_id", pad_id, 0, model.config.vocab_size - 1, note=" (a token id)")
    return [check_prompt(model, p, max_new_tokens)[0].tolist() for p in prompts]


# ------------------------------------------------------------------------------------------------------------
# masks of rows with different cache lengths
# ------------------------------------------------------------------------------------------------------------

def rows_mask(cache: RowKVCache, ancestors: torch.Tensor) -> torch.Tensor:
    """(B, 1, N, L+N) attention mask of N new nodes per row: row b's nodes see its first row_lengths[b] cache
    columns (not the stale ones after them) and, among the new nodes, what `ancestors` (B, N, N) allows."""
    B, N, _ = ancestors.shape
    lengths = torch.tensor(cache.row_lengths, device=ancestors.device)
    seen = torch.arange(cache.length, device=ancestors.device) < lengths[:, None]  # (B, L)
    return torch.cat([seen[:, None].expand(B, N, -1), ancestors], dim=-1)[:, None]


def pad_trees(trees: list[Tree], cache: RowKVCache) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack one tree per row into (B, N) tokens and positions (row's cache length + depth) and the (B, 1, N, L+N)
    mask, N = the largest tree. Padding nodes are dummies: they see only themselves and no node sees them."""
    device, B, N = trees[0].tokens.device, len(trees), max(len(t) for t in trees)
    tokens, depths = (torch.zeros(B, N, dtype=torch.long, device=device) for _ in range(2))  # dummies: token 0
    ancestors = torch.eye(N, dtype=torch.bool, device=device).repeat(B, 1, 1)
    for b, t in enumerate(trees):
        n = len(t)
        tokens[b, :n], depths[b, :n], ancestors[b, :n, :n] = t.tokens, t.depths, t.ancestors
    positions = torch.tensor(cache.row_lengths, device=device)[:, None] + depths
    return tokens, positions, rows_mask(cache, ancestors)


def streams_at_rows(model: GPT, h: torch.Tensor, cache: RowKVCache, n_streams: int) -> torch.Tensor:
    """GPT.streams_at for rows of different cache lengths: h (B, C) is each row's last committed node at the input
    of block N-N_s; its streams see the row's own committed entries. Returns stream states (B, γ, C)."""
    streams = causal_mask(n_streams, h.device).expand(h.size(0), -1, -1)  # (B, γ, γ): stream j sees streams 1..j
    return model.streams_at(h, cache, n_streams, rows_mask(cache, streams))  # mask (B, 1, γ, L+γ)


# ------------------------------------------------------------------------------------------------------------
# the named steps of generate.py, one row per prompt
# ------------------------------------------------------------------------------------------------------------

@dataclass
class Drafters:
    """generate.Drafter for every row still decoding: its root and what its next tree is drafted from."""
    roots: list[int]                  # (B,) the main stream's token after each row's last accepted node
    streams: torch.Tensor | None      # (B, γ, C) stream states of each row's last accepted node (None: AR)

    def select(self, keep: list[int]) -> Drafters:
        """The rows `keep`, in this order."""
        return Drafters([self.roots[i] for i in keep], None if self.streams is None else self.streams[keep])


@dataclass
class TreesPass:
    """generate.TreePass of a batched forward: every row's tree through the model at once."""
    trees: list[Tree]                 # each row's surviving tree (after pruning)
    h: torch.Tensor                   # (B, n, C) states at the input of block N-N_s, n = the largest tree
    streams: torch.Tensor | None      # (B, n, γ, C) final stream states (stream_pass="tree")
    main_argmax: list[list[int]]      # (B, n) main-stream argmax at each node


@dataclass
class RowsStep:
    """generate.SpecStep of every row: the drafted trees, the forward, the accepted paths, the next drafters."""
    drafted: list[Tree]
    fwd: TreesPass
    paths: list[list[int]]            # each row's accepted path, indices into fwd.trees[b], root first
    next: Drafters

    def tokens(self, b: int) -> list[int]:
        """Row b's accepted drafts and new root (before EOS / max_new_tokens truncation)."""
        return self.fwd.trees[b].tokens[self.paths[b][1:]].tolist() + [self.next.roots[b]]


def prefill_rows(model: GPT, prompts: list[list[int]], max_new_tokens: int, max_pending: int,
                 pad_id: int) -> tuple[RowKVCache, torch.Tensor, torch.Tensor]:
    """Run the right-padded prompts through the main stream into a fresh cache and commit each row's own prompt
    entries. Returns the cache, and at each row's last prompt token the hidden state at the input of block N-N_s
    (B, C) and the main logits (B, V)."""
    p = next(model.parameters())
    B, P = len(prompts), max(len(prompt) for prompt in prompts)
    idx = torch.tensor([prompt + [pad_id] * (P - len(prompt)) for prompt in prompts], device=p.device)  # (B, P)
    cache = RowKVCache(model.config, B, P + max_new_tokens + max_pending, p.device, p.dtype)
    mask = causal_mask(P, p.device)  # right padding: a real token sees only real tokens before it
    h = model.lower(model.embed(idx, torch.arange(P, device=p.device)), mask, cache)
    main, _ = model.upper(h, mask, cache, n_streams=0)
    cache.commit_rows([list(range(len(prompt))) for prompt in prompts])
    rows = torch.arange(B, device=p.device)
    last = torch.tensor([len(prompt) - 1 for prompt in prompts], device=p.device)  # each row's last prompt token
    return cache, h[rows, last], model.lm_head(main[rows, last])


def speculative_prefill_rows(model: GPT, prompts: list[list[int]], max_new_tokens: int, max_pending: int,
                             pad_id: int, s: SpecSettings) -> tuple[RowKVCache, Drafters]:
    """generate.speculative_prefill of every row: the prompts into the cache, then the streams of each row's last
    prompt token (they see that row's own prompt only). Returns the cache and the first drafters."""
    cache, h, logits = prefill_rows(model, prompts, max_new_tokens, max_pending, pad_id)
    return cache, Drafters(greedy_tokens(logits).tolist(), streams_at_rows(model, h, cache, s.gamma))


def draft_rows(model: GPT, drafters: Drafters, depths: list[int], s: SpecSettings) -> list[Tree]:
    """generate.draft of every row (greedy): row b's tree to depths[b] from its streams' top-k, one LM-head call
    for the whole batch."""
    tokens, probs = draft_topk(model, None, drafters.streams, s.gamma, s.k)  # (B, γ, k) each
    return [draft_tree(root, tokens[b, :depth], probs[b, :depth], cap=s.tree_cap)
            for b, (root, depth) in enumerate(zip(drafters.roots, depths))]


def prune_rows(model: GPT, trees: list[Tree], h: torch.Tensor, mask: torch.Tensor, cache: RowKVCache,
               threshold: float) -> tuple[list[Tree], torch.Tensor, torch.Tensor]:
    """The pruning of generate.forward_tree, per row: each row's survivors (tree.prune_tree), their states h
    (B, n, C) and lower-layer cache entries moved to the first n columns, and the mask of the surviving trees."""
    probs = F.softmax(model.early_exit_logits(h).float(), dim=-1)  # (B, N, V)
    survivors = [prune_tree(t, probs[b, :len(t)], threshold) for b, t in enumerate(trees)]
    if all(len(kept) == len(t) for kept, t in zip(survivors, trees)):
        return trees, h, mask
    n = max(len(kept) for kept in survivors)  # rows padded with node 0 again: a dummy once re-masked
    index = torch.stack([F.pad(kept, (0, n - len(kept))) for kept in survivors])  # (B, n)
    cache.select_pending_rows(index, range(model.config.first_msa_layer))  # drop pruned lower-layer entries
    trees = [subtree(t, kept) for t, kept in zip(trees, survivors)]
    return trees, torch.take_along_dim(h, index[..., None], dim=1), pad_trees(trees, cache)[2]


def forward_trees(model: GPT, drafted: list[Tree], cache: RowKVCache, s: SpecSettings) -> TreesPass:
    """generate.forward_tree of every row in one forward: the trees padded to the largest one, lower blocks,
    pruning per row, MSA blocks (streams on every node with stream_pass="tree", Eq. 2), main argmax."""
    tokens, positions, mask = pad_trees(drafted, cache)
    h = model.lower(model.embed(tokens, positions), mask, cache)  # (B, N, C)
    trees = drafted
    if s.prune_threshold is not None:
        trees, h, mask = prune_rows(model, drafted, h, mask, cache, s.prune_threshold)
    main, streams = model.upper(h, mask, cache, n_streams=s.gamma if s.stream_pass == "tree" else 0)
    return TreesPass(trees, h, streams, greedy_tokens(model.lm_head(main)).tolist())


def verify_rows(fwd: TreesPass) -> tuple[list[list[int]], list[int]]:
    """generate.verify of every row (greedy): its accepted path (indices into its tree, root first) and new root."""
    paths = [verify_greedy(t, argmax[:len(t)]) for t, argmax in zip(fwd.trees, fwd.main_argmax)]
    return paths, [argmax[path[-1]] for argmax, path in zip(fwd.main_argmax, paths)]


def commit_rows(model: GPT, cache: RowKVCache, fwd: TreesPass, paths: list[list[int]], roots: list[int],
                s: SpecSettings) -> Drafters:
    """generate.commit of every row: compact each row's cache to its accepted path; the next drafters are the
    streams of each row's last accepted node (stream_pass="accepted": run now, a γ-row sub-pass per row)."""
    cache.commit_rows(paths)
    rows = torch.arange(len(paths), device=fwd.h.device)
    last = torch.tensor([path[-1] for path in paths], device=fwd.h.device)  # each row's last accepted node
    if s.stream_pass == "tree":
        return Drafters(roots, fwd.streams[rows, last])
    return Drafters(roots, streams_at_rows(model, fwd.h[rows, last], cache, s.gamma))


def speculative_step_rows(model: GPT, cache: RowKVCache, drafters: Drafters, depths: list[int],
                          s: SpecSettings) -> RowsStep:
    """generate.speculative_step of every row in one batched forward: draft, forward, verify, commit."""
    drafted = draft_rows(model, drafters, depths, s)
    fwd = forward_trees(model, drafted, cache, s)
    paths, roots = verify_rows(fwd)
    return RowsStep(drafted, fwd, paths, commit_rows(model, cache, fwd, paths, roots, s))


def autoregressive_step_rows(model: GPT, cache: RowKVCache, roots: list[int]) -> list[int]:
    """One autoregressive forward of every row: its root at its own next position; returns the greedy next tokens
    and commits the roots' cache entries."""
    device = cache.k[0].device
    mask = rows_mask(cache, torch.ones(len(roots), 1, 1, dtype=torch.bool, device=device))  # (B, 1, 1, L+1)
    positions = torch.tensor(cache.row_lengths, device=device)[:, None]
    logits, _ = model.forward_nodes(torch.tensor(roots, device=device)[:, None], positions, mask, cache,
                                    n_streams=0)
    cache.commit_rows([[0]] * len(roots))
    return greedy_tokens(logits[:, 0]).tolist()


# ------------------------------------------------------------------------------------------------------------
# the batched decoders
# ------------------------------------------------------------------------------------------------------------

def retire_finished(done: list[bool], active: list[int], drafters: Drafters, results: list[GenerationResult],
                    cache: RowKVCache, start: float) -> tuple[list[int], Drafters]:
    """Rows whose decoding is done leave the batch (their cache rows too). Returns the rest of `active` (indices
    into `results`) and of the drafters."""
    keep = [i for i, d in enumerate(done) if not d]
    for i in (i for i, d in enumerate(done) if d):
        results[active[i]].wall_time = time.perf_counter() - start
    if keep and len(keep) < len(active):
        cache.select_rows(keep)
        drafters = drafters.select(keep)
    return [active[i] for i in keep], drafters


def commit_roots(results: list[GenerationResult], active: list[int], roots: list[int], max_new_tokens: int,
                 eos_id: int | None) -> list[bool]:
    """Count a forward whose only new token per row is its root (a prefill, an autoregressive step) and commit
    the roots. Returns which rows are done."""
    done = []
    for r, root in zip(active, roots):
        results[r].forward_calls += 1
        done.append(commit_tokens(results[r], [root], max_new_tokens, eos_id))
    return done


def record_rows(results: list[GenerationResult], active: list[int], step: RowsStep, max_new_tokens: int,
                eos_id: int | None) -> list[bool]:
    """record_call and commit_tokens of every row of one batched decode call. Returns which rows are done."""
    done = []
    for b, r in enumerate(active):
        drafted, path = step.drafted[b], step.paths[b]
        record_call(results[r], int(drafted.depths.max()), len(path) - 1, len(drafted), len(step.fwd.trees[b]))
        done.append(commit_tokens(results[r], step.tokens(b), max_new_tokens, eos_id))
    return done


@torch.inference_mode()
def generate_autoregressive_batch(model: GPT, prompts, max_new_tokens: int, eos_id: int | None = None,
                                  pad_id: int = 0) -> list[GenerationResult]:
    """Greedy decoding of several prompts together, one token per row and forward; row b's result equals
    generate_autoregressive(model, prompts[b], ...). Prompts may differ in length (right padding with pad_id)."""
    prompts = check_prompts(model, prompts, max_new_tokens, pad_id)
    results, start = [GenerationResult() for _ in prompts], time.perf_counter()
    if max_new_tokens == 0:
        return results
    cache, _, logits = prefill_rows(model, prompts, max_new_tokens, 1, pad_id)
    active, drafters = list(range(len(prompts))), Drafters(greedy_tokens(logits).tolist(), None)
    while active:
        done = commit_roots(results, active, drafters.roots, max_new_tokens, eos_id)
        active, drafters = retire_finished(done, active, drafters, results, cache, start)
        if active:
            drafters.roots = autoregressive_step_rows(model, cache, drafters.roots)
    return results


@torch.inference_mode()
def generate_speculative_batch(model: GPT, prompts, max_new_tokens: int, gamma: int | None = None, k: int = 1,
                               tree_cap: int | None = None, prune_threshold: float | None = None,
                               eos_id: int | None = None, stream_pass: str = "tree",
                               pad_id: int = 0) -> list[GenerationResult]:
    """Greedy Speculative Streaming of several prompts together: each batched forward verifies every row's tree
    and drafts its next one; rows accept different numbers of tokens. Row b's result equals
    generate_speculative(model, prompts[b], ...) with the same options (see the layout notes above)."""
    gamma = check_speculative(model, gamma, k, tree_cap, prune_threshold, stream_pass, batched=True)
    prompts = check_prompts(model, prompts, max_new_tokens, pad_id)
    s = SpecSettings(gamma, k, tree_cap, prune_threshold, stream_pass, medusa=False, temperature=0.0, top_k=None,
                     top_p=None, generator=None, acceptance="recursive")
    results, start = [GenerationResult() for _ in prompts], time.perf_counter()
    for r in results:
        r.depth_attempted, r.depth_accepted = [0] * gamma, [0] * gamma
    if max_new_tokens == 0:
        return results
    cache, drafters = speculative_prefill_rows(model, prompts, max_new_tokens, s.max_nodes, pad_id, s)
    active = list(range(len(prompts)))
    done = commit_roots(results, active, drafters.roots, max_new_tokens, eos_id)
    active, drafters = retire_finished(done, active, drafters, results, cache, start)
    while active:
        depths = [min(gamma, max_new_tokens - len(results[r].tokens) - 1) for r in active]  # never past max_new
        step = speculative_step_rows(model, cache, drafters, depths, s)
        done = record_rows(results, active, step, max_new_tokens, eos_id)
        active, drafters = retire_finished(done, active, step.next, results, cache, start)
    return results
