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
from tree import (ACCEPTANCE_RULES, Tree, draft_tree, draft_tree_sampled, position_ids, prune_tree, sample,
                  sampling_probs, subtree, tree_attention_mask, verify_greedy, verify_sampled)


@dataclass
class StepTrace:
    """One forward call, kept with trace=True (for notebooks and golden traces, see validate.py). The prefill is
    one too (`GenerationResult.prefill_trace`): its "tree" is the prompt as a chain, all of it kept."""
    drafted: Tree            # the tree as drafted from the streams
    kept: list[int]          # indices of the drafted nodes that survived pruning
    tree: Tree               # the tree that went through the MSA layers (drafted[kept])
    cache_len: int           # committed cache entries before this call
    mask: torch.Tensor       # (n, cache_len + n) tree attention mask used for `tree`
    main_argmax: list[int]   # main-stream argmax at each node of `tree`
    path: list[int]          # accepted path, indices into `tree`, root first
    committed: list[int]     # tokens committed by this call (after EOS / max_new_tokens truncation)
    positions: torch.Tensor | None = None        # (n_drafted,) position ids of the drafted nodes
    draft_topk: tuple | None = None              # (tokens, probs), each (depth, k): what `drafted` was drafted from
    early_exit_probs: torch.Tensor | None = None  # (n_drafted, V) early-exit distributions, when pruning is on
    main_logits: torch.Tensor | None = None      # (n, V) main logits at each node of `tree`


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
    prefill_trace: StepTrace | None = None  # with trace=True (generate_speculative)

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


def record_call(result: GenerationResult, drafted_depth: int, accepted_depth: int, drafted_nodes: int,
                verified_nodes: int) -> None:
    """Count one decode call and its per-depth acceptance (METHOD.md §6, §9): depth j is attempted iff the tree
    was drafted to depth j and depth j-1 was accepted, so capped or pruned nodes count as rejections."""
    result.forward_calls += 1
    for j in range(1, drafted_depth + 1):
        result.depth_attempted[j - 1] += accepted_depth >= j - 1
        result.depth_accepted[j - 1] += accepted_depth >= j
    result.tree_sizes.append(drafted_nodes)
    result.pruned_tree_sizes.append(verified_nodes)


def new_cache(model: GPT, prompt: torch.Tensor, max_new_tokens: int, max_pending: int = 1) -> KVCache:
    """A cache with room for the prompt, the output and the pending entries of one forward (a whole tree)."""
    p = next(model.parameters())
    return KVCache(model.config, 1, prompt.size(1) + max_new_tokens + max_pending, p.device, p.dtype)


def causal_mask(n: int, device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, acceptance: str = "recursive"):
    """Validate the sampling options shared by generate_autoregressive and generate_speculative."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature={temperature!r} must be a number >= 0 (0 = greedy)")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be None or an integer >= 1")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r} must be None or a number in (0, 1]")
    if acceptance not in ACCEPTANCE_RULES:
        raise ValueError(f"acceptance={acceptance!r} must be one of {ACCEPTANCE_RULES} (only 'recursive' is lossless)")


def check_count(name: str, value, minimum: int = 1):
    """Validate an integer option (a count) of a decoding function."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def check_draft_model(target: GPT, draft: GPT):
    """Validate the draft model of two-model speculative decoding: the target's vocabulary."""
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"the draft model's vocabulary ({draft.config.vocab_size} tokens) differs from the "
                         f"target's ({target.config.vocab_size}): both must use the same tokenizer")


def check_speculative(model: GPT, gamma: int | None, k: int, tree_cap: int | None, prune_threshold: float | None,
                      stream_pass: str, batched: bool = False) -> int:
    """Validate the tree options shared by generate_speculative and (batched=True, streams only)
    generate_speculative_batch; returns γ (None: all of the model's drafters)."""
    cfg = model.config
    drafters = cfg.n_streams if batched else cfg.n_drafts
    if drafters == 0:
        raise ValueError("batched speculative decoding drafts with streams and the model has none (n_streams=0): "
                         "use generate_autoregressive_batch, or generate_speculative for a Medusa model" if batched else
                         "the model has no streams (n_streams=0) and no Medusa heads: use generate_autoregressive "
                         "or train streams")
    gamma = drafters if gamma is None else gamma
    if not isinstance(gamma, int) or isinstance(gamma, bool) or not 1 <= gamma <= drafters:
        raise ValueError(f"gamma={gamma!r} must be an integer in 1..{drafters} (the model's "
                         f"{'n_streams' if batched or cfg.n_medusa_heads == 0 else 'n_medusa_heads'})")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= cfg.vocab_size:
        raise ValueError(f"k={k!r} must be an integer in 1..vocab_size={cfg.vocab_size}")
    if stream_pass not in ("tree", "accepted"):
        raise ValueError(f"stream_pass={stream_pass!r} must be 'tree' (the paper's single pass) or 'accepted'")
    if tree_cap is not None and (not isinstance(tree_cap, int) or isinstance(tree_cap, bool) or tree_cap < 1):
        raise ValueError(f"tree_cap={tree_cap!r} must be None or an integer >= 1")
    if prune_threshold is not None:
        if not 0.0 <= prune_threshold < 1.0:
            raise ValueError(f"prune_threshold={prune_threshold!r} must be in [0, 1)")
        if cfg.prune_rank == 0:
            raise ValueError("prune_threshold needs a pruning adapter: build the model with prune_rank > 0 and "
                             "train it (see train_toy.py)")
    return gamma


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over the last dim (the first maximal index, as torch.argmax) by torch.max, whose CPU kernel is
    ~40% faster (5 rows of a 10k vocabulary: 63 vs 101 us). logits (..., V) -> (...)."""
    return logits.max(dim=-1).indices


def pick_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
               generator: torch.Generator | None) -> int:
    """The next token from logits (V,): the argmax at temperature 0, else a draw from the transformed
    distribution (tree.sampling_probs; top_k / top_p do not change the argmax)."""
    if temperature == 0:
        return int(greedy_tokens(logits))
    return sample(sampling_probs(logits.cpu(), temperature, top_k, top_p), generator)


@torch.inference_mode()
def generate_autoregressive(model: GPT, prompt_ids, max_new_tokens: int, eos_id: int | None = None,
                            temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                            generator: torch.Generator | None = None) -> GenerationResult:
    """Plain decoding over the KV cache: one forward call per token (the first one is the prefill). Greedy at
    temperature 0, else sampling from softmax(logits / T) restricted by top_k / top_p (tree.sampling_probs),
    with `generator` (None: torch's global generator)."""
    check_sampling(temperature, top_k, top_p)
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
        while not commit_tokens(result, [pick_token(logits[0, -1], temperature, top_k, top_p, generator)],
                                max_new_tokens, eos_id):
            token = torch.tensor([[result.tokens[-1]]], device=device)
            mask = one.expand(1, cache.length + 1)
            logits, _ = model.forward_nodes(token, torch.tensor([cache.length], device=device), mask, cache,
                                            n_streams=0)
            cache.commit()
            result.forward_calls += 1
    result.wall_time = time.perf_counter() - start
    return result


@dataclass(frozen=True)
class SpecSettings:
    """The checked options of one generate_speculative call."""
    gamma: int                        # drafted depth: streams (or Medusa heads) used
    k: int                            # candidates per drafter
    tree_cap: int | None
    prune_threshold: float | None
    stream_pass: str                  # "tree" or "accepted"
    medusa: bool                      # the model drafts with Medusa heads, not streams
    temperature: float
    top_k: int | None
    top_p: float | None
    generator: torch.Generator | None
    acceptance: str


@dataclass
class Drafter:
    """What the next tree is drafted from: the root and the last accepted node's final states."""
    root: int                         # the main stream's token after the last accepted node
    main: torch.Tensor                # (C,) its main-stream state (Medusa's heads draft from it)
    streams: torch.Tensor | None      # (γ, C) its stream states (None for Medusa)


@dataclass
class Draft:
    """A drafted tree and what it was drafted from."""
    tree: Tree
    topk: tuple                       # greedy: (tokens, probs) (depth, k); sampled: (draws, rank probs) (depth, k')
    q: torch.Tensor | None            # sampled: the drafters' distributions (depth, V), on the CPU


@dataclass
class TreePass:
    """The forward of one decode call over a drafted tree: lower blocks, pruning, MSA blocks, main logits."""
    kept: list[int]                   # indices of the drafted nodes that survived pruning
    tree: Tree                        # the surviving tree (n nodes)
    cache_len: int                    # committed cache entries before the call
    mask: torch.Tensor                # (n, cache_len + n) tree attention mask of `tree`
    positions: torch.Tensor           # (n_drafted,) position ids of the drafted nodes
    exit_probs: torch.Tensor | None   # (n_drafted, V) early-exit distributions, when pruning ran
    h: torch.Tensor                   # (1, n, C) states at the input of block N-N_s
    main: torch.Tensor                # (1, n, C) final main-stream states
    streams: torch.Tensor | None      # (1, n, γ, C) final stream states (stream_pass="tree")
    logits: torch.Tensor              # (n, V) main logits
    main_argmax: list[int]            # (n,)


@dataclass
class SpecStep:
    """One decode call of generate_speculative: the draft, the forward, the accepted path and the next drafter."""
    draft: Draft
    fwd: TreePass
    path: list[int]                   # accepted path, indices into fwd.tree, root first
    next: Drafter

    @property
    def tokens(self) -> list[int]:
        """The accepted drafts and the new root (before EOS / max_new_tokens truncation)."""
        return self.fwd.tree.tokens[self.path[1:]].tolist() + [self.next.root]

    def trace(self, committed: list[int]) -> StepTrace:
        """This call as a StepTrace."""
        f = self.fwd
        return StepTrace(self.draft.tree, f.kept, f.tree, f.cache_len, f.mask, f.main_argmax, self.path, committed,
                         f.positions, self.draft.topk, f.exit_probs, f.logits)


def draft_topk(model: GPT, main_state: torch.Tensor, stream_states: torch.Tensor | None, depth: int,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k tokens and probabilities of drafters 1..depth at one node: its streams (stream_states: (γ, C)) or,
    for the Medusa baseline, the heads on its last hidden state (main_state: (C,)). Returns (depth, k) each."""
    states = main_state if model.config.n_medusa_heads > 0 else stream_states[:depth]
    top = F.softmax(model.draft_logits(states)[:depth].float(), dim=-1).topk(k, dim=-1)
    return top.indices, top.values


def draft_sampled(model: GPT, main_state: torch.Tensor, stream_states: torch.Tensor | None, root: int, depth: int,
                  k: int, cap: int | None, temperature: float, top_k: int | None, top_p: float | None,
                  generator: torch.Generator | None) -> tuple[Tree, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Sampled drafting at one node (temperature > 0): the drafters' distributions q (depth, V), through the same
    transform as the target, and a tree of draws without replacement from them (tree.draft_tree_sampled).
    Returns the tree, (draws, rank probabilities) (each (depth, k'), k' <= k) and q, on the CPU."""
    states = main_state if model.config.n_medusa_heads > 0 else stream_states[:depth]
    q = sampling_probs(model.draft_logits(states)[:depth].cpu(), temperature, top_k, top_p)
    tree, drawn, rank_probs = draft_tree_sampled(root, q, k, generator, cap, main_state.device)
    return tree, (drawn, rank_probs), q


def speculative_prefill(model: GPT, prompt: torch.Tensor, cache: KVCache, s: SpecSettings,
                        trace: bool) -> tuple[Drafter, StepTrace | None]:
    """The prompt (1, P) through the main stream into the cache, streams only at its last position; returns the
    first drafter (its root is the first token) and, with trace, call 0 of a golden trace."""
    P, device = prompt.size(1), prompt.device
    mask = causal_mask(P, device)
    h = model.lower(model.embed(prompt, torch.arange(P, device=device)), mask, cache)
    main, streams = model.upper(h, mask, cache, torch.tensor([P - 1], device=device), 0 if s.medusa else s.gamma)
    cache.commit()
    root = pick_token(model.lm_head(main[0, -1]), s.temperature, s.top_k, s.top_p, s.generator)
    prefill_trace = None
    if trace:  # the prompt as a chain "tree" (a 1-ary draft), main logits everywhere
        chain = draft_tree(int(prompt[0, 0]), prompt[0, 1:, None], torch.ones(P - 1, 1, device=device))
        logits = model.lm_head(main[0])  # (P, V)
        prefill_trace = StepTrace(chain, list(range(P)), chain, 0, mask, greedy_tokens(logits).tolist(),
                                  list(range(P)), [root], chain.depths, main_logits=logits)
    return Drafter(root, main[0, -1], None if streams is None else streams[0, 0]), prefill_trace


def draft(model: GPT, drafter: Drafter, depth: int, s: SpecSettings) -> Draft:
    """Draft a tree to `depth`: depth j from stream (head) j of the last accepted node; top-k (greedy) or draws."""
    if s.temperature == 0:
        topk = draft_topk(model, drafter.main, drafter.streams, depth, s.k)
        return Draft(draft_tree(drafter.root, *topk, cap=s.tree_cap), topk, None)
    tree, topk, q = draft_sampled(model, drafter.main, drafter.streams, drafter.root, depth, s.k, s.tree_cap, s.temperature, s.top_k,
                                  s.top_p, s.generator)
    return Draft(tree, topk, q)


def forward_tree(model: GPT, drafted: Tree, cache: KVCache, s: SpecSettings) -> TreePass:
    """One forward over the drafted tree on top of the cache: lower blocks, pruning (drops pruned nodes' lower-layer
    entries), MSA blocks on the survivors (streams on every node with stream_pass="tree", Eq. 2), main logits."""
    tree, L = drafted, cache.length
    mask, pos = tree_attention_mask(tree, L), position_ids(tree, L)
    h = model.lower(model.embed(tree.tokens[None], pos), mask, cache)  # (1, n, C)
    kept, exit_probs = list(range(len(tree))), None
    if s.prune_threshold is not None and len(tree) > 1:
        exit_probs = F.softmax(model.early_exit_logits(h[0]).float(), dim=-1)  # (n, V)
        survivors = prune_tree(tree, exit_probs, s.prune_threshold)
        if len(survivors) < len(tree):  # drop pruned nodes' lower-layer keys/values too
            cache.select_pending(survivors, range(model.config.first_msa_layer))
            tree, h, kept = subtree(tree, survivors), h[:, survivors], survivors.tolist()
            mask = tree_attention_mask(tree, L)
    n_streams = s.gamma if s.stream_pass == "tree" and not s.medusa else 0
    main, streams = model.upper(h, mask, cache, n_streams=n_streams)
    logits = model.lm_head(main[0])  # (n, V): verification needs only the main stream
    return TreePass(kept, tree, L, mask, pos, exit_probs, h, main, streams, logits, greedy_tokens(logits).tolist())


def verify(fwd: TreePass, drafted: Draft, s: SpecSettings) -> tuple[list[int], int]:
    """The accepted path (indices into fwd.tree, root first) and the new root: greedy hard matching at temperature
    0, else tree.verify_sampled (only pruning's survivors may be accepted)."""
    if s.temperature == 0:
        path = verify_greedy(fwd.tree, fwd.main_argmax)
        return path, fwd.main_argmax[path[-1]]
    allowed = None if fwd.exit_probs is None else fwd.exit_probs[fwd.kept] >= s.prune_threshold  # (n,)
    return verify_sampled(fwd.tree, sampling_probs(fwd.logits.cpu(), s.temperature, s.top_k, s.top_p), drafted.q,
                          drafted.topk[0], s.generator, s.acceptance, None if allowed is None else allowed.cpu())


def commit(model: GPT, cache: KVCache, fwd: TreePass, path: list[int], root: int, s: SpecSettings) -> Drafter:
    """Compact the cache to the accepted path and return the next drafter: the last accepted node's states (with
    stream_pass="accepted", its streams run now through the MSA blocks, a γ-row sub-pass)."""
    cache.commit(path)
    last = path[-1]
    if s.medusa:
        streams = None
    elif s.stream_pass == "tree":
        streams = fwd.streams[0, last]  # (γ, C)
    else:
        streams = model.streams_at(fwd.h[:, last], cache, s.gamma)[0]  # (γ, C)
    return Drafter(root, fwd.main[0, last], streams)


def speculative_step(model: GPT, cache: KVCache, drafter: Drafter, depth: int, s: SpecSettings) -> SpecStep:
    """One decode call: draft a tree to `depth`, forward it, verify it, commit the accepted path."""
    drafted = draft(model, drafter, depth, s)
    fwd = forward_tree(model, drafted.tree, cache, s)
    path, root = verify(fwd, drafted, s)
    return SpecStep(drafted, fwd, path, commit(model, cache, fwd, path, root, s))


@torch.inference_mode()
def generate_speculative(model: GPT, prompt_ids, max_new_tokens: int, gamma: int | None = None, k: int = 1,
                         tree_cap: int | None = None, prune_threshold: float | None = None,
                         eos_id: int | None = None, trace: bool = False, stream_pass: str = "tree",
                         temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                         generator: torch.Generator | None = None, acceptance: str = "recursive") -> GenerationResult:
    """Speculative Streaming: each forward call verifies the previous tree with the main stream and drafts the
    next tree from the streams of the last accepted node. Greedy (temperature 0): output == greedy
    autoregressive output.

    temperature > 0: children are sampled from the streams' distributions (the same temperature / top_k / top_p
    transform as the target), without replacement among siblings, and verified by recursive rejection sampling
    (tree.verify_sampled): the output has exactly the distribution of generate_autoregressive(..., temperature,
    top_k, top_p). acceptance="per_path_lossy" (the later paper's rule) and "typical_lossy" (Medusa) are LOSSY
    alternatives, for comparison. Capped and pruned trees stay lossless (see tree.draft_tree_sampled and
    tree.verify_sampled).

    stream_pass="tree" is the paper's single pass: γ streams ride along every surviving tree node through the
    MSA blocks. stream_pass="accepted" verifies first and then runs the streams of the accepted node alone
    through the MSA blocks (a second, γ-row sub-pass of the same call): identical output and drafts, fewer rows,
    which pays off where extra rows are not free (CPUs).

    A Medusa model (config.n_medusa_heads > 0) decodes with the same loop: its heads, applied to the last
    accepted node's final hidden state, propose the tree (stream_pass does not apply)."""
    gamma = check_speculative(model, gamma, k, tree_cap, prune_threshold, stream_pass)
    check_sampling(temperature, top_k, top_p, acceptance)
    prompt = check_prompt(model, prompt_ids, max_new_tokens)
    s = SpecSettings(gamma, k, tree_cap, prune_threshold, stream_pass, model.config.n_medusa_heads > 0, temperature,
                     top_k, top_p, generator, acceptance)
    result, start = GenerationResult(trace=[] if trace else None), time.perf_counter()
    result.depth_attempted, result.depth_accepted = [0] * gamma, [0] * gamma
    if max_new_tokens == 0:
        return result
    full_size = sum(k ** d for d in range(gamma + 1))
    cache = new_cache(model, prompt, max_new_tokens, full_size if tree_cap is None else min(tree_cap, full_size))
    drafter, result.prefill_trace = speculative_prefill(model, prompt, cache, s, trace)
    result.forward_calls = 1
    done = commit_tokens(result, [drafter.root], max_new_tokens, eos_id)
    while not done:
        depth = min(gamma, max_new_tokens - len(result.tokens) - 1)  # never draft past max_new_tokens
        step = speculative_step(model, cache, drafter, depth, s)
        record_call(result, int(step.draft.tree.depths.max()), len(step.path) - 1, len(step.draft.tree),
                    len(step.fwd.tree))
        done = commit_tokens(result, step.tokens, max_new_tokens, eos_id)
        if trace:
            result.trace.append(step.trace(result.step_tokens[-1]))
        drafter = step.next
    result.wall_time = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------------------------------------
# baselines: prompt-lookup decoding and two-model speculative decoding (greedy, chain drafts)
# ------------------------------------------------------------------------------------------------------------

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
    argmax = greedy_tokens(forward_chain(model, [root] + draft, cache)).tolist()  # (m+1,)
    a = 0
    while a < len(draft) and draft[a] == argmax[a]:
        a += 1
    cache.commit(list(range(a + 1)))  # the accepted chain is already in place: no copy
    record_call(result, len(draft), a, len(draft) + 1, len(draft) + 1)
    return draft[:a] + [argmax[a]]


def prefill(model: GPT, prompt: torch.Tensor, cache: KVCache) -> int:
    """Run the prompt (1, P) into an empty cache, commit it and return the greedy first token."""
    logits = forward_chain(model, prompt[0].tolist(), cache)
    cache.commit()
    return int(greedy_tokens(logits[-1]))


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
    check_draft_model(target, draft)
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
            drafted.append(int(greedy_tokens(forward_chain(draft, feed, draft_cache)[-1])))
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


# ------------------------------------------------------------------------------------------------------------
# batch > 1: several prompts decoded together, each losslessly, with ragged acceptance
# ------------------------------------------------------------------------------------------------------------
# Layout (one design for AR and SS):
#  - prompts are right-padded to the longest one and prefilled with the plain causal mask: a real token never
#    sees a later column, so padding never reaches a real row (the pad id changes nothing);
#  - from then on row b holds its own number of committed cache entries, KVCache.row_lengths[b]. A forward
#    writes every row's new nodes at the same columns [length, length+N) (length = the longest row's), and the
#    per-row mask (B, 1, N, length+N) lets row b see its first row_lengths[b] columns, never the stale ones
#    between its own length and `length`. Position of a node = its row's cache length + its depth;
#  - every row drafts its own tree (caps, pruning and the depth left before max_new_tokens make the sizes
#    differ); trees are padded to the largest one with dummy nodes that see only themselves and that no node
#    sees, and are never committed;
#  - verification and cache compaction are per row (verify_greedy, KVCache.commit_rows); a row that finishes
#    (EOS or max_new_tokens) leaves the batch (KVCache.select_rows) and the others go on with fewer rows.
# Each row's result is that of the same prompt decoded alone: tokens, step_tokens, forward_calls (the batched
# forwards the row took part in, prefill included) and per-depth acceptance; wall_time is the time until that
# row finished, so the batch took max(wall_time) and made max(forward_calls) batched forwards.

def check_prompts(model: GPT, prompts, max_new_tokens: int) -> list[list[int]]:
    """Validate a non-empty list of prompts (each a list of ints or a 1-D LongTensor); return them as lists."""
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0 or any(isinstance(p, int) for p in prompts):
        raise TypeError("prompts must be a non-empty list of prompts, each a list of token ids (one prompt: [ids])")
    return [check_prompt(model, p, max_new_tokens)[0].tolist() for p in prompts]


def prefill_rows(model: GPT, prompts: list[list[int]], max_new_tokens: int, max_pending: int,
                 pad_id: int) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
    """Run the right-padded prompts through the main stream into a fresh cache and commit each row's own prompt
    entries. Returns the cache, and at each row's last prompt token the hidden state at the input of block N-N_s
    (B, C) and the main logits (B, V)."""
    if not isinstance(pad_id, int) or not 0 <= pad_id < model.config.vocab_size:
        raise ValueError(f"pad_id={pad_id!r} must be a token id in [0, {model.config.vocab_size})")
    p = next(model.parameters())
    B, P = len(prompts), max(len(prompt) for prompt in prompts)
    idx = torch.tensor([prompt + [pad_id] * (P - len(prompt)) for prompt in prompts], device=p.device)  # (B, P)
    cache = KVCache(model.config, B, P + max_new_tokens + max_pending, p.device, p.dtype)
    mask = causal_mask(P, p.device)  # right padding: a real token sees only real tokens before it
    h = model.lower(model.embed(idx, torch.arange(P, device=p.device)), mask, cache)
    main, _ = model.upper(h, mask, cache, n_streams=0)
    cache.commit_rows([list(range(len(prompt))) for prompt in prompts])
    rows = torch.arange(B, device=p.device)
    last = torch.tensor([len(prompt) - 1 for prompt in prompts], device=p.device)  # each row's last prompt token
    return cache, h[rows, last], model.lm_head(main[rows, last])


def rows_mask(cache: KVCache, ancestors: torch.Tensor) -> torch.Tensor:
    """(B, 1, N, L+N) attention mask of N new nodes per row: row b's nodes see its first row_lengths[b] cache
    columns (not the stale ones after them) and, among the new nodes, what `ancestors` (B, N, N) allows."""
    B, N, _ = ancestors.shape
    lengths = torch.tensor(cache.row_lengths, device=ancestors.device)
    seen = torch.arange(cache.length, device=ancestors.device) < lengths[:, None]  # (B, L)
    return torch.cat([seen[:, None].expand(B, N, -1), ancestors], dim=-1)[:, None]


def pad_trees(trees: list[Tree], cache: KVCache) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def streams_at_rows(model: GPT, h: torch.Tensor, cache: KVCache, n_streams: int) -> torch.Tensor:
    """GPT.streams_at for rows of different cache lengths: h (B, C) is each row's last committed node at the input
    of block N-N_s; its streams see the row's own committed entries. Returns stream states (B, γ, C)."""
    streams = causal_mask(n_streams, h.device).expand(h.size(0), -1, -1)  # (B, γ, γ): stream j sees streams 1..j
    return model.streams_at(h, cache, n_streams, rows_mask(cache, streams))  # mask (B, 1, γ, L+γ)


def retire_finished(done: list[bool], active: list[int], results: list[GenerationResult], cache: KVCache,
                    start: float, roots: list[int], states: torch.Tensor | None):
    """Rows whose decoding is done leave the batch (their cache rows too). Returns the rest of active, roots and
    states (per-row tensors indexed by row)."""
    keep = [i for i, d in enumerate(done) if not d]
    for i in (i for i, d in enumerate(done) if d):
        results[active[i]].wall_time = time.perf_counter() - start
    if keep and len(keep) < len(active):
        cache.select_rows(keep)
        states = None if states is None else states[keep]
    return [active[i] for i in keep], [roots[i] for i in keep], states


@torch.inference_mode()
def generate_autoregressive_batch(model: GPT, prompts, max_new_tokens: int, eos_id: int | None = None,
                                  pad_id: int = 0) -> list[GenerationResult]:
    """Greedy decoding of several prompts together, one token per row and forward; row b's result equals
    generate_autoregressive(model, prompts[b], ...). Prompts may differ in length (right padding with pad_id)."""
    prompts = check_prompts(model, prompts, max_new_tokens)
    results, start = [GenerationResult() for _ in prompts], time.perf_counter()
    if max_new_tokens == 0:
        return results
    cache, _, logits = prefill_rows(model, prompts, max_new_tokens, 1, pad_id)
    active, roots = list(range(len(prompts))), greedy_tokens(logits).tolist()
    one = torch.ones(1, 1, 1, dtype=torch.bool, device=logits.device)
    while True:
        done = []
        for r, root in zip(active, roots):
            results[r].forward_calls += 1
            done.append(commit_tokens(results[r], [root], max_new_tokens, eos_id))
        active, roots, _ = retire_finished(done, active, results, cache, start, roots, None)
        if not active:
            return results
        mask = rows_mask(cache, one.expand(len(active), 1, 1))
        positions = torch.tensor(cache.row_lengths, device=logits.device)[:, None]
        logits, _ = model.forward_nodes(torch.tensor(roots, device=logits.device)[:, None], positions, mask, cache,
                                        n_streams=0)
        cache.commit_rows([[0]] * len(active))
        roots = greedy_tokens(logits[:, 0]).tolist()


@torch.inference_mode()
def generate_speculative_batch(model: GPT, prompts, max_new_tokens: int, gamma: int | None = None, k: int = 1,
                               tree_cap: int | None = None, prune_threshold: float | None = None,
                               eos_id: int | None = None, stream_pass: str = "tree",
                               pad_id: int = 0) -> list[GenerationResult]:
    """Greedy Speculative Streaming of several prompts together: each batched forward verifies every row's tree
    and drafts its next one; rows accept different numbers of tokens. Row b's result equals
    generate_speculative(model, prompts[b], ...) with the same options (see the layout notes above)."""
    cfg = model.config
    gamma = check_speculative(model, gamma, k, tree_cap, prune_threshold, stream_pass, batched=True)
    prompts = check_prompts(model, prompts, max_new_tokens)
    results, start = [GenerationResult() for _ in prompts], time.perf_counter()
    for r in results:
        r.depth_attempted, r.depth_accepted = [0] * gamma, [0] * gamma
    if max_new_tokens == 0:
        return results
    full_size = sum(k ** d for d in range(gamma + 1))
    cache, h, logits = prefill_rows(model, prompts, max_new_tokens, min(tree_cap or full_size, full_size), pad_id)
    streams = streams_at_rows(model, h, cache, gamma)  # (B, γ, C): the streams of each row's last prompt token
    active, roots = list(range(len(prompts))), greedy_tokens(logits).tolist()
    done = []
    for r, root in zip(active, roots):
        results[r].forward_calls = 1
        done.append(commit_tokens(results[r], [root], max_new_tokens, eos_id))
    active, roots, streams = retire_finished(done, active, results, cache, start, roots, streams)

    while active:
        # draft: one tree per row from its streams' top-k (one LM-head call for the whole batch)
        top = F.softmax(model.lm_head(streams).float(), dim=-1).topk(k, dim=-1)  # (B, γ, k)
        drafted = []
        for i, r in enumerate(active):  # never draft past max_new_tokens
            depth = min(gamma, max_new_tokens - len(results[r].tokens) - 1)
            drafted.append(draft_tree(roots[i], top.indices[i, :depth], top.values[i, :depth], cap=tree_cap))
        tokens, positions, mask = pad_trees(drafted, cache)
        h = model.lower(model.embed(tokens, positions), mask, cache)  # (B, N, C)
        trees = drafted
        if prune_threshold is not None:
            probs = F.softmax(model.early_exit_logits(h).float(), dim=-1)  # (B, N, V)
            survivors = [prune_tree(t, probs[i, :len(t)], prune_threshold) for i, t in enumerate(drafted)]
            if any(len(s) < len(t) for s, t in zip(survivors, drafted)):
                n = max(len(s) for s in survivors)  # rows padded with node 0 again: a dummy once re-masked
                index = torch.stack([F.pad(s, (0, n - len(s))) for s in survivors])  # (B, n)
                cache.select_pending_rows(index, range(cfg.first_msa_layer))  # drop pruned lower-layer entries
                h = torch.take_along_dim(h, index[..., None], dim=1)
                trees = [subtree(t, s) for t, s in zip(drafted, survivors)]
                _, _, mask = pad_trees(trees, cache)
        # MSA layers; with stream_pass="tree", γ streams on every node of every row (Eq. 2)
        main, tree_streams = model.upper(h, mask, cache, n_streams=gamma if stream_pass == "tree" else 0)
        main_argmax = greedy_tokens(model.lm_head(main)).tolist()  # (B, N)
        paths = [verify_greedy(t, argmax[:len(t)]) for t, argmax in zip(trees, main_argmax)]
        cache.commit_rows(paths)
        rows = torch.arange(len(active), device=h.device)
        last = torch.tensor([path[-1] for path in paths], device=h.device)  # each row's last accepted node
        if stream_pass == "tree":
            streams = tree_streams[rows, last]
        else:
            streams = streams_at_rows(model, h[rows, last], cache, gamma)
        done = []
        for i, (r, tree, path) in enumerate(zip(active, trees, paths)):
            record_call(results[r], int(drafted[i].depths.max()), len(path) - 1, len(drafted[i]), len(tree))
            roots[i] = main_argmax[i][path[-1]]
            done.append(commit_tokens(results[r], tree.tokens[path[1:]].tolist() + [roots[i]], max_new_tokens, eos_id))
        active, roots, streams = retire_finished(done, active, results, cache, start, roots, streams)
    return results


# ------------------------------------------------------------------------------------------------------------
# command line: decode one prompt with a trained checkpoint (python generate.py --help)
# ------------------------------------------------------------------------------------------------------------

CLI_HELP = """Decode one prompt with a trained toy or task model, by Speculative Streaming and by greedy
autoregressive decoding, and check that both give the same output.

    python generate.py --model checkpoints/toy --prompt "the fox"
    python generate.py --model checkpoints/tasks --mr "name[Aromi], eatType[coffee shop], area[city centre]" --show
    python generate.py --model checkpoints/tasks/sql_ss_frozen_self_pruned.pt --prompt "..." --k 3 --tree-cap 16

--model is a checkpoint file, or a folder: then the SS checkpoint with the pruning adapter inside it
(ss_*_pruned.pt from train_toy.py, <task>_ss_*_pruned.pt from train_task.py), the most recently written one
when there are several (the choice is printed; name the file to pick another).
Toy models: the prompt is words of the toy language separated by spaces (an <eos> is put in front, as in
training). Task models: the prompt text is encoded with the checkpoint's vocabulary; an E2E prompt is a meaning
representation (--mr, or --prompt), whose name and near values are delexicalised before encoding and put back
into the output. Exit status 1 if the speculative output ever differs from the greedy one.
"""


def find_checkpoint(path: str) -> str:
    """`path` itself if it is a file; for a folder, its newest SS checkpoint with a pruning adapter."""
    import glob
    import os
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise SystemExit(f"error: checkpoint {path} does not exist: train one first (python train_toy.py, or "
                         f"python train_task.py --task e2e) or give the path of a .pt file")
    found = sorted(set(glob.glob(os.path.join(path, "ss_*_pruned.pt")) + glob.glob(os.path.join(path, "*_ss_*_pruned.pt"))),
                   key=os.path.getmtime)
    if not found:
        raise SystemExit(f"error: {path} holds no Speculative Streaming checkpoint (ss_*_pruned.pt or "
                         f"<task>_ss_*_pruned.pt): train one, or give the path of a .pt file")
    if len(found) > 1:
        print(f"{len(found)} SS checkpoints in {path}: using the newest (name a file to pick another)")
    return found[-1]


class PromptCodec:
    """Text <-> token ids with a checkpoint's vocabulary: toy words, or a task's compact GPT-2 vocabulary."""

    def __init__(self, ckpt: dict, path: str):
        vocabulary = ckpt.get("vocabulary")
        self.task = ckpt.get("task")
        if isinstance(vocabulary, list):  # train_toy.py: the toy words
            self.words, self.index = vocabulary, {w: i for i, w in enumerate(vocabulary)}
            self.eos_id = self.index["<eos>"]
        elif isinstance(vocabulary, dict):  # train_task.py: a CompactVocab
            from data import EOS, CompactVocab
            self.words, self.vocab, self.eos_id = None, CompactVocab.from_dict(vocabulary), EOS
        else:
            raise SystemExit(f"error: {path} holds no vocabulary, so prompts cannot be encoded: use the final "
                             f"checkpoint of a run (the *_pruned.pt one), which stores it")
        self.slots: dict[str, str] = {}

    def encode(self, text: str, is_mr: bool, max_prompt_len: int) -> list[int]:
        if self.words is not None:
            if is_mr:
                raise SystemExit("error: --mr is for E2E task models; a toy model takes --prompt WORDS")
            unknown = [w for w in text.split() if w not in self.index]
            if unknown:
                raise SystemExit(f"error: unknown word(s) {unknown} for the toy vocabulary; the toy words are: "
                                 + " ".join(self.words))
            ids = [self.index[w] for w in text.split()]
            return ids if ids[:1] == [self.eos_id] else [self.eos_id] + ids
        from data import UNK, Example, delexicalise, prompt_ids
        if is_mr and self.task != "e2e":
            raise SystemExit(f"error: --mr is for E2E models, this one is a {self.task} model: use --prompt")
        example = Example(text, "", [])
        if self.task == "e2e":
            example = delexicalise(example)
            self.slots = example.slots
        ids = prompt_ids(self.vocab, example, max_prompt_len)
        if UNK in ids:
            print(f"warning: {ids.count(UNK)} prompt token(s) never occurred in training and are encoded as UNK")
        return ids

    def decode(self, ids: list[int]) -> str:
        if self.words is not None:
            return " ".join(self.words[i] for i in ids)
        from data import relexicalise
        return relexicalise(self.vocab.decode(ids), self.slots)


def show_call(n: int, step: StepTrace, codec: PromptCodec, colour: bool) -> str:
    """One decode call's drafted tree, one node a line, indented by depth: `*` marks the accepted path, `x` a
    node removed by pruning; the tokens committed by the call follow."""
    accepted = {step.kept[i] for i in step.path}  # indices into the drafted tree
    lines = [f"call {n}: {len(step.drafted)} nodes drafted, {len(step.tree)} after pruning, "
             f"{len(step.path) - 1} draft(s) accepted, cache {step.cache_len}"]
    for i in range(len(step.drafted)):
        token, depth = int(step.drafted.tokens[i]), int(step.drafted.depths[i])
        mark = "*" if i in accepted else " " if i in step.kept else "x"
        line = f"  {mark} {'  ' * depth}{codec.decode([token])!r}  (depth {depth}, p={float(step.drafted.scores[i]):.3f})"
        if colour and mark != " ":
            line = f"\033[{'32' if mark == '*' else '2'}m{line}\033[0m"  # green: accepted, dim: pruned
        lines.append(line)
    lines.append(f"  committed: {codec.decode(step.committed)!r}")
    return "\n".join(lines)


def cli_parser():
    import argparse
    p = argparse.ArgumentParser(description=CLI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a checkpoint file, or a folder (its newest ss_*_pruned.pt)")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text (toy: words separated by spaces)")
    prompt.add_argument("--mr", help="E2E: a meaning representation, e.g. \"name[Aromi], eatType[coffee shop]\"")
    p.add_argument("--gamma", type=int, default=None, help="streams used for drafting (default: all of the model's)")
    p.add_argument("--k", type=int, default=1, help="top-k candidates per stream (tree branching)")
    p.add_argument("--tree-cap", type=int, default=None, help="keep only the N most probable tree nodes")
    p.add_argument("--prune-threshold", type=float, default=None, help="early-exit pruning threshold (e.g. 0.05)")
    p.add_argument("--stream-pass", choices=["tree", "accepted"], default="tree",
                   help="tree: streams on every tree node (the paper); accepted: streams of the accepted node only")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's budget (toy: 60)")
    p.add_argument("--show", action="store_true", help="print each decode call's tree, accepted path marked")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small models)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Decode one prompt (see CLI_HELP); returns the exit status: 0 when SS equals greedy AR, else 1."""
    import sys
    from model import load_checkpoint
    args = cli_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    path = find_checkpoint(args.model)
    try:
        ckpt = load_checkpoint(path)
        model = GPT.from_checkpoint(path).eval()
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    cfg = model.config
    if cfg.n_drafts == 0:
        raise SystemExit(f"error: {path} is a model without streams (n_streams=0): give a Speculative Streaming "
                         f"checkpoint (ss_*_pruned.pt or <task>_ss_*_pruned.pt)")
    model.merge_lora()  # inference: fold LoRA into the weights (the same for SS and AR)
    codec = PromptCodec(ckpt, path)
    if args.max_new_tokens is None:
        from data import MAX_NEW_TOKENS
        args.max_new_tokens = MAX_NEW_TOKENS.get(codec.task, 60)
    if not 0 <= args.max_new_tokens < cfg.block_size:
        raise SystemExit(f"error: --max-new-tokens={args.max_new_tokens} must be in 0..{cfg.block_size - 1}: the model's "
                         f"block_size={cfg.block_size} holds the prompt and the output together")
    prompt = codec.encode(args.prompt if args.mr is None else args.mr, args.mr is not None or codec.task == "e2e",
                          cfg.block_size - args.max_new_tokens + 1)
    options = dict(gamma=args.gamma, k=args.k, tree_cap=args.tree_cap, prune_threshold=args.prune_threshold,
                   stream_pass=args.stream_pass)
    try:
        ss = generate_speculative(model, prompt, args.max_new_tokens, eos_id=codec.eos_id, trace=args.show,
                                  **options)
        ar = generate_autoregressive(model, prompt, args.max_new_tokens, eos_id=codec.eos_id)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"model   : {path} (γ={cfg.n_drafts}, {cfg.n_layer} layers, {cfg.n_msa_layers} MSA)")
    print(f"prompt  : {codec.decode(prompt)!r} ({len(prompt)} tokens)")
    if args.show:
        colour = sys.stdout.isatty()
        for n, step in enumerate(ss.trace, 1):
            print(show_call(n, step, codec, colour))
    strip = lambda ids: [t for t in ids if t != codec.eos_id]
    print(f"output  : {codec.decode(strip(ss.tokens))}")
    print(f"forward calls: {ss.forward_calls} speculative vs {ar.forward_calls} greedy AR (prefill included); "
          f"CR {ar.forward_calls / ss.forward_calls:.2f}")
    print(f"tokens per call: {ss.tokens_per_call:.2f} (root token included)")
    print(f"greedy AR: {codec.decode(strip(ar.tokens))}")
    same = ss.tokens == ar.tokens
    print(f"equal to greedy AR: {'yes' if same else 'NO: the speculative output differs (a bug, please report it)'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
