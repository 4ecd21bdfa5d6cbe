"""The final check: the student's pieces of exercises 1-7 inside the real decode loop, compared call by call with
the project's own loop (generate.generate_speculative with trace=True) on a small random float64 model.

Greedy output alone would not do: a drafting bug (a stream that sees later streams) only drafts worse trees, and the
output stays lossless. So every call compares the process: the streams' top-k and their probabilities, the drafted
tree, its positions and mask, the nodes kept by pruning, the main argmax, the accepted path, the committed tokens,
the next root and drafting node, the cache length, the compacted cache and the stop. The first difference is
reported with the exercise whose function produced it, and whether that exercise's own check passes alone.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator

import torch
from torch.nn import functional as F

from exercises.core import (EXERCISES, CheckFailed, as_bool, as_float, as_int, as_tensor, call, describe,
                            int_list, load_module)

PIECES = (1, 2, 3, 4, 5, 6, 7)


@dataclass(frozen=True)
class Setting:
    """One decode setting of the final check, run on every prompt."""
    gamma: int
    k: int
    prune: float | None
    max_new_tokens: int
    eos_id: int | None

    def __str__(self) -> str:
        return (f"γ={self.gamma}, k={self.k}, pruning {self.prune}, up to {self.max_new_tokens} new tokens, "
                f"eos_id={self.eos_id}")


SETTINGS = [Setting(3, 2, None, 24, None), Setting(2, 3, None, 23, 4), Setting(3, 2, 0.15, 24, None),
            Setting(1, 1, None, 17, None), Setting(3, 3, 0.15, 20, 4)]


def toy_model():
    """A random float64 GPT with γ = 3 streams on the top 2 of 3 blocks and a pruning adapter. A small vocabulary
    and large random weights make drafts get accepted now and then, and argmax ties impossible."""
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=6, block_size=64, n_layer=3, n_head=2, n_embd=16, n_streams=3, n_msa_layers=2,
                       prune_rank=4)
    model = GPT(config).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn_like(p) / math.sqrt(p.size(-1)))
            elif "ln_" not in name:
                p.copy_(0.3 * torch.randn_like(p))
    return model


def prompts(vocab_size: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in (1, 3, 5, 8, 12, 4)]


class Pieces:
    """The student's functions as the decode loop calls them, each answer checked before it is used."""

    def __init__(self, modules: dict[int, ModuleType]):
        self.m = modules

    def streams(self, model, h: torch.Tensor, cache, gamma: int) -> torch.Tensor:
        """The last accepted node's γ streams through the MSA blocks, from the student's init_streams and
        stream_attention (per head) with the model's weights. h: (C,) its state at the input of block N - N_s."""
        cfg, tr, m = model.config, model.transformer, self.m[2]
        C, nh = cfg.n_embd, cfg.n_head
        s = as_tensor(call(m, "init_streams", h.clone(), tr.stream_emb[:gamma].clone()), "init_streams", (gamma, C))
        for layer in range(cfg.first_msa_layer, cfg.n_layer):
            block = tr.h[layer]
            q, k, v = (t.view(gamma, nh, C // nh) for t in block.attn.c_attn(block.ln_1(s)).split(C, dim=-1))
            L = cache.length
            heads = [as_tensor(call(m, "stream_attention", q[:, i].clone(), cache.k[layer][0, i, :L].clone(),
                                    cache.v[layer][0, i, :L].clone(), k[:, i].clone(), v[:, i].clone()),
                               "stream_attention", (gamma, C // nh)) for i in range(nh)]
            s = s + block.attn.c_proj(torch.stack(heads, dim=1).reshape(gamma, C))
            s = s + block.mlp(block.ln_2(s))
        return tr.ln_f(s)

    def tree(self, root: int, topk: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
        got = call(self.m[4], "draft_tree", root, [list(r) for r in topk])
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise CheckFailed(f"draft_tree should return (tokens, parents, depths), got {describe(got)}")
        return tuple(int_list(x, f"draft_tree's {n}") for x, n in zip(got, ("tokens", "parents", "depths")))

    def mask(self, parents: list[int], L: int) -> torch.Tensor:
        got = call(self.m[4], "tree_attention_mask", list(parents), L)
        return as_tensor(got, "tree_attention_mask", (len(parents), L + len(parents)), torch.bool)

    def positions(self, depths: list[int], L: int) -> list[int]:
        return int_list(call(self.m[4], "position_ids", list(depths), L), "position_ids", len(depths))

    def prune(self, tokens: list[int], parents: list[int], probs: torch.Tensor, threshold: float) -> list[int]:
        return int_list(call(self.m[6], "prune_tree", list(tokens), list(parents), probs.clone(), threshold),
                        "prune_tree")

    def verify(self, tokens: list[int], parents: list[int], argmax: list[int]) -> list[int]:
        return int_list(call(self.m[5], "verify_greedy", list(tokens), list(parents), list(argmax)), "verify_greedy")

    def compact(self, cache, layers: range, keep: list[int]) -> None:
        """The student's compact_cache on each layer's keys and values (all heads as one row of D numbers)."""
        L = cache.length
        for layer in layers:
            for buf in (cache.k[layer], cache.v[layer]):
                _, nh, N, hs = buf.shape
                rows = buf[0].transpose(0, 1).reshape(N, nh * hs)  # (N, nh*hs): one row per cache entry
                new = as_tensor(call(self.m[5], "compact_cache", rows.clone(), L, list(keep)), "compact_cache",
                                (L + len(keep), nh * hs))
                buf[0, :, :L + len(keep)] = new.view(-1, nh, hs).transpose(0, 1)

    def depth(self, gamma: int, generated: int, max_new_tokens: int) -> int:
        return as_int(call(self.m[7], "draft_depth", gamma, generated, max_new_tokens), "draft_depth")

    def commit(self, tokens, path, argmax, L, generated, max_new_tokens, eos_id) -> list:
        got = call(self.m[7], "commit_step", list(tokens), list(path), list(argmax), L, generated, max_new_tokens,
                   eos_id)
        if not isinstance(got, (tuple, list)) or len(got) != 5:
            raise CheckFailed(f"commit_step should return Commit(tokens, root, drafter, cache_len, done), got "
                              f"{describe(got)}")
        return [int_list(got[0], "commit_step's tokens"), as_int(got[1], "commit_step's root"),
                as_int(got[2], "commit_step's drafter"), as_int(got[3], "commit_step's cache_len"),
                as_bool(got[4], "commit_step's done")]


def alone(number: int, module: ModuleType) -> str:
    """Whether exercise `number`'s own check passes, in words."""
    own_check = importlib.import_module(f"exercises.checks.ex{number}").check  # (imported by name: no import cycle)
    try:
        for _ in own_check(module):
            pass
    except CheckFailed as e:
        return (f"Check {number} alone fails too: start there (`python -m exercises check {number}`): "
                f"{str(e).splitlines()[0]}")
    return f"Check {number} alone passes: the difference shows only inside the loop, with the loop's own inputs."


@dataclass
class Where:
    """Which run and call a comparison is at, to name it in a message."""
    setting: Setting
    prompt: list[int]
    call: int
    calls: int
    modules: dict[int, ModuleType]

    def differ(self, field: str, ref, got, function: str, number: int, why: str = "") -> CheckFailed:
        return CheckFailed(
            f"{field} differ, from your {function} (exercise {number}): the reference loop has {ref}, yours {got} "
            f"(decode run {self.setting} on prompt {self.prompt}, call {self.call} of {self.calls}). "
            + (why + " " if why else "") + alone(number, self.modules[number]))


@dataclass
class Loop:
    """The state of the student's decode loop between calls."""
    cache: object                    # model.KVCache, float64
    out: list[int]                   # new tokens so far
    root: int                        # node 0 of the next tree
    streams: torch.Tensor | None     # (γ, C) the drafting node's final stream states
    done: bool


def prefill(model, prompt: list[int], s: Setting, pieces: Pieces) -> Loop:
    """The prompt through the model into the cache (the checker's own code), then the student's streams."""
    from model import KVCache
    cfg, P = model.config, len(prompt)
    cache = KVCache(cfg, 1, P + s.max_new_tokens + sum(s.k ** d for d in range(s.gamma + 1)), dtype=torch.float64)
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    h = model.lower(model.embed(torch.tensor([prompt]), torch.arange(P)), causal, cache)
    main, _ = model.upper(h, causal, cache, n_streams=0)
    cache.commit()
    root = int(model.lm_head(main[0, -1]).argmax())
    done = s.max_new_tokens <= 1 or root == s.eos_id
    return Loop(cache, [root], root, None if done else pieces.streams(model, h[0, -1], cache, s.gamma), done)


def ideal_cache(model, seq: list[int]) -> list[torch.Tensor]:
    """Keys then values of every layer, (nh, n, hs) each, for `seq` decoded one token at a time (a causal forward):
    what a compacted cache must hold."""
    from model import KVCache
    n = len(seq)
    cache = KVCache(model.config, 1, n, dtype=torch.float64)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    model.upper(model.lower(model.embed(torch.tensor([seq]), torch.arange(n)), causal, cache), causal, cache,
                n_streams=0)
    return [buf[0, :, :n] for buf in cache.k + cache.v]


def draft(model, pieces: Pieces, loop: Loop, step, at: Where, s: Setting):
    """The tree of one call from the student's pieces, compared with the reference call `step` (a StepTrace)."""
    L, ref_tree = loop.cache.length, step.drafted  # the root and L were compared at the previous commit
    depth = pieces.depth(s.gamma, len(loop.out), s.max_new_tokens)
    if depth != int(ref_tree.depths.max()):
        raise at.differ("the tree depths", int(ref_tree.depths.max()), depth, "draft_depth", 7)
    probs = F.softmax(model.lm_head(loop.streams[:depth]).float(), dim=-1).topk(s.k, dim=-1)
    ref_tokens, ref_probs = (t.tolist() for t in step.draft_topk)
    if probs.indices.tolist() != ref_tokens or not torch.allclose(probs.values, step.draft_topk[1], atol=1e-6):
        j = next(j for j in range(depth) if probs.indices[j].tolist() != ref_tokens[j]
                 or not torch.allclose(probs.values[j], step.draft_topk[1][j], atol=1e-6))
        raise at.differ(f"the top-{s.k} drafts of stream {j + 1} (tokens, probabilities)",
                        (ref_tokens[j], [round(p, 4) for p in ref_probs[j]]),
                        (probs.indices[j].tolist(), [round(p, 4) for p in probs.values[j].tolist()]),
                        "init_streams and stream_attention", 2,
                        "They are the top-k of the streams of the last accepted node.")
    tokens, parents, depths = pieces.tree(loop.root, ref_tokens)
    ref = (ref_tree.tokens.tolist(), ref_tree.parents.tolist(), ref_tree.depths.tolist())
    for name, got, want in zip(("tokens", "parents", "depths"), (tokens, parents, depths), ref):
        if got != want:
            raise at.differ(f"the drafted trees' {name}", want, got, "draft_tree", 4)
    positions = pieces.positions(depths, L)
    if positions != step.positions.tolist():
        raise at.differ("the position ids", step.positions.tolist(), positions, "position_ids", 4)
    from tree import tree_attention_mask
    mask = pieces.mask(parents, L)
    if not torch.equal(mask, tree_attention_mask(ref_tree, L)):
        raise at.differ("the tree attention masks", "the reference mask", "another one", "tree_attention_mask", 4,
                        f"(tree parents {parents}, cache length {L}.)")
    return tokens, parents, positions, mask


def verify(model, pieces: Pieces, loop: Loop, tree, step, at: Where, s: Setting):
    """The tree forward (pruning included) and the student's verification, compared with the reference call."""
    tokens, parents, positions, mask = tree
    L = loop.cache.length
    h = model.lower(model.embed(torch.tensor([tokens]), torch.tensor(positions)), mask, loop.cache)
    if s.prune is not None and len(tokens) > 1:
        probs = F.softmax(model.early_exit_logits(h[0]).float(), dim=-1)
        keep = pieces.prune(tokens, parents, probs, s.prune)
        if keep != step.kept:
            raise at.differ("the nodes kept by pruning", step.kept, keep, "prune_tree", 6)
        pieces.compact(loop.cache, range(model.config.first_msa_layer), keep)  # the pruned nodes' entries go
        new_index = {old: new for new, old in enumerate(keep)}
        tokens, parents = [tokens[i] for i in keep], [new_index.get(parents[i], -1) for i in keep]
        h, mask = h[:, keep], pieces.mask(parents, L)
        if not torch.equal(mask, step.mask):
            raise at.differ("the masks of the pruned tree", "the reference mask", "another one",
                            "tree_attention_mask", 4, f"(pruned tree parents {parents}, cache length {L}.)")
    main, _ = model.upper(h, mask, loop.cache, n_streams=0)
    argmax = model.lm_head(main[0]).argmax(dim=-1).tolist()
    if argmax != step.main_argmax:
        raise at.differ("the main stream's argmax at the tree nodes", step.main_argmax, argmax, "compact_cache", 5,
                        "The tree, positions and mask are the reference's, so the cache entries the nodes attend to "
                        "differ: after pruning, compact_cache moves the kept nodes' lower-layer entries.")
    path = pieces.verify(tokens, parents, argmax)
    if path != step.path:
        raise at.differ("the accepted paths", step.path, path, "verify_greedy", 5)
    return tokens, argmax, path, h


def commit(model, pieces: Pieces, loop: Loop, verified, step, at: Where, s: Setting, ideal) -> None:
    """The student's decode step and compaction, compared with the reference call; then the next streams."""
    tokens, argmax, path, h = verified
    L = loop.cache.length
    got = pieces.commit(tokens, path, argmax, L, len(loop.out), s.max_new_tokens, s.eos_id)
    expected = [step.committed, argmax[path[-1]], path[-1], L + len(path), at.call == at.calls]
    for name, g, e in zip(("committed tokens", "next roots", "drafting nodes", "cache lengths", "done flags"),
                          got, expected):
        if g != e:
            raise at.differ(f"the {name}", e, g, "commit_step", 7)
    pieces.compact(loop.cache, range(model.config.n_layer), path)
    loop.cache.length, loop.cache.pending = got[3], 0
    n = min(loop.cache.length, ideal[0].size(1))  # an end token or the budget may cut the path's last tokens
    for i, (buf, want) in enumerate(zip(loop.cache.k + loop.cache.v, ideal)):
        if not torch.allclose(buf[0, :, :n], want[:, :n], atol=1e-9):
            row = int((buf[0, :, :n] - want[:, :n]).abs().amax(dim=(0, 2)).argmax())
            raise at.differ(f"the compacted caches ({'keys' if i < len(ideal) // 2 else 'values'}, row {row})",
                            "the entries of the tokens decoded one by one", "other entries", "compact_cache", 5,
                            f"After compaction, row {L} + i must hold the entry of path[i] (path {path}).")
    loop.out += got[0]
    loop.root, loop.done = got[1], got[4]
    if not loop.done:
        loop.streams = pieces.streams(model, h[0, got[2]], loop.cache, s.gamma)  # the drafting node, path[-1]


def compare_run(model, pieces: Pieces, modules: dict, prompt: list[int], s: Setting) -> dict[str, int]:
    """One decode run with the student's pieces, call by call against generate_speculative's trace."""
    from generate import generate_speculative
    ref = generate_speculative(model, prompt, s.max_new_tokens, gamma=s.gamma, k=s.k, prune_threshold=s.prune,
                               eos_id=s.eos_id, trace=True, stream_pass="accepted")
    ideal = ideal_cache(model, prompt + ref.tokens)
    loop = prefill(model, prompt, s, pieces)
    stats = dict(calls=1, accepted=0, off_chain=0, pruned=0)
    for c, step in enumerate(ref.trace, start=1):
        at = Where(s, prompt, c, len(ref.trace), modules)
        if loop.done:
            raise at.differ("the numbers of calls", len(ref.trace), c - 1, "commit_step's done flag", 7)
        tree = draft(model, pieces, loop, step, at, s)
        verified = verify(model, pieces, loop, tree, step, at, s)
        commit(model, pieces, loop, verified, step, at, s, ideal)
        path = verified[2]
        stats["calls"] += 1
        stats["accepted"] += len(path) - 1
        stats["off_chain"] += path != list(range(len(path)))
        stats["pruned"] += len(step.drafted) - len(step.kept)
    return stats


def check_msa_forward(model, modules: dict) -> str:
    """Eq. 1-3: the student's mask in a naive full-mask forward gives the model's main and stream logits."""
    cfg = model.config
    idx = torch.randint(0, cfg.vocab_size, (1, 7), generator=torch.Generator().manual_seed(7))
    T, G = idx.size(1), cfg.n_streams
    out = model(idx)
    M = model.lower(model.embed(idx, torch.arange(T)))
    rows = torch.cat([M] + [M + model.transformer.stream_emb[j] for j in range(G)], dim=1)
    mask = as_tensor(call(modules[1], "msa_mask", T, G), "msa_mask", ((1 + G) * T, (1 + G) * T), torch.bool)
    for layer in range(cfg.first_msa_layer, cfg.n_layer):
        rows, _ = model.transformer.h[layer](rows, None, mask)
    logits = model.lm_head(model.transformer.ln_f(rows)).view(1 + G, T, -1)
    if not (torch.allclose(logits[0], out.logits[0], atol=1e-9)
            and torch.allclose(logits[1:].transpose(0, 1), out.stream_logits[0], atol=1e-9)):
        raise CheckFailed("your msa_mask (exercise 1) in a naive full-mask forward does not give the model's logits. "
                          + alone(1, modules[1]))
    return "msa_mask in a naive full-mask forward == the model's efficient MSA (main and stream logits)"


def check_loss(model, modules: dict) -> str:
    """Eq. 5: the student's targets and loss on the model's logits give the model's own loss."""
    cfg = model.config
    idx = torch.randint(0, cfg.vocab_size, (1, 7), generator=torch.Generator().manual_seed(7))
    T, G = idx.size(1), cfg.n_streams
    targets = as_tensor(call(modules[3], "eq5_targets", idx[0].tolist(), G, 2), "eq5_targets", (T, 1 + G),
                        torch.long)
    out = model(idx)
    logits = torch.cat([out.logits[0, :, None], out.stream_logits[0]], dim=1)  # (T, 1+γ, V)
    loss = as_float(call(modules[3], "eq5_loss", logits, targets, cfg.stream_loss_weight), "eq5_loss")
    shifted = F.pad(idx[:, 1:], (0, 1), value=-1)
    reference = float(model(idx, shifted, loss_mask=torch.arange(T)[None] + 1 >= 2).loss)  # 2 prompt tokens
    if abs(loss - reference) > 1e-9:
        raise CheckFailed(f"your eq5_targets + eq5_loss (exercise 3) give {loss:.6f} on the model's logits, "
                          f"model.py's loss gives {reference:.6f}. " + alone(3, modules[3]))
    return f"eq5_targets + eq5_loss == model.py's Eq. 5 loss ({loss:.4f}) with a 2-token prompt"


@torch.no_grad()
def check(folder: Path) -> Iterator[str]:
    modules = {n: load_module(Path(folder) / EXERCISES[n], n) for n in PIECES}
    model, pieces = toy_model(), Pieces(modules)
    yield check_msa_forward(model, modules)
    yield check_loss(model, modules)
    for s in SETTINGS:
        runs = [compare_run(model, pieces, modules, prompt, s) for prompt in prompts(model.config.vocab_size)]
        total = {key: sum(r[key] for r in runs) for key in runs[0]}
        yield (f"{s}: {len(runs)} prompts, {total['calls']} forward calls, {total['accepted']} drafts accepted, "
               f"{total['off_chain']} paths off the first branch, {total['pruned']} nodes pruned: every call's "
               f"drafts, tree, kept nodes, argmax, path, commit and cache equal the reference loop's")
