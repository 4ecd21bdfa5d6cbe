"""Decoding loops: the KV-cached greedy baseline, Speculative Streaming (METHOD.md §5-6) and the baselines it
is compared with (Medusa through the same loop, prompt lookup, two-model speculative decoding).

All return a `GenerationResult`. Metric conventions (METHOD.md §6):
  - forward_calls counts every call of the model, prefill included;
  - step_tokens[0] is the first root, committed by the prefill; step_tokens[i] (i >= 1) are the tokens
    committed by decode call i: the accepted drafts plus the new root ("bonus" token), so an accepted
    length counts the root;
  - acceptance rate at depth j = depth_accepted[j-1] / depth_attempted[j-1], i.e. P(depth j accepted |
    depth j-1 accepted).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from model import GPT, KVCache
from tree import Tree, draft_tree, position_ids, prune_tree, subtree, tree_attention_mask, verify_greedy


@dataclass
class StepTrace:
    """One decode call, kept with trace=True (for notebooks and reference traces)."""
    drafted: Tree            # the tree as drafted from the streams
    kept: list[int]          # indices of the drafted nodes that survived pruning
    tree: Tree               # the tree that went through the MSA layers (drafted[kept])
    cache_len: int           # committed cache entries before this call
    mask: torch.Tensor       # (n, cache_len + n) tree attention mask used for `tree`
    main_argmax: list[int]   # main-stream argmax at each node of `tree`
    path: list[int]          # accepted path, indices into `tree`, root first
    committed: list[int]     # tokens committed by this call (after EOS / max_new_tokens truncation)


@dataclass
class GenerationResult:
    tokens: list[int] = field(default_factory=list)            # new tokens only
    step_tokens: list[list[int]] = field(default_factory=list)  # tokens committed by each forward call
    forward_calls: int = 0
    draft_calls: int = 0  # forward calls of a separate draft model (two-model SD only)
    depth_attempted: list[int] = field(default_factory=list)   # per depth j = 1..γ
    depth_accepted: list[int] = field(default_factory=list)
    tree_sizes: list[int] = field(default_factory=list)        # drafted nodes per decode call
    pruned_tree_sizes: list[int] = field(default_factory=list)  # nodes left after pruning
    wall_time: float = 0.0
    trace: list[StepTrace] | None = None

    @property
    def accepted_lengths(self) -> list[int]:
        """Tokens committed per decode call (root/bonus token included), prefill excluded."""
        return [len(s) for s in self.step_tokens[1:]]

    @property
    def tokens_per_call(self) -> float:
        """Mean accepted length τ (root/bonus token included) over decode calls."""
        lengths = self.accepted_lengths
        return sum(lengths) / len(lengths) if lengths else float("nan")

    @property
    def acceptance_rates(self) -> list[float]:
        return [a / t if t else float("nan") for a, t in zip(self.depth_accepted, self.depth_attempted)]


def check_prompt(model: GPT, prompt_ids, max_new_tokens: int) -> torch.Tensor:
    """Validate a prompt (list of ints or 1-D LongTensor) and return it as a (1, P) tensor on the model's device."""
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() != 1 or prompt_ids.dtype not in (torch.long, torch.int, torch.int32, torch.int16):
            raise TypeError(f"prompt_ids must be a 1-D integer tensor, got shape {tuple(prompt_ids.shape)} "
                            f"and dtype {prompt_ids.dtype}")
        prompt_ids = prompt_ids.tolist()
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt_ids):
        raise TypeError("prompt_ids must be integers (token ids); tokenize the text first")
    cfg = model.config
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. an EOS/BOS id)")
    bad = [t for t in prompt_ids if not 0 <= t < cfg.vocab_size]
    if bad:
        raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {cfg.vocab_size})")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
    if len(prompt_ids) + max_new_tokens - 1 > cfg.block_size:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens + max_new_tokens={max_new_tokens} needs "
                         f"{len(prompt_ids) + max_new_tokens - 1} positions but block_size={cfg.block_size}: "
                         f"shorten the prompt or lower max_new_tokens")
    device = next(model.parameters()).device
    return torch.tensor([prompt_ids], dtype=torch.long, device=device)


def commit_tokens(result: GenerationResult, new: list[int], max_new_tokens: int, eos_id: int | None) -> bool:
    """Append the tokens of one call, truncated at EOS (kept) and at max_new_tokens. Returns True when done."""
    new = new[:max_new_tokens - len(result.tokens)]
    if eos_id is not None and eos_id in new:
        new = new[:new.index(eos_id) + 1]
    result.tokens += new
    result.step_tokens.append(new)
    return len(result.tokens) >= max_new_tokens or (eos_id is not None and new[-1:] == [eos_id])


def new_cache(model: GPT, prompt: torch.Tensor, max_new_tokens: int, max_pending: int = 1) -> KVCache:
    """A cache with room for the prompt, the output and the pending entries of one forward (a whole tree)."""
    p = next(model.parameters())
    return KVCache(model.config, 1, prompt.size(1) + max_new_tokens + max_pending, p.device, p.dtype)


def causal_mask(n: int, device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


@torch.inference_mode()
def generate_autoregressive(model: GPT, prompt_ids, max_new_tokens: int, eos_id: int | None = None) -> GenerationResult:
    """Plain greedy decoding over the KV cache: one forward call per token (the first one is the prefill)."""
    prompt = check_prompt(model, prompt_ids, max_new_tokens)
    result, start = GenerationResult(), time.perf_counter()
    if max_new_tokens > 0:
        P, device = prompt.size(1), prompt.device
        cache = new_cache(model, prompt, max_new_tokens)
        logits, _ = model.forward_nodes(prompt, torch.arange(P, device=device), causal_mask(P, device), cache,
                                        n_streams=0)
        cache.commit()
        result.forward_calls = 1
        one = torch.ones(1, 1, dtype=torch.bool, device=device)
        while not commit_tokens(result, [int(logits[0, -1].argmax())], max_new_tokens, eos_id):
            token = torch.tensor([[result.tokens[-1]]], device=device)
            mask = one.expand(1, cache.length + 1)
            logits, _ = model.forward_nodes(token, torch.tensor([cache.length], device=device), mask, cache,
                                            n_streams=0)
            cache.commit()
            result.forward_calls += 1
    result.wall_time = time.perf_counter() - start
    return result


def draft_topk(model: GPT, main_state: torch.Tensor, stream_states: torch.Tensor | None, depth: int,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k tokens and probabilities of drafters 1..depth at one node: its streams (stream_states: (γ, C)) or,
    for the Medusa baseline, the heads on its last hidden state (main_state: (C,)). Returns (depth, k) each."""
    states = main_state if model.config.n_medusa_heads > 0 else stream_states[:depth]
    top = F.softmax(model.draft_logits(states)[:depth].float(), dim=-1).topk(k, dim=-1)
    return top.indices, top.values


@torch.inference_mode()
def generate_speculative(model: GPT, prompt_ids, max_new_tokens: int, gamma: int | None = None, k: int = 1,
                         tree_cap: int | None = None, prune_threshold: float | None = None,
                         eos_id: int | None = None, trace: bool = False, stream_pass: str = "tree") -> GenerationResult:
    """Greedy Speculative Streaming: each forward call verifies the previous tree with the main stream and
    drafts the next tree from the streams of the last accepted node. Output == greedy autoregressive output.

    stream_pass="tree" is the paper's single pass: γ streams ride along every surviving tree node through the
    MSA blocks. stream_pass="accepted" verifies first and then runs the streams of the accepted node alone
    through the MSA blocks (a second, γ-row sub-pass of the same call): identical output and drafts, fewer rows,
    which pays off where extra rows are not free (CPUs).

    A Medusa model (config.n_medusa_heads > 0) decodes with the same loop: its heads, applied to the last
    accepted node's final hidden state, propose the tree (stream_pass does not apply)."""
    cfg = model.config
    gamma = cfg.n_drafts if gamma is None else gamma
    medusa = cfg.n_medusa_heads > 0
    if cfg.n_drafts == 0:
        raise ValueError("the model has no streams (n_streams=0) and no Medusa heads: use generate_autoregressive "
                         "or train streams")
    if not isinstance(gamma, int) or isinstance(gamma, bool) or not 1 <= gamma <= cfg.n_drafts:
        raise ValueError(f"gamma={gamma!r} must be an integer in 1..{cfg.n_drafts} (the model's "
                         f"{'n_medusa_heads' if medusa else 'n_streams'})")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= cfg.vocab_size:
        raise ValueError(f"k={k!r} must be an integer in 1..vocab_size={cfg.vocab_size}")
    if stream_pass not in ("tree", "accepted"):
        raise ValueError(f"stream_pass={stream_pass!r} must be 'tree' (the paper's single pass) or 'accepted'")
    if tree_cap is not None and (not isinstance(tree_cap, int) or tree_cap < 1):
        raise ValueError(f"tree_cap={tree_cap!r} must be None or an integer >= 1")
    if prune_threshold is not None:
        if not 0.0 <= prune_threshold < 1.0:
            raise ValueError(f"prune_threshold={prune_threshold!r} must be in [0, 1)")
        if cfg.prune_rank == 0:
            raise ValueError("prune_threshold needs a pruning adapter: build the model with prune_rank > 0 and "
                             "train it (see train_toy.py)")
    prompt = check_prompt(model, prompt_ids, max_new_tokens)
    result, start = GenerationResult(trace=[] if trace else None), time.perf_counter()
    result.depth_attempted, result.depth_accepted = [0] * gamma, [0] * gamma
    if max_new_tokens == 0:
        return result
    P, device = prompt.size(1), prompt.device
    full_size = sum(k ** d for d in range(gamma + 1))
    cache = new_cache(model, prompt, max_new_tokens, full_size if tree_cap is None else min(tree_cap, full_size))
    lower_layers = range(cfg.first_msa_layer)

    # prefill: main stream over the prompt, streams only at its last position
    n_streams = 0 if medusa else gamma
    mask = causal_mask(P, device)
    h = model.lower(model.embed(prompt, torch.arange(P, device=device)), mask, cache)
    main, streams = model.upper(h, mask, cache, torch.tensor([P - 1], device=device), n_streams)
    cache.commit()
    result.forward_calls = 1
    root = int(model.lm_head(main[0, -1]).argmax())
    main, streams = main[0, -1], None if streams is None else streams[0, 0]  # the root's (C,) and (γ, C)
    done = commit_tokens(result, [root], max_new_tokens, eos_id)

    while not done:
        # draft: depth j from stream (head) j of the last accepted node; never draft past max_new_tokens
        depth = min(gamma, max_new_tokens - len(result.tokens) - 1)
        drafted = draft_tree(root, *draft_topk(model, main, streams, depth, k), cap=tree_cap)
        tree, L = drafted, cache.length
        mask = tree_attention_mask(tree, L)
        h = model.lower(model.embed(tree.tokens[None], position_ids(tree, L)), mask, cache)  # (1, n, C)
        kept = list(range(len(tree)))
        if prune_threshold is not None and len(tree) > 1:
            survivors = prune_tree(tree, F.softmax(model.early_exit_logits(h[0]).float(), dim=-1), prune_threshold)
            if len(survivors) < len(tree):  # drop pruned nodes' lower-layer keys/values too
                cache.select_pending(survivors, lower_layers)
                tree, h, kept = subtree(tree, survivors), h[:, survivors], survivors.tolist()
                mask = tree_attention_mask(tree, L)
        # MSA layers; with stream_pass="tree", γ streams on every surviving node (Eq. 2)
        main, streams = model.upper(h, mask, cache, n_streams=n_streams if stream_pass == "tree" else 0)
        main_argmax = model.lm_head(main[0]).argmax(dim=-1).tolist()  # verification needs only the main stream
        result.forward_calls += 1

        path = verify_greedy(tree, main_argmax)  # root first
        cache.commit(path)
        accepted_depth = len(path) - 1
        drafted_depth = int(drafted.depths.max())
        for j in range(1, drafted_depth + 1):
            result.depth_attempted[j - 1] += accepted_depth >= j - 1
            result.depth_accepted[j - 1] += accepted_depth >= j
        result.tree_sizes.append(len(drafted))
        result.pruned_tree_sizes.append(len(tree))

        main = main[0, path[-1]]
        if medusa:
            streams = None
        elif stream_pass == "tree":
            streams = streams[0, path[-1]]
        else:
            streams = model.streams_at(h[:, path[-1]], cache, gamma)[0]
        root = main_argmax[path[-1]]
        done = commit_tokens(result, tree.tokens[path[1:]].tolist() + [root], max_new_tokens, eos_id)
        if trace:
            result.trace.append(StepTrace(drafted, kept, tree, L, mask, main_argmax, path,
                                          result.step_tokens[-1]))
    result.wall_time = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------------------------------------
# baselines: prompt-lookup decoding and two-model speculative decoding (greedy, chain drafts)
# ------------------------------------------------------------------------------------------------------------

def check_count(name: str, value, minimum: int = 1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def forward_chain(model: GPT, tokens: list[int], cache: KVCache) -> torch.Tensor:
    """Forward a chain of T new tokens causally on top of the committed cache (main stream only).
    Returns the logits (T, V); the T new entries stay pending in the cache."""
    device = next(model.parameters()).device
    T, L = len(tokens), cache.length
    mask = torch.cat([torch.ones(T, L, dtype=torch.bool, device=device), causal_mask(T, device)], dim=1)  # (T, L+T)
    logits, _ = model.forward_nodes(torch.tensor([tokens], device=device), torch.arange(L, L + T, device=device),
                                    mask, cache, n_streams=0)
    return logits[0]


def verify_chain(model: GPT, cache: KVCache, root: int, draft: list[int], result: GenerationResult) -> list[int]:
    """One target call over [root, d1..dm]: accept the longest prefix of drafts equal to the argmax at the node
    before, commit their cache entries (root included), update the stats. Returns accepted drafts + new root."""
    argmax = forward_chain(model, [root] + draft, cache).argmax(dim=-1).tolist()  # (m+1,)
    result.forward_calls += 1
    a = 0
    while a < len(draft) and draft[a] == argmax[a]:
        a += 1
    cache.commit(list(range(a + 1)))  # the accepted chain is already in place: no copy
    for j in range(1, len(draft) + 1):  # depth j attempted iff depth j-1 accepted
        result.depth_attempted[j - 1] += a >= j - 1
        result.depth_accepted[j - 1] += a >= j
    result.tree_sizes.append(len(draft) + 1)
    result.pruned_tree_sizes.append(len(draft) + 1)
    return draft[:a] + [argmax[a]]


def prefill(model: GPT, prompt: torch.Tensor, cache: KVCache) -> int:
    """Run the prompt (1, P) into an empty cache, commit it and return the greedy first token."""
    logits = forward_chain(model, prompt[0].tolist(), cache)
    cache.commit()
    return int(logits[-1].argmax())


def lookup_draft(seq: list[int], max_ngram: int, num_draft: int) -> list[int]:
    """Prompt lookup: for n = max_ngram..1, find the most recent earlier occurrence of the last n tokens (ending
    before the last position) and return the (up to num_draft) tokens that followed it; [] if none."""
    for n in range(min(max_ngram, len(seq) - 1), 0, -1):
        suffix = seq[-n:]
        for start in range(len(seq) - n - 1, -1, -1):  # most recent first
            if seq[start:start + n] == suffix:
                return seq[start + n:start + n + num_draft]
    return []


@torch.inference_mode()
def generate_prompt_lookup(model: GPT, prompt_ids, max_new_tokens: int, max_ngram: int = 3, num_draft: int = 4,
                           eos_id: int | None = None) -> GenerationResult:
    """Greedy prompt-lookup decoding (training-free): each decode call drafts the tokens that followed the last
    earlier occurrence of the sequence's final n-gram and verifies the chain [root, drafts] in one forward.
    Output == greedy autoregressive output; depth j = the j-th drafted token."""
    check_count("max_ngram", max_ngram)
    check_count("num_draft", num_draft)
    prompt = check_prompt(model, prompt_ids, max_new_tokens)
    result, start = GenerationResult(), time.perf_counter()
    result.depth_attempted, result.depth_accepted = [0] * num_draft, [0] * num_draft
    if max_new_tokens == 0:
        return result
    cache = new_cache(model, prompt, max_new_tokens, num_draft + 1)
    root = prefill(model, prompt, cache)
    result.forward_calls = 1
    done = commit_tokens(result, [root], max_new_tokens, eos_id)
    seq = prompt[0].tolist() + result.tokens  # prompt + committed output; seq[-1] is the root (not cached yet)
    while not done:
        draft = lookup_draft(seq, max_ngram, min(num_draft, max_new_tokens - len(result.tokens) - 1))
        new = verify_chain(model, cache, seq[-1], draft, result)
        done = commit_tokens(result, new, max_new_tokens, eos_id)
        seq += result.step_tokens[-1]
    result.wall_time = time.perf_counter() - start
    return result


@torch.inference_mode()
def generate_two_model(target: GPT, draft: GPT, prompt_ids, max_new_tokens: int, gamma: int = 4,
                       eos_id: int | None = None) -> GenerationResult:
    """Greedy two-model speculative decoding (Leviathan et al. 2023, Chen et al. 2023, greedy case): a smaller
    draft GPT proposes up to γ tokens, one draft call each, and the target verifies [root, d1..dm] in one call.
    Output == greedy autoregressive output of the target. forward_calls counts target calls (prefill included),
    draft_calls draft calls. The draft's prompt prefill is merged into its first call."""
    check_count("gamma", gamma)
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"the draft model's vocabulary ({draft.config.vocab_size} tokens) differs from the "
                         f"target's ({target.config.vocab_size}): both must use the same tokenizer")
    prompt = check_prompt(target, prompt_ids, max_new_tokens)
    check_prompt(draft, prompt_ids, max_new_tokens)
    result, start = GenerationResult(), time.perf_counter()
    result.depth_attempted, result.depth_accepted = [0] * gamma, [0] * gamma
    if max_new_tokens == 0:
        return result
    cache = new_cache(target, prompt, max_new_tokens, gamma + 1)
    draft_cache = new_cache(draft, prompt, max_new_tokens, 2)  # empty: filled by the first draft call
    root = prefill(target, prompt, cache)
    result.forward_calls = 1
    done = commit_tokens(result, [root], max_new_tokens, eos_id)
    seq = prompt[0].tolist() + result.tokens  # accepted sequence; the draft cache holds a prefix of seq[:-1]
    while not done:
        m = min(gamma, max_new_tokens - len(result.tokens) - 1)
        drafted, feed = [], seq[draft_cache.length:]  # the accepted tokens the draft has not seen (root included)
        for _ in range(m):
            drafted.append(int(forward_chain(draft, feed, draft_cache)[-1].argmax()))
            draft_cache.commit()
            result.draft_calls += 1
            feed = drafted[-1:]
        n_before = len(seq)
        new = verify_chain(target, cache, seq[-1], drafted, result)
        done = commit_tokens(result, new, max_new_tokens, eos_id)
        seq += result.step_tokens[-1]
        # roll the draft cache back to its accepted entries: root + accepted drafts (d_m itself was never fed)
        draft_cache.truncate(n_before + len(new) - 1)
    result.wall_time = time.perf_counter() - start
    return result
