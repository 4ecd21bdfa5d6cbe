"""Batched decoding (batch.py): several prompts decoded together, each row exactly as if it
were decoded alone, although rows accept different numbers of tokens per call, have trees of different sizes
and finish at different times. Float64, tiny models, one thread (see test_generate.py)."""
import pytest
import torch

from batch import RowKVCache, generate_autoregressive_batch, generate_speculative_batch, streams_at_rows
from generate import generate_autoregressive, generate_speculative
from helpers import RAND_THRESHOLD, TRAINED_THRESHOLD, periodic_prompts, random_model, random_prompts
from model import GPT, GPTConfig, CausalSelfAttention

FIELDS = ("tokens", "step_tokens", "forward_calls", "depth_attempted", "depth_accepted", "tree_sizes",
          "pruned_tree_sizes")


def settings(threshold):
    """(γ, k, cap, pruning, stream pass) combinations; every one is run on a whole batch."""
    return [dict(gamma=4, k=1), dict(gamma=3, k=2, tree_cap=5), dict(gamma=2, k=3, prune_threshold=threshold),
            dict(gamma=4, k=2, tree_cap=7, prune_threshold=threshold), dict(gamma=3, k=2, stream_pass="accepted"),
            dict(gamma=4, k=3, tree_cap=9, prune_threshold=threshold, stream_pass="accepted"), dict(gamma=1, k=2)]


def assert_same(batch_result, alone, what):
    for name in FIELDS:
        assert getattr(batch_result, name) == getattr(alone, name), f"{what}: {name} differs"


def ragged(results) -> bool:
    """Some decode call where two rows still in the batch committed different numbers of tokens."""
    lengths = [r.accepted_lengths for r in results]
    return any(len({ls[i] for ls in lengths if i < len(ls)}) > 1 for i in range(max(map(len, lengths))))


@pytest.mark.parametrize("which", ["rand", "trained"])
def test_every_row_equals_its_prompt_decoded_alone(which, rand_model, trained_model):
    model = rand_model if which == "rand" else trained_model
    threshold = RAND_THRESHOLD if which == "rand" else TRAINED_THRESHOLD
    prompts = random_prompts(7, model.config.vocab_size, seed=41) if which == "rand" else periodic_prompts(7, seed=41)
    assert len({len(p) for p in prompts}) == len(prompts)  # every row has its own prompt length
    m = 14
    ar = [generate_autoregressive(model, p, m) for p in prompts]
    for row, alone in zip(generate_autoregressive_batch(model, prompts, m), ar):
        assert_same(row, alone, "autoregressive")
    seen_ragged = seen_pruned = False
    for i, kw in enumerate(settings(threshold)):
        batch = prompts[i % 3:]  # batches of 7, 6 and 5 rows
        rows = generate_speculative_batch(model, batch, m, **kw)
        for prompt, row, truth in zip(batch, rows, ar[i % 3:]):
            assert row.tokens == truth.tokens, f"prompt {prompt}, {kw}"  # lossless per row
            assert_same(row, generate_speculative(model, prompt, m, **kw), f"prompt {prompt}, {kw}")
        seen_ragged |= ragged(rows)
        seen_pruned |= any(sum(r.pruned_tree_sizes) < sum(r.tree_sizes) for r in rows)
    assert seen_ragged, "no call had rows with different acceptance: the test does not exercise ragged rows"
    assert seen_pruned, "pruning never removed a node"


def test_rows_finishing_at_eos_do_not_disturb_the_others(trained_model):
    model, m = trained_model, 16
    prompts = periodic_prompts(6, seed=42)
    outputs = [generate_autoregressive(model, p, m).tokens for p in prompts]
    stops = lambda eos: [out.index(eos) + 1 if eos in out else m for out in outputs]  # output length per row
    # an EOS token that stops some rows early, others late, and leaves at least one row running to the end
    eos = next(t for t in sorted(set(sum(outputs, []))) if min(stops(t)) <= 4 and m in stops(t)
               and len(set(stops(t))) > 2)
    lengths = stops(eos)
    for kw in (dict(gamma=4, k=2, tree_cap=6), dict(gamma=3, k=1, stream_pass="accepted")):
        rows = generate_speculative_batch(model, prompts, m, eos_id=eos, **kw)
        for prompt, row in zip(prompts, rows):
            assert_same(row, generate_speculative(model, prompt, m, eos_id=eos, **kw), f"prompt {prompt}, {kw}")
        assert [len(r.tokens) for r in rows] == lengths
        # a finished row left the batch: the batch made as many forwards as its longest row
        assert max(r.forward_calls for r in rows) > min(r.forward_calls for r in rows)
    for row, prompt in zip(generate_autoregressive_batch(model, prompts, m, eos_id=eos), prompts):
        assert_same(row, generate_autoregressive(model, prompt, m, eos_id=eos), f"prompt {prompt}")


def test_pad_id_changes_nothing(rand_model):
    V = rand_model.config.vocab_size
    prompts = [[1], [5, 9, 2, 7, 3, 3, 8, 1, 4], [6, 2, 2, 11]]  # 8, 0 and 5 padding tokens
    for kw in (dict(gamma=3, k=2, prune_threshold=RAND_THRESHOLD), dict(gamma=4, k=1, stream_pass="accepted")):
        runs = [generate_speculative_batch(rand_model, prompts, 12, pad_id=pad, **kw) for pad in (0, 17, V - 1)]
        for rows in runs[1:]:
            for row, ref in zip(rows, runs[0]):
                assert_same(row, ref, f"pad id, {kw}")
    ar = [generate_autoregressive_batch(rand_model, prompts, 12, pad_id=pad) for pad in (0, V - 1)]
    assert [r.tokens for r in ar[0]] == [r.tokens for r in ar[1]]


def test_batch_of_one_equals_the_one_prompt_functions(rand_model):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    for kw in settings(RAND_THRESHOLD)[:4]:
        [row] = generate_speculative_batch(rand_model, [prompt], 20, **kw)
        assert_same(row, generate_speculative(rand_model, prompt, 20, **kw), str(kw))
    [row] = generate_autoregressive_batch(rand_model, [torch.tensor(prompt)], 20)
    assert_same(row, generate_autoregressive(rand_model, prompt, 20), "autoregressive")
    assert generate_speculative_batch(rand_model, [prompt, prompt], 0)[1].tokens == []


def test_all_msa_model_with_pruning_at_the_embeddings():
    """Every block an MSA block: pruning happens at the embeddings and there is no lower-layer cache to trim."""
    model = random_model(seed=3, vocab_size=30, n_layer=2, n_msa_layers=2, n_embd=16, n_streams=3)
    prompts = random_prompts(5, 30, seed=43)
    rows = generate_speculative_batch(model, prompts, 15, k=2, prune_threshold=0.03, tree_cap=6)
    for prompt, row in zip(prompts, rows):
        assert_same(row, generate_speculative(model, prompt, 15, k=2, prune_threshold=0.03, tree_cap=6), str(prompt))


# ------------------------------------------------------------------------------------------------------------
# the pieces: per-row cache compaction and per-row attention masks
# ------------------------------------------------------------------------------------------------------------

def test_commit_rows_and_select_rows():
    cfg = GPTConfig(vocab_size=10, block_size=16, n_layer=2, n_head=1, n_embd=2)
    cache = RowKVCache(cfg, batch_size=3, max_len=12, dtype=torch.float64)
    cache.length, cache.row_lengths = 4, [4, 2, 3]
    for buf in cache.k + cache.v:
        buf.copy_(torch.randn(buf.shape, dtype=torch.float64))
    before = [buf.clone() for buf in cache.k + cache.v]
    cache.commit_rows([[0, 2, 5], [], [4]])
    assert cache.row_lengths == [7, 2, 4] and cache.length == 7 and cache.pending == 0
    for buf, old in zip(cache.k + cache.v, before):
        assert torch.equal(buf[0, :, :7], torch.cat([old[0, :, :4], old[0, :, [4, 6, 9]]], dim=1))
        assert torch.equal(buf[1, :, :2], old[1, :, :2])
        assert torch.equal(buf[2, :, :4], torch.cat([old[2, :, :3], old[2, :, [8]]], dim=1))
    kept = [buf.clone() for buf in cache.k]
    cache.select_rows([2, 1])
    assert cache.row_lengths == [4, 2] and cache.length == 4
    assert all(torch.equal(buf, old[[2, 1]]) for buf, old in zip(cache.k, kept))
    with pytest.raises(ValueError, match="one list of entries per row"):
        cache.commit_rows([[0]])


@pytest.mark.parametrize("n_nodes", [1, 4])  # one node: the single-node fast path; more: two score blocks
def test_attention_with_a_mask_per_row_equals_each_row_alone(n_nodes):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=10, block_size=32, n_layer=1, n_head=2, n_embd=8, n_streams=3, n_msa_layers=1)
    attn = CausalSelfAttention(cfg).double().eval()
    B, L, T, G = 3, 6, n_nodes, 3
    h = torch.randn(B, T + T * G, 8, dtype=torch.float64)
    mask = torch.rand(B, 1, T, L + T) < 0.6
    mask[..., L:] = torch.eye(T, dtype=torch.bool)  # every node sees itself
    batched = attn(h, T, G, mask, cache=fresh_cache(cfg, B, L), layer=0)
    for b in range(B):
        alone = attn(h[b:b + 1], T, G, mask[b, 0], cache=fresh_cache(cfg, B, L, row=b), layer=0)
        torch.testing.assert_close(batched[b:b + 1], alone, rtol=1e-12, atol=1e-12)


def test_streams_at_rows_equals_each_row_alone(rand_model):
    """streams_at_rows on a cache whose rows hold different numbers of committed entries (stale columns after
    the shorter rows' own) == GPT.streams_at on each row's own entries alone."""
    cfg, B, L, G = rand_model.config, 3, 6, rand_model.config.n_streams
    cache = fresh_cache(cfg, B, L)
    cache.row_lengths = [6, 2, 4]
    h = torch.randn(B, cfg.n_embd, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batched = streams_at_rows(rand_model, h, cache, G)  # (B, γ, C)
        for b, n in enumerate(cache.row_lengths):
            alone = fresh_cache(cfg, B, L, row=b)
            alone.length = n
            torch.testing.assert_close(batched[b], rand_model.streams_at(h[b:b + 1], alone, G)[0], rtol=0, atol=1e-12)


def fresh_cache(cfg, B, L, row=None) -> RowKVCache:
    """A cache with L committed random entries per row (seeded: every call returns the same); `row`: that row only."""
    g = torch.Generator().manual_seed(1)
    cache = RowKVCache(cfg, B, L + 8, dtype=torch.float64)
    for buf in cache.k + cache.v:
        buf.copy_(torch.randn(buf.shape, generator=g, dtype=torch.float64))
    if row is not None:
        cache.k, cache.v = [buf[row:row + 1].clone() for buf in cache.k], [buf[row:row + 1].clone() for buf in cache.v]
    cache.length = L
    return cache


# ------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------

def test_bad_input_is_refused(rand_model):
    with pytest.raises(TypeError, match="list of prompts"):
        generate_speculative_batch(rand_model, [1, 2, 3], 5)
    with pytest.raises(TypeError, match="list of prompts"):
        generate_autoregressive_batch(rand_model, [], 5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate_autoregressive_batch(rand_model, [[1], [99]], 5)
    with pytest.raises(ValueError, match="pad_id"):
        generate_autoregressive_batch(rand_model, [[1], [2, 3]], 5, pad_id=-1)
    with pytest.raises(ValueError, match="gamma"):
        generate_speculative_batch(rand_model, [[1]], 5, gamma=9)
    with pytest.raises(ValueError, match="stream_pass"):
        generate_speculative_batch(rand_model, [[1]], 5, stream_pass="all")
    with pytest.raises(ValueError, match="k="):
        generate_speculative_batch(rand_model, [[1]], 5, k=0)
    with pytest.raises(ValueError, match="n_streams=0"):
        generate_speculative_batch(GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=4)), [[1]], 2)
    no_adapter = random_model(seed=5, prune_rank=0)
    with pytest.raises(ValueError, match="pruning adapter"):
        generate_speculative_batch(no_adapter, [[1]], 5, prune_threshold=0.1)
