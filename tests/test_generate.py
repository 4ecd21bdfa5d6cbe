"""Decoding tests of generate.py (docs/CONVENTIONS.md): greedy Speculative Streaming is lossless with respect to
plain greedy decoding of the same model, the KV cache is compacted exactly, metrics follow their definitions,
EOS / max_new_tokens are honoured and bad input is refused with clear errors.

Exactness tests run in float64 on tiny models, on one thread (tiny models are 10-100x slower on several
threads of a busy 2-core machine).
"""
import math

import pytest
import torch

import generate
from generate import GenerationResult, generate_autoregressive, generate_speculative
from helpers import (PERIOD, RAND_THRESHOLD, TRAINED_THRESHOLD, full_acceptance_lengths, make_model, periodic_prompts,
                     periodic_draft_vocab, periodic_sequence, random_model, random_prompts, shuffled_ids)
from model import GPTConfig, KVCache
from tree import subtree, tree_attention_mask

GK = [(g, k) for g in (1, 2, 3, 4) for k in (1, 2, 3)]


# ------------------------------------------------------------------------------------------------------------
# the baseline itself
# ------------------------------------------------------------------------------------------------------------

def greedy_without_cache(model, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("which", ["rand", "trained"])
def test_autoregressive_matches_full_forward(which, rand_model, trained_model):
    model = rand_model if which == "rand" else trained_model
    prompts = random_prompts(6, model.config.vocab_size, seed=5)
    with torch.no_grad():
        for prompt in prompts:
            ar = generate_autoregressive(model, prompt, 12)
            assert ar.tokens == greedy_without_cache(model, prompt, 12)
            assert ar.forward_calls == 12 == len(ar.step_tokens)
            assert ar.step_tokens == [[t] for t in ar.tokens]
    if which == "rand":  # the random model is not degenerate (greedy output is not one repeated token)
        assert len(set(generate_autoregressive(model, prompts[3], 20).tokens)) > 3


# ------------------------------------------------------------------------------------------------------------
# the central test: greedy Speculative Streaming == greedy autoregressive decoding
# ------------------------------------------------------------------------------------------------------------

def variants(threshold):
    return [dict(), dict(prune_threshold=threshold), dict(tree_cap=4), dict(tree_cap=7, prune_threshold=threshold),
            dict(tree_cap=7), dict(tree_cap=4, prune_threshold=threshold), dict(stream_pass="accepted"),
            dict(tree_cap=7, prune_threshold=threshold, stream_pass="accepted")]


def run_equivalence(model, prompts, threshold):
    """Each prompt runs half of the 12 (γ, k) settings; tree cap and pruning cycle over prompts."""
    runs, opts = [], variants(threshold)
    for i, prompt in enumerate(prompts):
        m = 10 + (7 * i) % 15  # 10..24 new tokens
        ar = generate_autoregressive(model, prompt, m)
        assert len(ar.tokens) == m == ar.forward_calls
        for c, (g, k) in enumerate(GK):
            if (c + i) % 2:
                continue
            kw = opts[(i // 2 + c) % len(opts)]
            ss = generate_speculative(model, prompt, m, gamma=g, k=k, **kw)
            assert ss.tokens == ar.tokens, f"prompt {prompt}, gamma={g}, k={k}, {kw}"
            assert ss.forward_calls <= ar.forward_calls
            assert ar.forward_calls / ss.forward_calls <= g + 1  # CR at most γ+1
            runs.append((g, k, kw, ss, ar))
    covered = {}
    for g, k, kw, ss, ar in runs:
        covered[g, k] = covered.get((g, k), 0) + 1
    assert sorted(covered) == GK and min(covered.values()) >= len(prompts) // 2
    return runs


def pruning_stats(runs):
    pruned = [r for _, _, kw, r, _ in runs if "prune_threshold" in kw]
    return sum(sum(r.tree_sizes) for r in pruned), sum(sum(r.pruned_tree_sizes) for r in pruned), pruned


def test_speculative_equals_autoregressive_random_model(rand_model, trim):
    trim(rand_model, shuffled_ids(rand_model.config.vocab_size, 25))  # then half the tokens are never drafted
    runs = run_equivalence(rand_model, random_prompts(50, rand_model.config.vocab_size, seed=11), RAND_THRESHOLD)
    drafted, kept, pruned = pruning_stats(runs)
    assert kept < drafted, "the pruning threshold never pruned: pick another one"
    assert any(max(r.pruned_tree_sizes) > 1 for r in pruned), "pruning always left the root alone"
    for _, _, kw, r, _ in runs:
        if "prune_threshold" not in kw:
            assert r.pruned_tree_sizes == r.tree_sizes


def test_speculative_equals_autoregressive_trained_model(trained_model, trim):
    trim(trained_model, periodic_draft_vocab())  # then 3 of the 17 tokens of the training sequence are never drafted
    runs = run_equivalence(trained_model, periodic_prompts(50, seed=12), TRAINED_THRESHOLD)
    committed = sum(sum(r.accepted_lengths) for _, _, _, r, _ in runs)
    calls = sum(len(r.accepted_lengths) for _, _, _, r, _ in runs)
    assert committed / calls > 1.5, f"tokens per call {committed / calls:.2f}: the test hardly exercises acceptance"
    ar_calls = sum(ar.forward_calls for *_, ar in runs)
    ss_calls = sum(r.forward_calls for _, _, _, r, _ in runs)
    assert ar_calls / ss_calls > 1.5  # call reduction
    drafted, kept, pruned = pruning_stats(runs)
    assert kept < drafted, "the pruning threshold never pruned: pick another one"
    assert sum(r.tokens_per_call for r in pruned) / len(pruned) > 1.5  # pruned trees still accept drafts


def test_speculative_equals_autoregressive_all_msa_and_narrow_models(trim):
    """Every block an MSA block (pruning at the embeddings, no lower-layer cache to trim), and a 2-stream model
    driven with gamma=None (all its streams)."""
    model = trim(random_model(seed=3, vocab_size=30, n_layer=2, n_msa_layers=2, n_embd=16, n_streams=3),
                 shuffled_ids(30, 12, seed=1))
    narrow = trim(random_model(seed=4, vocab_size=60, n_layer=3, n_msa_layers=2, n_embd=32, n_streams=2, prune_rank=0),
                  shuffled_ids(60, 40, seed=2))
    pruned_any = False
    for i, prompt in enumerate(random_prompts(12, 30, seed=13)):
        ar = generate_autoregressive(model, prompt, 15)
        ss = generate_speculative(model, prompt, 15, gamma=1 + i % 3, k=1 + i % 2, prune_threshold=0.03,
                                  tree_cap=None if i % 3 else 5)
        assert ss.tokens == ar.tokens
        pruned_any |= sum(ss.pruned_tree_sizes) < sum(ss.tree_sizes)
        ar = generate_autoregressive(narrow, prompt, 15)
        ss = generate_speculative(narrow, prompt, 15, k=1 + i % 3)
        assert ss.tokens == ar.tokens
        assert ss.depth_attempted[0] > 0 and len(ss.depth_attempted) == 2
    assert pruned_any


# ------------------------------------------------------------------------------------------------------------
# oracle trees: draft_topk replaced by the truth (or by certain falsehood)
# ------------------------------------------------------------------------------------------------------------

def patch_streams(monkeypatch, truth, vocab, right: bool, true_prob=0.6):
    """Replace generate.draft_topk: row j-1 holds the true token j steps after the current root at rank
    (n + j) % k (right=True), or k tokens that are all different from it (right=False)."""
    state = {}
    commit = generate.commit_tokens

    def spy_commit(result, new, max_new_tokens, eos_id):
        state["result"] = result
        return commit(result, new, max_new_tokens, eos_id)

    def fake_draft_topk(model, main_state, stream_states, depth, k):
        n = len(state["result"].tokens)  # tokens committed so far; the root is truth[n - 1]
        true = truth[n:n + depth]
        assert len(true) == depth
        tokens, probs = torch.empty(depth, k, dtype=torch.long), torch.empty(depth, k)
        for j in range(depth):
            others = [t for t in range(vocab) if t != true[j]]
            others = others[(7 * (n + j)) % (vocab - k):][:k]  # varied wrong candidates, distinct
            row = others[:k]
            if right:
                row = others[:k - 1]
                row.insert((n + j) % k, true[j])
            tokens[j] = torch.tensor(row)
            probs[j] = torch.tensor([true_prob if t == true[j] else (1 - true_prob) / k for t in row])
        return tokens, probs

    monkeypatch.setattr(generate, "commit_tokens", spy_commit)
    monkeypatch.setattr(generate, "draft_topk", fake_draft_topk)


@pytest.mark.parametrize("which", ["rand", "trained"])
def test_oracle_tree_is_fully_accepted(which, rand_model, trained_model, monkeypatch):
    model = rand_model if which == "rand" else trained_model
    V = model.config.vocab_size
    prompts = random_prompts(8, V, seed=21) if which == "rand" else periodic_prompts(8, seed=21)
    for i, prompt in enumerate(prompts):
        m = 9 + 2 * i
        truth = generate_autoregressive(model, prompt, m).tokens
        for g, k in GK[i % 3::3]:
            with monkeypatch.context() as mp:
                patch_streams(mp, truth, V, right=True)
                ss = generate_speculative(model, prompt, m, gamma=g, k=k, trace=True)
            assert ss.tokens == truth
            assert ss.accepted_lengths == full_acceptance_lengths(m, g), (g, k)
            assert ss.forward_calls == 1 + math.ceil((m - 1) / (g + 1))
            assert ss.tree_sizes[0] == sum(k ** d for d in range(g + 1)) or m <= g + 1
            assert all(len(st.path) == int(st.tree.depths.max()) + 1 for st in ss.trace)  # deepest node reached


def test_oracle_tree_under_cap_keeps_the_true_chain(trained_model, monkeypatch):
    """With the true drafts the most probable ones, a cap of γ+1 nodes is exactly the true chain."""
    model, V = trained_model, trained_model.config.vocab_size
    for i, prompt in enumerate(periodic_prompts(6, seed=22)):
        m = 20 - i
        truth = generate_autoregressive(model, prompt, m).tokens
        g, k = 1 + i % 4, 2 + i % 2
        with monkeypatch.context() as mp:
            patch_streams(mp, truth, V, right=True, true_prob=0.9)
            ss = generate_speculative(model, prompt, m, gamma=g, k=k, tree_cap=g + 1)
        assert ss.tokens == truth
        assert ss.accepted_lengths == full_acceptance_lengths(m, g)
        assert ss.tree_sizes[0] == g + 1


@pytest.mark.parametrize("which", ["rand", "trained"])
def test_wrong_tree_commits_one_token_per_call(which, rand_model, trained_model, monkeypatch):
    model = rand_model if which == "rand" else trained_model
    V = model.config.vocab_size
    prompts = random_prompts(6, V, seed=23) if which == "rand" else periodic_prompts(6, seed=23)
    for i, prompt in enumerate(prompts):
        m = 8 + i
        ar = generate_autoregressive(model, prompt, m)
        for g, k in GK[i % 2::2]:
            with monkeypatch.context() as mp:
                patch_streams(mp, ar.tokens, V, right=False)
                ss = generate_speculative(model, prompt, m, gamma=g, k=k)
            assert ss.tokens == ar.tokens
            assert ss.accepted_lengths == [1] * (m - 1)
            assert ss.forward_calls == ar.forward_calls == m
            assert ss.depth_accepted == [0] * g
            assert ss.depth_attempted[0] == m - 2  # every call but the last one (a root-only tree) drafts


# ------------------------------------------------------------------------------------------------------------
# the compacted cache equals a cache recomputed from scratch
# ------------------------------------------------------------------------------------------------------------

def record_caches(monkeypatch):
    snapshots = []

    class RecordingCache(KVCache):
        def commit(self, keep=None):
            super().commit(keep)
            snapshots.append((self.length, [k[:, :, :self.length].clone() for k in self.k],
                              [v[:, :, :self.length].clone() for v in self.v]))

    monkeypatch.setattr(generate, "KVCache", RecordingCache)
    return snapshots


def fresh_cache(model, seq):
    cache = KVCache(model.config, 1, len(seq), dtype=torch.float64)
    with torch.no_grad():
        model.forward_nodes(torch.tensor([seq]), torch.arange(len(seq)), generate.causal_mask(len(seq), "cpu"),
                            cache, stream_rows=torch.empty(0, dtype=torch.long))
    cache.commit()
    return cache


def check_caches(model, prompt, result: GenerationResult, snapshots):
    """After the prefill and after every decode call, the cache holds prompt + committed tokens except the
    pending root (the last committed token), and each layer's keys/values equal a fresh prefill's."""
    assert len(snapshots) == result.forward_calls == len(result.step_tokens)
    seq = list(prompt) + result.tokens
    done = 0
    for (length, ks, vs), step in zip(snapshots, result.step_tokens):
        done += len(step)
        assert length == len(prompt) + done - 1
        ref = fresh_cache(model, seq[:length])
        for layer in range(model.config.n_layer):
            torch.testing.assert_close(ks[layer], ref.k[layer][:, :, :length], rtol=1e-9, atol=1e-11)
            torch.testing.assert_close(vs[layer], ref.v[layer][:, :, :length], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("which", ["rand", "trained"])
def test_compacted_cache_equals_fresh_prefill(which, rand_model, trained_model, monkeypatch):
    model = rand_model if which == "rand" else trained_model
    threshold = RAND_THRESHOLD if which == "rand" else TRAINED_THRESHOLD
    prompts = random_prompts(6, model.config.vocab_size, seed=31) if which == "rand" else periodic_prompts(6, seed=31)
    settings = [dict(gamma=4, k=1), dict(gamma=3, k=2, prune_threshold=threshold),
                dict(gamma=4, k=2, tree_cap=7, prune_threshold=threshold), dict(gamma=2, k=3, tree_cap=5),
                dict(gamma=4, k=3, prune_threshold=threshold), dict(gamma=1, k=2)]
    pruned_and_accepted = 0
    for prompt, kw in zip(prompts, settings):
        with monkeypatch.context() as mp:
            snapshots = record_caches(mp)
            ss = generate_speculative(model, prompt, 16, trace=True, **kw)
        check_caches(model, prompt, ss, snapshots)
        # steps where pruning removed nodes and drafts were still accepted: misplaced lower-layer entries
        # of pruned nodes would show up in the comparison above
        pruned_and_accepted += sum(len(st.kept) < len(st.drafted) and len(st.path) > 1 for st in ss.trace)
    if which == "trained":
        assert pruned_and_accepted > 0


def test_autoregressive_cache_equals_fresh_prefill(rand_model, monkeypatch):
    prompt = [3, 1, 4, 1, 5]
    snapshots = record_caches(monkeypatch)
    ar = generate_autoregressive(rand_model, prompt, 7)
    check_caches(rand_model, prompt, ar, snapshots)


# ------------------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------------------

def check_stats(r: GenerationResult, prompt, m, gamma, k, cap=None, pruned=False, ar=None):
    """Every metric against its definition (docs/CONVENTIONS.md and generate.py), no EOS."""
    decode = len(r.step_tokens) - 1
    assert sum(r.step_tokens, []) == r.tokens and len(r.tokens) == m
    assert r.forward_calls == len(r.step_tokens) == decode + 1
    assert r.step_tokens[0] == r.tokens[:1]  # the first root, from the prefill
    assert r.accepted_lengths == [len(s) for s in r.step_tokens[1:]]
    assert 1 + sum(r.accepted_lengths) == len(r.tokens)
    assert all(1 <= a <= gamma + 1 for a in r.accepted_lengths)
    if decode:
        assert r.tokens_per_call == pytest.approx(sum(r.accepted_lengths) / decode)
    else:
        assert math.isnan(r.tokens_per_call)
    assert len(r.tree_sizes) == len(r.pruned_tree_sizes) == decode
    assert len(r.depth_attempted) == len(r.depth_accepted) == gamma
    if ar is not None:
        assert ar.forward_calls / r.forward_calls <= gamma + 1

    # drafted depth of each call: min(γ, tokens still allowed - 1), or the capped tree's depth
    accepted = [a - 1 for a in r.accepted_lengths]  # accepted drafts per call
    done, drafted_depth = 1, []
    for i, a in enumerate(r.accepted_lengths):
        d = min(gamma, m - done - 1)
        if cap is not None:
            assert int(r.trace[i].drafted.depths.max()) <= d
            d = int(r.trace[i].drafted.depths.max())
        drafted_depth.append(d)
        full = sum(k ** j for j in range(d + 1))
        if cap is None:
            assert r.tree_sizes[i] == full
        else:
            assert r.tree_sizes[i] == min(cap, sum(k ** j for j in range(min(gamma, m - done - 1) + 1)))
        assert accepted[i] <= d
        done += a
    assert all(p <= s for p, s in zip(r.pruned_tree_sizes, r.tree_sizes))
    if not pruned:
        assert r.pruned_tree_sizes == r.tree_sizes

    for j in range(1, gamma + 1):
        assert r.depth_accepted[j - 1] == sum(a >= j for a in accepted)
        assert r.depth_attempted[j - 1] == sum(d >= j and a >= j - 1 for d, a in zip(drafted_depth, accepted))
        assert r.depth_accepted[j - 1] <= r.depth_attempted[j - 1]
        if j >= 2:
            assert r.depth_accepted[j - 1] <= r.depth_accepted[j - 2]  # non-increasing with depth
            # depth j is attempted exactly when depth j-1 was accepted, unless the tree stopped at depth j-1
            shallow = sum(a >= j - 1 and d == j - 1 for d, a in zip(drafted_depth, accepted))
            assert r.depth_attempted[j - 1] == r.depth_accepted[j - 2] - shallow
        rate = r.acceptance_rates[j - 1]
        if r.depth_attempted[j - 1]:
            assert rate == r.depth_accepted[j - 1] / r.depth_attempted[j - 1]
        else:
            assert math.isnan(rate)
    assert sum(r.depth_accepted) == sum(r.accepted_lengths) - decode
    # without a cap, every call but those near max_new_tokens drafts depth 1, so depth 1 is attempted by all
    if cap is None:
        assert r.depth_attempted[0] == sum(d >= 1 for d in drafted_depth) >= decode - 1


@pytest.mark.parametrize("which", ["rand", "trained"])
def test_stats_are_consistent(which, rand_model, trained_model):
    model = rand_model if which == "rand" else trained_model
    threshold = RAND_THRESHOLD if which == "rand" else TRAINED_THRESHOLD
    prompts = random_prompts(12, model.config.vocab_size, seed=41) if which == "rand" else periodic_prompts(12, seed=41)
    some_shallow_and_accepted = False
    for i, prompt in enumerate(prompts):
        g, k = GK[i]
        m = 5 + i
        cap = [None, 4, None, 7][i % 4]
        thr = threshold if i % 3 == 0 else None
        ar = generate_autoregressive(model, prompt, m)
        r = generate_speculative(model, prompt, m, gamma=g, k=k, tree_cap=cap, prune_threshold=thr, trace=True)
        assert r.tokens == ar.tokens
        check_stats(r, prompt, m, g, k, cap=cap, pruned=thr is not None, ar=ar)
        some_shallow_and_accepted |= any(
            len(st.path) - 1 == int(st.drafted.depths.max()) < g for st in r.trace)
    if which == "trained":
        assert some_shallow_and_accepted  # the "shallower tree" correction above was exercised


def test_stats_trained_model_have_high_acceptance(trained_model):
    prompt = periodic_sequence(30)[5:15].tolist()
    r = generate_speculative(trained_model, prompt, 40, gamma=4, k=1)
    assert r.tokens_per_call > 2.5
    assert r.acceptance_rates[0] > 0.8
    assert r.acceptance_rates == [a / t for a, t in zip(r.depth_accepted, r.depth_attempted)]


# ------------------------------------------------------------------------------------------------------------
# EOS and max_new_tokens
# ------------------------------------------------------------------------------------------------------------

def first_repeat_free_index(tokens, lo):
    """An index i >= lo whose token does not occur before i."""
    for i in range(lo, len(tokens)):
        if tokens[i] not in tokens[:i]:
            return i
    return None


@pytest.mark.parametrize("which", ["rand", "trained"])
def test_eos_inside_accepted_path_truncates(which, rand_model, trained_model):
    model = rand_model if which == "rand" else trained_model
    prompts = random_prompts(10, model.config.vocab_size, seed=51) if which == "rand" else periodic_prompts(10, seed=51)
    truncated_inside = 0
    checked = 0
    for i, prompt in enumerate(prompts):
        full = generate_autoregressive(model, prompt, 20).tokens
        for lo in (1, 4, 9):
            e = first_repeat_free_index(full, lo)
            if e is None:
                continue
            eos = full[e]
            ar = generate_autoregressive(model, prompt, 20, eos_id=eos)
            assert ar.tokens == full[:e + 1] and ar.forward_calls == e + 1
            g, k = GK[(i + lo) % len(GK)]
            ss = generate_speculative(model, prompt, 20, gamma=g, k=k, eos_id=eos, trace=True)
            assert ss.tokens == full[:e + 1], (g, k, eos)
            assert ss.tokens.count(eos) == 1 and ss.tokens[-1] == eos
            assert sum(ss.step_tokens, []) == ss.tokens and ss.forward_calls == len(ss.step_tokens)
            last = ss.trace[-1] if ss.trace else None
            if last is not None and len(last.committed) < len(last.path):  # untruncated: len(path) tokens
                truncated_inside += 1
            checked += 1
    assert checked >= 10
    if which == "trained":
        assert truncated_inside > 0, "EOS never fell inside an accepted path"


def test_eos_as_first_token_and_in_prompt(trained_model):
    prompt = periodic_sequence(40)[3:10].tolist()
    full = generate_autoregressive(trained_model, prompt, 10).tokens
    ss = generate_speculative(trained_model, prompt, 10, eos_id=full[0])
    assert ss.tokens == [full[0]] and ss.forward_calls == 1 and ss.step_tokens == [[full[0]]]
    ar = generate_autoregressive(trained_model, prompt, 10, eos_id=full[0])
    assert ar.tokens == [full[0]] and ar.forward_calls == 1
    # an EOS id that only occurs in the prompt does not stop anything
    only_in_prompt = next(t for t in prompt if t not in full)
    ss = generate_speculative(trained_model, prompt, 10, eos_id=only_in_prompt)
    assert ss.tokens == full


def test_eos_with_oracle_tree_truncates_mid_path(trained_model, monkeypatch):
    """Full acceptance of γ+1 tokens per call: an EOS at any position of the output cuts the accepted path."""
    model, V = trained_model, trained_model.config.vocab_size
    prompt = periodic_sequence(40)[2:6].tolist()
    full = generate_autoregressive(model, prompt, 16).tokens
    assert len(set(full[:PERIOD - 1])) == min(len(full), PERIOD - 1)  # distinct tokens: a clean EOS position
    for e in range(1, 13):
        with monkeypatch.context() as mp:
            patch_streams(mp, full, V, right=True)
            ss = generate_speculative(model, prompt, 16, gamma=4, k=2, eos_id=full[e], trace=True)
        assert ss.tokens == full[:e + 1]
        assert ss.accepted_lengths[:-1] == [5] * (len(ss.accepted_lengths) - 1)
        last = ss.trace[-1]
        # the last call accepted a full path; what was cut is exactly what follows the EOS
        untruncated = last.tree.tokens[last.path[1:]].tolist() + [last.main_argmax[last.path[-1]]]
        assert last.committed == untruncated[:untruncated.index(full[e]) + 1]


@pytest.mark.parametrize("which", ["rand", "trained"])
def test_max_new_tokens_is_never_exceeded(which, rand_model, trained_model):
    model = rand_model if which == "rand" else trained_model
    prompt = [1, 2, 3] if which == "rand" else periodic_sequence(30)[7:12].tolist()
    full = generate_autoregressive(model, prompt, 20).tokens
    for m in range(0, 21):
        g, k = GK[m % len(GK)]
        ar = generate_autoregressive(model, prompt, m)
        ss = generate_speculative(model, prompt, m, gamma=g, k=k, tree_cap=None if m % 2 else 6)
        assert ar.tokens == ss.tokens == full[:m]
        assert ar.forward_calls == m and len(ar.step_tokens) == m
        assert ss.forward_calls == len(ss.step_tokens) <= max(m, 0)
        if m:
            assert all(len(s) >= 1 for s in ss.step_tokens)


def test_max_new_tokens_zero_returns_nothing(rand_model):
    for fn in (generate_autoregressive, generate_speculative):
        r = fn(rand_model, [1, 2, 3], 0)
        assert r.tokens == [] and r.step_tokens == [] and r.forward_calls == 0
        assert r.accepted_lengths == [] and math.isnan(r.tokens_per_call)


def test_prompt_and_output_fill_block_size_exactly():
    """P + max_new_tokens - 1 == block_size: the last drafted positions are exactly block_size - 1."""
    model = random_model(seed=6, block_size=24)
    for P in (1, 10, 20, 24):
        m = 24 - P + 1
        prompt = torch.randint(0, 50, (P,), generator=torch.Generator().manual_seed(P)).tolist()
        ar = generate_autoregressive(model, prompt, m)
        for g, k in [(4, 2), (3, 1), (1, 3)]:
            assert generate_speculative(model, prompt, m, gamma=g, k=k).tokens == ar.tokens
    with pytest.raises(ValueError, match="block_size"):
        generate_speculative(model, [1] * 10, 16)
    with pytest.raises(ValueError, match="block_size"):
        generate_autoregressive(model, [1] * 26, 0)  # 26 + 0 - 1 = 25 > 24


# ------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [generate_autoregressive, generate_speculative])
@pytest.mark.parametrize("prompt,error,match", [
    ([], ValueError, "empty"),
    (torch.tensor([], dtype=torch.long), ValueError, "empty"),
    ([1.0, 2.0], TypeError, "integer"),
    ([1, 2.5], TypeError, "integer"),
    (torch.tensor([1.0, 2.0]), TypeError, "integer"),
    (torch.tensor([[1, 2]]), TypeError, "1-D"),
    ([50], ValueError, "vocabulary"),
    ([3, -1], ValueError, "vocabulary"),
    (torch.tensor([0, 50]), ValueError, "vocabulary"),
    ("hello", TypeError, "integer"),
])
def test_bad_prompts_raise_clear_errors(fn, prompt, error, match, rand_model):
    with pytest.raises(error, match=match):
        fn(rand_model, prompt, 5)


def test_good_prompt_forms_are_equivalent(rand_model):
    ref = generate_speculative(rand_model, [4, 8, 15], 6).tokens
    assert generate_speculative(rand_model, torch.tensor([4, 8, 15]), 6).tokens == ref
    assert generate_speculative(rand_model, torch.tensor([4, 8, 15], dtype=torch.int32), 6).tokens == ref
    assert generate_autoregressive(rand_model, (4, 8, 15), 6).tokens == ref


@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma=5), "gamma"),
    (dict(gamma=0), "gamma"),
    (dict(gamma=-1), "gamma"),
    (dict(gamma=2.0), "gamma"),
    (dict(gamma=True), "gamma"),
    (dict(k=True), "k="),
    (dict(k=0), "k="),
    (dict(k=-2), "k="),
    (dict(k=51), "k="),
    (dict(tree_cap=0), "tree_cap"),
    (dict(prune_threshold=1.5), "prune_threshold"),
    (dict(prune_threshold=-0.1), "prune_threshold"),
])
def test_bad_speculative_settings_raise(kwargs, match, rand_model):
    with pytest.raises(ValueError, match=match):
        generate_speculative(rand_model, [1, 2, 3], 5, **kwargs)


def test_prompt_too_long_for_block_size_raises(rand_model):
    B = rand_model.config.block_size  # 64
    for fn in (generate_autoregressive, generate_speculative):
        with pytest.raises(ValueError, match="block_size"):
            fn(rand_model, [1] * 60, 6)  # 60 + 6 - 1 = 65 > 64
        with pytest.raises(ValueError, match="block_size"):
            fn(rand_model, [1] * (B + 2), 0)
        assert len(fn(rand_model, [1] * 60, 5).tokens) == 5  # 64 positions: fits
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_speculative(rand_model, [1], -1)


def test_pruning_needs_an_adapter():
    model = random_model(seed=7, prune_rank=0)
    with pytest.raises(ValueError, match="prune"):
        generate_speculative(model, [1, 2], 5, prune_threshold=0.1)
    assert len(generate_speculative(model, [1, 2], 5).tokens) == 5  # fine without pruning


def test_model_without_streams_refuses_speculative_decoding():
    cfg = GPTConfig(vocab_size=30, block_size=32, n_layer=2, n_head=2, n_embd=16, n_streams=0, n_msa_layers=0)
    model = make_model(cfg, 8, noise_dtype=torch.float32)
    with pytest.raises(ValueError, match="n_streams"):
        generate_speculative(model, [1, 2], 5)
    ar = generate_autoregressive(model, [1, 2], 5)  # the plain baseline works
    assert ar.tokens == greedy_without_cache(model, [1, 2], 5)


# ------------------------------------------------------------------------------------------------------------
# trace
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["rand", "trained"])
def test_trace_matches_the_run(which, rand_model, trained_model):
    model = rand_model if which == "rand" else trained_model
    threshold = RAND_THRESHOLD if which == "rand" else TRAINED_THRESHOLD
    prompt = [5, 9, 2, 7] if which == "rand" else periodic_sequence(30)[4:9].tolist()
    m = 18
    for kw in (dict(gamma=3, k=2), dict(gamma=4, k=2, tree_cap=6, prune_threshold=threshold),
               dict(gamma=2, k=3, prune_threshold=threshold)):
        r = generate_speculative(model, prompt, m, trace=True, **kw)
        assert len(r.trace) == len(r.step_tokens) - 1 == r.forward_calls - 1
        committed = list(r.step_tokens[0])
        for i, st in enumerate(r.trace):
            n = len(st.tree)
            assert st.committed == r.step_tokens[i + 1]
            assert st.cache_len == len(prompt) + len(committed) - 1  # the pending root is not cached yet
            assert int(st.drafted.tokens[0]) == committed[-1]  # the tree grows from the last root
            assert st.kept[0] == 0 and st.kept == sorted(st.kept)
            assert st.tree.tokens.tolist() == st.drafted.tokens[st.kept].tolist()
            assert torch.equal(st.tree.ancestors, subtree(st.drafted, torch.tensor(st.kept)).ancestors)
            assert r.tree_sizes[i] == len(st.drafted) and r.pruned_tree_sizes[i] == n
            # the mask: the whole cache, then ancestors-or-self from the parents (rebuilt here)
            assert st.mask.shape == (n, st.cache_len + n) and st.mask.dtype == torch.bool
            assert torch.equal(st.mask, tree_attention_mask(st.tree, st.cache_len))
            assert st.mask[:, :st.cache_len].all()
            anc = torch.zeros(n, n, dtype=torch.bool)
            for a in range(n):
                p = int(st.tree.parents[a])
                if p >= 0:
                    anc[a] = anc[p]
                anc[a, a] = True
            assert torch.equal(st.mask[:, st.cache_len:], anc)
            # the path: root first, each node the child of the previous one, accepted by the main argmax,
            # and longest (no child of its last node matches)
            assert st.path[0] == 0 and len(st.main_argmax) == n
            for a, b in zip(st.path, st.path[1:]):
                assert int(st.tree.parents[b]) == a and int(st.tree.tokens[b]) == st.main_argmax[a]
            last = st.path[-1]
            children = (st.tree.parents == last).nonzero().flatten().tolist()
            assert all(int(st.tree.tokens[c]) != st.main_argmax[last] for c in children)
            # committed = accepted drafts + the new root (no truncation without EOS and within max_new_tokens)
            assert st.committed == st.tree.tokens[st.path[1:]].tolist() + [st.main_argmax[last]]
            committed += st.committed
        assert committed == r.tokens == generate_autoregressive(model, prompt, m).tokens


@pytest.mark.parametrize("which", ["rand", "trained"])
def test_drafts_come_from_the_streams_of_the_last_accepted_node(which, rand_model, trained_model):
    """Depth-j nodes of every drafted tree are the top-k of stream j at the position that predicted the root,
    exactly as a full-sequence forward (training path) computes them."""
    model = rand_model if which == "rand" else trained_model
    prompt = [5, 9, 2, 7, 7, 1] if which == "rand" else periodic_sequence(30)[4:10].tolist()
    for g, k in [(4, 1), (3, 2), (2, 3)]:
        r = generate_speculative(model, prompt, 16, gamma=g, k=k, trace=True)
        committed = list(r.step_tokens[0])
        for st in r.trace:
            seq = prompt + committed[:-1]  # up to the last accepted token; its main argmax is the root
            with torch.no_grad():
                stream_logits = model(torch.tensor([seq])).stream_logits[0, -1]  # (γ_model, V)
            depth = int(st.drafted.depths.max())
            for j in range(1, depth + 1):
                expected = stream_logits[j - 1].topk(k).indices.tolist()
                assert st.drafted.tokens[st.drafted.depths == j][:k].tolist() == expected, (g, k, j)
            committed += st.committed


def test_no_trace_by_default(rand_model):
    r = generate_speculative(rand_model, [1, 2], 4)
    assert r.trace is None
    assert r.wall_time > 0


def test_stream_pass_accepted_drafts_the_same_trees(trained_model):
    """Streams of the accepted node computed alone after verification == streams carried through the tree pass."""
    for i, prompt in enumerate(periodic_prompts(8, seed=31)):
        kw = dict(gamma=3, k=2, tree_cap=[None, 5][i % 2], trace=True)
        a = generate_speculative(trained_model, prompt, 20, **kw)
        b = generate_speculative(trained_model, prompt, 20, stream_pass="accepted", **kw)
        assert a.step_tokens == b.step_tokens
        assert len(a.trace) == len(b.trace) > 1
        for ta, tb in zip(a.trace, b.trace):
            assert ta.drafted.tokens.tolist() == tb.drafted.tokens.tolist()
            torch.testing.assert_close(ta.drafted.scores, tb.drafted.scores, atol=1e-9, rtol=0)


def test_stream_pass_must_be_known(trained_model):
    with pytest.raises(ValueError, match="stream_pass"):
        generate_speculative(trained_model, [1, 2], 5, stream_pass="every")


@pytest.mark.parametrize("adapter_in", ["attn+mlp", "mlp"])
def test_merged_inference_layout_decodes_like_the_unmerged_model(adapter_in):
    """merge_lora (LoRA folded, transposed weights, the stream adapter folded into the stream rows' own weights)
    drafts the same trees and commits the same tokens as the unmerged model, and SS still equals AR; with the
    adapter in the MLPs only, the attention's rows share one weight."""
    cfg = GPTConfig(vocab_size=50, block_size=64, n_layer=3, n_head=2, n_embd=16, n_streams=3, n_msa_layers=2,
                    lora_rank=2, stream_adapter_rank=2, prune_rank=4, stream_adapter_in=adapter_in)
    unmerged = make_model(cfg, 7, noise_dtype=torch.float32)  # lora_B and stream_B random: both adapters act
    merged = make_model(cfg, 7, noise_dtype=torch.float32)
    merged.merge_lora()
    assert merged.transformer.h[2].mlp.c_fc.stream_weight_t is not None
    assert (merged.transformer.h[2].attn.c_attn.stream_weight_t is not None) == ("attn" in adapter_in)
    for i, prompt in enumerate(random_prompts(6, 50, seed=41)):
        kw = dict(gamma=3, k=2, tree_cap=[None, 5][i % 2], prune_threshold=[None, 0.02][i % 3 == 0], trace=True,
                  stream_pass=["tree", "accepted"][i % 2])
        a, b = generate_speculative(unmerged, prompt, 15, **kw), generate_speculative(merged, prompt, 15, **kw)
        assert b.step_tokens == a.step_tokens
        assert b.tokens == generate_autoregressive(merged, prompt, 15).tokens == a.tokens
        for ta, tb in zip(a.trace, b.trace):
            assert tb.drafted.tokens.tolist() == ta.drafted.tokens.tolist()
            torch.testing.assert_close(tb.drafted.scores, ta.drafted.scores, atol=1e-9, rtol=0)


def test_non_finite_logits_stop_decoding_with_an_error():
    """A model whose logits turn NaN (broken weights that bypassed loading, or an overflow) stops every decoder with
    one clear error instead of emitting tokens; an uncapped tree too large to forward is refused."""
    from batch import generate_autoregressive_batch, generate_speculative_batch
    model = random_model(seed=3)
    with torch.no_grad():
        model.transformer.ln_f.weight[0] = float("nan")
    prompt = [1, 2, 3]
    decoders = [lambda: generate_autoregressive(model, prompt, 5),
                lambda: generate_autoregressive(model, prompt, 5, temperature=1.0),
                lambda: generate_speculative(model, prompt, 5, k=2),
                lambda: generate_speculative(model, prompt, 5, temperature=1.0),
                lambda: generate_autoregressive_batch(model, [prompt, prompt], 5),
                lambda: generate_speculative_batch(model, [prompt, prompt], 5)]
    for decode in decoders:
        with pytest.raises(ValueError, match="logits hold NaN or inf, so decoding stops"):
            decode()
    with pytest.raises(ValueError, match=r"k=81 with gamma=4 drafts a full tree of 43,584,805 nodes .* tree_cap"):
        generate_speculative(random_model(seed=4, vocab_size=90), prompt, 5, gamma=4, k=81)
