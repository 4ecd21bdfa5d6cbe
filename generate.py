"""Decoding one prompt: the KV-cached autoregressive baseline and Speculative Streaming (docs/CONVENTIONS.md),
whose Medusa baseline decodes through the same loop. Several prompts at once: batch.py; the other baselines
(prompt lookup, two-model speculative decoding): benchmarks/baselines.py; the command line: decode.py.

All return a `GenerationResult`. Metric conventions (docs/CONVENTIONS.md):
  - forward_calls counts every call of the model, prefill included;
  - step_tokens[0] is the first root, committed by the prefill; step_tokens[i] (i >= 1) are the tokens
    committed by decode call i: the accepted drafts plus the new root ("bonus" token), so an accepted
    length counts the root;
  - acceptance rate at depth j = depth_accepted[j-1] / depth_attempted[j-1], i.e. P(depth j accepted |
    depth j-1 accepted).
Two inference settings change the cost of a call, never its output: a trimmed draft vocabulary
(GPT.trim_draft_vocab, e.g. with `frequent_tokens`), and a reduced precision (`cast_for_decoding`), after which
SS equals AR decoded at the same precision.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
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
    """What a decoder returns: the new tokens and the metrics of docs/CONVENTIONS.md (see the module docstring)."""
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
    """Count one decode call and its per-depth acceptance (docs/CONVENTIONS.md): depth j is attempted iff the tree
    was drafted to depth j and depth j-1 was accepted, so capped or pruned nodes count as rejections."""
    result.forward_calls += 1
    for j in range(1, drafted_depth + 1):
        result.depth_attempted[j - 1] += accepted_depth >= j - 1
        result.depth_accepted[j - 1] += accepted_depth >= j
    result.tree_sizes.append(drafted_nodes)
    result.pruned_tree_sizes.append(verified_nodes)


def is_int(value) -> bool:
    """An integer that is not a bool (True is an int to Python, never a count or a token id)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value, low: int, high: int | None = None, optional: bool = False, note: str = "") -> None:
    """Refuse `value` with a one-line ValueError that names it unless it is an integer in low..high (no upper
    bound when high is None), or None when optional."""
    if optional and value is None:
        return
    if not is_int(value) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name}={value!r} must be {'None or ' if optional else ''}an integer {bounds}{note}")


def check_number(name: str, value, within: Callable[[float], bool], allowed: str, optional: bool = False) -> None:
    """Refuse `value` unless it is a real number for which within(value) holds (`allowed` says which), or None
    when optional."""
    if optional and value is None:
        return
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and within(value)):
        raise ValueError(f"{name}={value!r} must be {'None or ' if optional else ''}a number {allowed}")


def check_prompt(model: GPT, prompt_ids, max_new_tokens: int) -> torch.Tensor:
    """Validate a prompt (list of ints or 1-D LongTensor) and return it as a (1, P) tensor on the model's device."""
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() != 1 or prompt_ids.dtype not in (torch.long, torch.int, torch.int32, torch.int16):
            raise TypeError(f"prompt_ids must be a 1-D integer tensor, got shape {tuple(prompt_ids.shape)} "
                            f"and dtype {prompt_ids.dtype}")
        prompt_ids = prompt_ids.tolist()
    if not all(is_int(t) for t in prompt_ids):
        raise TypeError("prompt_ids must be integers (token ids); tokenize the text first")
    V, P = model.config.vocab_size, len(prompt_ids)
    if P == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. an EOS/BOS id)")
    bad = [t for t in prompt_ids if not 0 <= t < V]
    if bad:
        raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {V})")
    check_int("max_new_tokens", max_new_tokens, 0)
    if P + max_new_tokens - 1 > model.config.block_size:
        raise ValueError(f"prompt of {P} tokens + max_new_tokens={max_new_tokens} needs {P + max_new_tokens - 1} "
                         f"positions but block_size={model.config.block_size}: shorten the prompt or lower "
                         f"max_new_tokens")
    return torch.tensor([prompt_ids], dtype=torch.long, device=next(model.parameters()).device)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, acceptance: str = "recursive") -> None:
    """Validate the sampling options shared by generate_autoregressive and generate_speculative."""
    check_number("temperature", temperature, lambda t: t >= 0, ">= 0 (0 = greedy)")
    check_int("top_k", top_k, 1, optional=True)
    check_number("top_p", top_p, lambda p: 0 < p <= 1, "in (0, 1]", optional=True)
    if acceptance not in ACCEPTANCE_RULES:
        raise ValueError(f"acceptance={acceptance!r} must be one of {ACCEPTANCE_RULES} (only 'recursive' is lossless)")


MAX_FULL_TREE = 4096  # an uncapped tree beyond this is a mistake (k=81, γ=4: 43 million nodes and their cache)


def check_speculative(model: GPT, gamma: int | None, k: int, tree_cap: int | None, prune_threshold: float | None,
                      stream_pass: str, batched: bool = False) -> int:
    """Validate the tree options shared by generate_speculative and (batched=True, streams only)
    batch.generate_speculative_batch; returns γ (None: all of the model's drafters)."""
    cfg = model.config
    drafters = cfg.n_streams if batched else cfg.n_drafts
    if drafters == 0 and batched:
        raise ValueError("batched speculative decoding drafts with streams and the model has none (n_streams=0): "
                         "use generate_autoregressive_batch, or generate_speculative for a Medusa model")
    if drafters == 0:
        raise ValueError("the model has no streams (n_streams=0) and no Medusa heads: use generate_autoregressive "
                         "or train streams")
    gamma = drafters if gamma is None else gamma
    heads = "n_streams" if batched or cfg.n_medusa_heads == 0 else "n_medusa_heads"
    check_int("gamma", gamma, 1, drafters, note=f" (the model's {heads})")
    if model.draft_ids is None:
        check_int("k", k, 1, cfg.vocab_size, note=" (the model's vocab_size)")
    else:
        check_int("k", k, 1, len(model.draft_ids), note=" (the model's trimmed draft vocabulary)")
    check_int("tree_cap", tree_cap, 1, optional=True)
    if stream_pass not in ("tree", "accepted"):
        raise ValueError(f"stream_pass={stream_pass!r} must be 'tree' (the paper's single pass) or 'accepted'")
    check_number("prune_threshold", prune_threshold, lambda x: 0 <= x < 1, "in [0, 1)", optional=True)
    full = sum(k ** depth for depth in range(gamma + 1))
    if tree_cap is None and full > MAX_FULL_TREE:
        raise ValueError(f"k={k} with gamma={gamma} drafts a full tree of {full:,} nodes (at most {MAX_FULL_TREE:,} "
                         f"without a cap): give tree_cap, e.g. 16, to keep the most probable nodes")
    if prune_threshold is not None and cfg.prune_rank == 0:
        raise ValueError("prune_threshold needs a pruning adapter: build the model with prune_rank > 0 and "
                         "train it (see train_toy.py)")
    return gamma


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # decoding precisions


def cast_for_decoding(model: GPT, dtype: str) -> GPT:
    """Cast `model` (loaded in float32, LoRA merged by GPT.merge_lora) in place to `dtype`, a key of DTYPES, for
    decoding. Greedy SS then equals greedy AR at that dtype, which may differ from float32 at near ties
    (docs/CONVENTIONS.md). A dtype that this device cannot run (a trial one-token forward fails) is refused."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {', '.join(DTYPES)}")
    model = model.to(DTYPES[dtype])
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            cache = KVCache(model.config, 1, 1, device, DTYPES[dtype])
            one = torch.zeros(1, 1, dtype=torch.long, device=device)
            model.forward_nodes(one, one[0], causal_mask(1, device), cache)
    except RuntimeError as e:
        raise ValueError(f"dtype={dtype} does not run on {device.type} with torch {torch.__version__} "
                         f"({str(e).splitlines()[0]}) — decode in float32") from None
    return model


def new_cache(model: GPT, prompt: torch.Tensor, max_new_tokens: int, max_pending: int = 1) -> KVCache:
    """A cache with room for the prompt, the output and the pending entries of one forward (a whole tree)."""
    p = next(model.parameters())
    return KVCache(model.config, 1, prompt.size(1) + max_new_tokens + max_pending, p.device, p.dtype)


def causal_mask(n: int, device) -> torch.Tensor:
    """The (n, n) causal mask: node i sees nodes 0..i."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over the last dim (the first maximal index, as torch.argmax) by torch.max, whose CPU kernel is
    ~40% faster (5 rows of a 10k vocabulary: 63 vs 101 us). logits (..., V) -> (...). A row holding NaN or +inf
    (its max is then NaN or inf) stops decoding with an error instead of emitting a meaningless token."""
    top = logits.max(dim=-1)
    refuse_non_finite(top.values)
    return top.indices


def refuse_non_finite(values: torch.Tensor) -> None:
    """Stop decoding, with a one-line error, where the model's logits hold NaN or inf."""
    if not bool(torch.isfinite(values).all()):
        raise ValueError("the model's logits hold NaN or inf, so decoding stops: its weights are broken or its "
                         "activations overflow (float16 / bfloat16); check the checkpoint or decode in float32")


def pick_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
               generator: torch.Generator | None) -> int:
    """The next token from logits (V,): the argmax at temperature 0, else a draw from the transformed
    distribution (tree.sampling_probs; top_k / top_p do not change the argmax)."""
    if temperature == 0:
        return int(greedy_tokens(logits))
    refuse_non_finite(logits)
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

    @property
    def max_nodes(self) -> int:
        """The most nodes one call forwards: the full k-ary tree of depth γ, or the cap."""
        full = sum(self.k ** d for d in range(self.gamma + 1))
        return full if self.tree_cap is None else min(self.tree_cap, full)


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


def frequent_tokens(sequences: Iterable[Sequence[int]], n: int, vocab_size: int) -> torch.Tensor:
    """The n most frequent token ids of `sequences` (e.g. a task's training completions), most frequent first, ties
    by the lower id; ids that never occur come last, lowest first. A draft vocabulary for GPT.trim_draft_vocab: (n,)."""
    check_int("n", n, 1, vocab_size, note=" (the vocabulary's size)")
    ids = torch.tensor([t for seq in sequences for t in seq], dtype=torch.long)
    if len(ids) and not 0 <= int(ids.min()) <= int(ids.max()) < vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}): the sequences hold {int(ids.min())}.."
                         f"{int(ids.max())} — give sequences of this vocabulary")
    counts = torch.bincount(ids, minlength=vocab_size)  # (V,)
    return torch.sort(counts, descending=True, stable=True).indices[:n]  # stable: equal counts keep id order


def draft_topk(model: GPT, main_state: torch.Tensor, stream_states: torch.Tensor | None, depth: int,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k tokens and probabilities of drafters 1..depth at one node: its streams (stream_states: (γ, C)) or,
    for the Medusa baseline, the heads on its last hidden state (main_state: (C,)). Returns (depth, k) each.
    Leading dimensions ride along: the streams of B nodes (B, γ, C) give (B, depth, k). With a trimmed draft
    vocabulary (GPT.trim_draft_vocab) the softmax and top-k run over its N tokens, mapped back to token ids."""
    states = main_state if model.config.n_medusa_heads > 0 else stream_states[..., :depth, :]
    logits = model.draft_logits(states, trimmed=True)[..., :depth, :]  # (..., depth, V), or (..., depth, N)
    top = F.softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return (top.indices if model.draft_ids is None else model.draft_ids[top.indices]), top.values


def draft_sampled(model: GPT, main_state: torch.Tensor, stream_states: torch.Tensor | None, root: int, depth: int,
                  k: int, cap: int | None, temperature: float, top_k: int | None, top_p: float | None,
                  generator: torch.Generator | None) -> tuple[Tree, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Sampled drafting at one node (temperature > 0): the drafters' distributions q (depth, V), through the same
    transform as the target, and a tree of draws without replacement from them (tree.draft_tree_sampled). With a
    trimmed draft vocabulary the transform runs over its N tokens and q is zero outside them (lossless all the same:
    verification tests each draft against the q it was drawn from). Returns the tree, (draws, rank probabilities)
    (each (depth, k'), k' <= k) and q, on the CPU."""
    states = main_state if model.config.n_medusa_heads > 0 else stream_states[:depth]
    q = sampling_probs(model.draft_logits(states, trimmed=True)[:depth].cpu(), temperature, top_k, top_p)
    if model.draft_ids is not None:  # trimmed: zero outside the draft vocabulary, the q the draws come from
        q = q.new_zeros(depth, model.config.vocab_size).index_copy_(1, model.draft_ids.cpu(), q)
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
    tree, topk, q = draft_sampled(model, drafter.main, drafter.streams, drafter.root, depth, s.k, s.tree_cap,
                                  s.temperature, s.top_k, s.top_p, s.generator)
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
    cache = new_cache(model, prompt, max_new_tokens, s.max_nodes)
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


if __name__ == "__main__":  # `python generate.py ...` runs `python decode.py ...`, the command line of this file
    import os
    import sys
    decode = os.path.join(os.path.dirname(os.path.abspath(__file__)), "decode.py")
    os.execv(sys.executable, [sys.executable, decode, *sys.argv[1:]])
