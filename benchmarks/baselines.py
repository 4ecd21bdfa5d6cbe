"""The decoders Speculative Streaming is compared with, besides Medusa (which decodes through
generate.generate_speculative): prompt-lookup decoding and two-model speculative decoding. Both greedy, both
drafting a chain and verifying it in one target call, both lossless (output == greedy autoregressive output).
Results follow the metric conventions of generate.GenerationResult (docs/CONVENTIONS.md)."""
from __future__ import annotations

import time

import torch

from generate import (GenerationResult, causal_mask, check_int, check_prompt, commit_tokens, greedy_tokens,
                      new_cache, record_call)
from model import GPT, KVCache


def check_draft_model(target: GPT, draft: GPT):
    """Validate the draft model of two-model speculative decoding: the target's vocabulary."""
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"the draft model's vocabulary ({draft.config.vocab_size} tokens) differs from the "
                         f"target's ({target.config.vocab_size}): both must use the same tokenizer")


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
    check_int("max_ngram", max_ngram, 1)
    check_int("num_draft", num_draft, 1)
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
    check_int("gamma", gamma, 1)
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
        draft_cache.length, draft_cache.pending = min(draft_cache.length, n_before + len(new) - 1), 0
    result.wall_time = time.perf_counter() - start
    return result
