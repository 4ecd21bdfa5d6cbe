"""Tests of model.py: multi-stream attention (docs/CONVENTIONS.md), the Eq. 5 loss, the KV cache used by tree
inference, LoRA and configs (checkpoints: test_checkpoint.py).

Conventions: tokens x_0..x_{T-1}; main logits at t predict x[t+1]; stream j (1..γ) at t predicts x[t+1+j].
Exactness tests run in float64 on tiny models.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import ATOL, make_model, tokens
from model import GPT, GPTConfig, KVCache, LoRALinear, stream_targets


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------

def copy_shared(src: GPT, dst: GPT) -> GPT:
    """Copy every tensor whose name and shape both models share (the base weights)."""
    own = dst.state_dict()
    shared = {k: v for k, v in src.state_dict().items() if k in own and own[k].shape == v.shape}
    assert any(k.startswith("transformer.h.") for k in shared)
    dst.load_state_dict(shared, strict=False)
    return dst


def lora_layers(model: GPT) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear) and m.rank > 0]


# ----------------------------------------------------------------------------------------------------------
# an independent naive oracle: the full (1+γ)T x (1+γ)T mask of docs/CONVENTIONS.md
# ----------------------------------------------------------------------------------------------------------

def _linear(mod, h, cfg):
    y = h @ mod.weight.T
    if mod.bias is not None:
        y = y + mod.bias
    if cfg.lora_rank > 0:
        y = y + ((h @ mod.lora_A.T) @ mod.lora_B.T) * (cfg.lora_alpha / cfg.lora_rank)
    return y


def _layer_norm(mod, h):
    mu = h.mean(-1, keepdim=True)
    var = ((h - mu) ** 2).mean(-1, keepdim=True)
    y = (h - mu) / torch.sqrt(var + mod.eps) * mod.weight
    return y if mod.bias is None else y + mod.bias


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _naive_block(blk, h, mask, cfg):
    """One pre-LN block on rows h (B, R, C) with an explicit (R, R) boolean mask (True = may attend)."""
    B, R, C = h.shape
    nh, hs = cfg.n_head, C // cfg.n_head
    q, k, v = _linear(blk.attn.c_attn, _layer_norm(blk.ln_1, h), cfg).split(C, dim=-1)
    q, k, v = (t.reshape(B, R, nh, hs).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
    att = att.masked_fill(~mask, float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, R, C)
    h = h + _linear(blk.attn.c_proj, y, cfg)
    m = _linear(blk.mlp.c_fc, _layer_norm(blk.ln_2, h), cfg)
    return h + _linear(blk.mlp.c_proj, _gelu_tanh(m), cfg)


def naive_msa_forward(model: GPT, idx: torch.Tensor):
    """Main logits (B, T, V) and stream logits (B, T, γ, V) by laying out all (1+γ)T rows (main rows, then the
    rows of stream 1, stream 2, ...) and one explicit mask, as the equations of docs/CONVENTIONS.md read."""
    cfg, tr = model.config, model.transformer
    B, T = idx.shape
    G, first = cfg.n_streams, cfg.n_layer - cfg.n_msa_layers
    h = tr.wte.weight[idx] + tr.wpe.weight[:T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for layer in range(first):
        h = _naive_block(tr.h[layer], h, causal, cfg)
    R = (1 + G) * T
    mask = torch.zeros(R, R, dtype=torch.bool)

    def row(j, t):  # j = 0 is the main stream
        return j * T + t

    for t in range(T):
        for t2 in range(t + 1):
            mask[row(0, t), row(0, t2)] = True  # main t sees main <= t
        for j in range(1, G + 1):
            for t2 in range(t + 1):
                mask[row(j, t), row(0, t2)] = True  # stream j at t sees main <= t
            for j2 in range(1, j + 1):
                mask[row(j, t), row(j2, t)] = True  # ... and streams 1..j of the same position
    if G > 0:
        h = torch.cat([h] + [h + tr.stream_emb[j - 1] for j in range(1, G + 1)], dim=1)  # S_j = M + P_j
    for layer in range(first, cfg.n_layer):
        h = _naive_block(tr.h[layer], h, mask[:h.size(1), :h.size(1)], cfg)
    logits = _layer_norm(tr.ln_f, h) @ tr.wte.weight.T
    main = logits[:, :T]
    streams = logits[:, T:].reshape(B, G, T, -1).transpose(1, 2) if G > 0 else None
    return main, streams


# ----------------------------------------------------------------------------------------------------------
# multi-stream attention
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_msa_layers", [1, 3])
def test_streams_never_leak_into_main_stream(tiny_config, n_msa_layers):
    plain = make_model(tiny_config(n_streams=0), seed=1)
    streamed = copy_shared(plain, make_model(tiny_config(n_streams=3, n_msa_layers=n_msa_layers), seed=2))
    idx = tokens(plain.config, 2, 20)
    with torch.no_grad():
        a, b = plain(idx), streamed(idx)
    assert a.stream_logits is None and b.stream_logits.shape == (2, 20, 3, plain.config.vocab_size)
    assert torch.equal(a.logits, b.logits)
    # the copy really made the two models share their base: a model with other base weights differs
    other = make_model(tiny_config(n_streams=3, n_msa_layers=n_msa_layers), seed=2)
    with torch.no_grad():
        assert not torch.allclose(other(idx).logits, a.logits)


def test_causality_main_and_streams(tiny_config):
    model = make_model(tiny_config(n_streams=3, n_msa_layers=2))
    T = 16
    idx = tokens(model.config, 1, T)
    with torch.no_grad():
        ref = model(idx)
        for t in [0, 5, T - 2]:
            changed = idx.clone()
            changed[0, t + 1:] = (changed[0, t + 1:] + 1 + torch.arange(T - t - 1)) % model.config.vocab_size
            out = model(changed)
            torch.testing.assert_close(out.logits[:, :t + 1], ref.logits[:, :t + 1], atol=ATOL, rtol=0)
            torch.testing.assert_close(out.stream_logits[:, :t + 1], ref.stream_logits[:, :t + 1],
                                       atol=ATOL, rtol=0)
            # the change is visible right after t (so the comparison above is not vacuous)
            assert (out.logits[:, t + 1] - ref.logits[:, t + 1]).abs().max() > 1e-6
            assert (out.stream_logits[:, t + 1] - ref.stream_logits[:, t + 1]).abs().max() > 1e-6


@pytest.mark.parametrize("changed", [1, 2, 3])
def test_stream_order_sees_only_lower_streams(tiny_config, changed):
    """Stream j depends on P_j' for j' <= j only (it attends to streams 1..j of its own position)."""
    G = 3
    model = make_model(tiny_config(n_streams=G, n_msa_layers=2))
    idx = tokens(model.config, 2, 12)
    with torch.no_grad():
        ref = model(idx)
        model.transformer.stream_emb[changed - 1] += 0.7 * torch.randn(model.config.n_embd, dtype=torch.float64)
        out = model(idx)
    assert torch.equal(out.logits, ref.logits)
    for j in range(1, G + 1):
        diff = (out.stream_logits[:, :, j - 1] - ref.stream_logits[:, :, j - 1]).abs().max().item()
        if j < changed:
            assert diff <= ATOL, f"stream {j} changed when P_{changed} changed"
        else:
            assert diff > 1e-6, f"stream {j} did not react to P_{changed}"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lora_rank", [0, 4])
@pytest.mark.parametrize("n_layer,n_msa_layers,n_streams", [(3, 2, 3), (2, 2, 2), (3, 1, 1), (2, 0, 0)])
def test_efficient_msa_matches_naive_full_mask(tiny_config, bias, lora_rank, n_layer, n_msa_layers, n_streams):
    cfg = tiny_config(n_layer=n_layer, n_msa_layers=n_msa_layers, n_streams=n_streams, bias=bias,
                      lora_rank=lora_rank, lora_alpha=8.0, dropout=0.0)
    model = make_model(cfg, seed=3, lora_b=True)
    if lora_rank:
        assert all(m.lora_B.abs().sum() > 0 for m in lora_layers(model))
    idx = tokens(cfg, 2, 11, seed=4)
    with torch.no_grad():
        out = model(idx)
        main, streams = naive_msa_forward(model, idx)
    torch.testing.assert_close(out.logits, main, atol=ATOL, rtol=0)
    if n_streams:
        torch.testing.assert_close(out.stream_logits, streams, atol=ATOL, rtol=0)
    else:
        assert out.stream_logits is None


def test_efficient_msa_matches_naive_in_train_mode_with_zero_dropout(tiny_config):
    model = make_model(tiny_config(dropout=0.0), seed=5)
    idx = tokens(model.config, 1, 9)
    model.train()
    with torch.no_grad():
        out = model(idx)
        main, streams = naive_msa_forward(model, idx)
    torch.testing.assert_close(out.logits, main, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.stream_logits, streams, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# KV cache: prefill, node-by-node decoding, trees, compaction
# ----------------------------------------------------------------------------------------------------------

def causal_mask(L: int, T: int) -> torch.Tensor:
    return torch.cat([torch.ones(T, L, dtype=torch.bool), torch.ones(T, T, dtype=torch.bool).tril()], dim=1)


@pytest.mark.parametrize("stream_rows_mode", ["all", "last"])
def test_prefill_then_one_token_at_a_time_equals_full_forward(tiny_config, stream_rows_mode):
    cfg = tiny_config(n_streams=3, n_msa_layers=2, lora_rank=2)
    model = make_model(cfg, seed=6)
    T, P = 18, 7
    idx = tokens(cfg, 2, T, seed=7)
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(cfg, batch_size=2, max_len=32, dtype=torch.float64)
        logits, states = model.forward_nodes(idx[:, :P], torch.arange(P), causal_mask(0, P), cache)
        cache.commit(torch.arange(P))
        assert cache.length == P
        torch.testing.assert_close(logits, full.logits[:, :P], atol=ATOL, rtol=0)
        torch.testing.assert_close(model.lm_head(states), full.stream_logits[:, :P], atol=ATOL, rtol=0)
        for t in range(P, T):
            rows = None if stream_rows_mode == "all" else torch.tensor([0])
            logits, states = model.forward_nodes(idx[:, t:t + 1], torch.tensor([t]),
                                                 torch.ones(1, cache.length + 1, dtype=torch.bool), cache, rows)
            cache.commit(torch.tensor([0]))
            assert cache.length == t + 1
            torch.testing.assert_close(logits[:, 0], full.logits[:, t], atol=ATOL, rtol=0)
            torch.testing.assert_close(model.lm_head(states)[:, 0], full.stream_logits[:, t], atol=ATOL, rtol=0)


def test_prefill_without_mask_on_empty_cache_is_causal(tiny_config):
    cfg = tiny_config()
    model = make_model(cfg, seed=8)
    idx = tokens(cfg, 1, 10)
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(cfg, 1, 16, dtype=torch.float64)
        h = model.lower(model.embed(idx, torch.arange(10)), None, cache)
        main, states = model.upper(h, None, cache)
    torch.testing.assert_close(model.lm_head(main), full.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.lm_head(states), full.stream_logits, atol=ATOL, rtol=0)


# a small tree: node -> parent (-1 = root); depths 0,1,1,2,2,2,3
TREE_PARENTS = [-1, 0, 0, 1, 2, 1, 3]


def tree_layout(parents, L):
    n = len(parents)
    depth, anc = [0] * n, [[i] for i in range(n)]
    for i, p in enumerate(parents):
        if p >= 0:
            depth[i] = depth[p] + 1
            anc[i] = anc[p] + [i]
    mask = torch.zeros(n, L + n, dtype=torch.bool)
    mask[:, :L] = True
    for i in range(n):
        for a in anc[i]:
            mask[i, L + a] = True
    return mask, torch.tensor(depth) + L, anc


def prefill(model, prompt, max_len=40):
    cache = KVCache(model.config, prompt.size(0), max_len, dtype=torch.float64)
    P = prompt.size(1)
    with torch.no_grad():
        out = model.forward_nodes(prompt, torch.arange(P), causal_mask(0, P), cache)
    cache.commit(torch.arange(P))
    return cache, out


def test_tree_forward_equals_each_path_as_a_plain_sequence(tiny_config):
    cfg = tiny_config(n_streams=3, n_msa_layers=2)
    model = make_model(cfg, seed=9)
    prompt = tokens(cfg, 1, 6, seed=10)
    node_tokens = tokens(cfg, 1, len(TREE_PARENTS), seed=11)
    cache, _ = prefill(model, prompt)
    mask, pos, anc = tree_layout(TREE_PARENTS, cache.length)
    with torch.no_grad():
        logits, states = model.forward_nodes(node_tokens, pos, mask, cache)
        stream_logits = model.lm_head(states)
        for i, path in enumerate(anc):
            seq = torch.cat([prompt, node_tokens[:, path]], dim=1)
            ref = model(seq)
            torch.testing.assert_close(logits[:, i], ref.logits[:, -1], atol=ATOL, rtol=0)
            torch.testing.assert_close(stream_logits[:, i], ref.stream_logits[:, -1], atol=ATOL, rtol=0)
    # streams on a subset of the nodes: the same states as with streams on every node
    rows = torch.tensor([3, 0, 6])
    with torch.no_grad():
        logits2, states2 = model.forward_nodes(node_tokens, pos, mask, cache, stream_rows=rows)
    torch.testing.assert_close(logits2, logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(states2, states[:, rows], atol=ATOL, rtol=0)


def test_tree_forward_with_pruned_nodes_via_select_pending(tiny_config):
    """Pruning between lower and upper: the kept nodes' lower-layer entries are moved with select_pending,
    then the MSA layers run on the survivors only; results equal the plain sequences."""
    cfg = tiny_config(n_layer=3, n_streams=2, n_msa_layers=1)
    model = make_model(cfg, seed=12)
    prompt = tokens(cfg, 1, 5, seed=13)
    node_tokens = tokens(cfg, 1, len(TREE_PARENTS), seed=14)
    cache, _ = prefill(model, prompt)
    L = cache.length
    mask, pos, anc = tree_layout(TREE_PARENTS, L)
    keep = torch.tensor([0, 2, 4])  # root, its second child, that child's child (subtree of node 1 dropped)
    with torch.no_grad():
        h = model.lower(model.embed(node_tokens, pos), mask, cache)
        cache.select_pending(keep, range(cfg.first_msa_layer))
        kmask = mask[keep][:, torch.cat([torch.arange(L), L + keep])]
        main, states = model.upper(h[:, keep], kmask, cache)
        logits, stream_logits = model.lm_head(main), model.lm_head(states)
        for r, i in enumerate(keep.tolist()):
            ref = model(torch.cat([prompt, node_tokens[:, anc[i]]], dim=1))
            torch.testing.assert_close(logits[:, r], ref.logits[:, -1], atol=ATOL, rtol=0)
            torch.testing.assert_close(stream_logits[:, r], ref.stream_logits[:, -1], atol=ATOL, rtol=0)


def test_commit_compacts_cache_to_the_chosen_entries(tiny_config):
    cfg = tiny_config(n_streams=3, n_msa_layers=2)
    model = make_model(cfg, seed=15)
    prompt = tokens(cfg, 1, 6, seed=16)
    node_tokens = tokens(cfg, 1, len(TREE_PARENTS), seed=17)
    cache, _ = prefill(model, prompt)
    mask, pos, _ = tree_layout(TREE_PARENTS, cache.length)
    accepted = torch.tensor([0, 2, 4])  # a root-to-leaf path whose entries are not the first pending rows
    with torch.no_grad():
        model.forward_nodes(node_tokens, pos, mask, cache)
    cache.commit(accepted)
    committed = torch.cat([prompt, node_tokens[:, accepted]], dim=1)
    n = committed.size(1)
    assert cache.length == n
    fresh, _ = prefill(model, committed)
    for layer in range(cfg.n_layer):
        torch.testing.assert_close(cache.k[layer][:, :, :n], fresh.k[layer][:, :, :n], atol=ATOL, rtol=0)
        torch.testing.assert_close(cache.v[layer][:, :, :n], fresh.v[layer][:, :, :n], atol=ATOL, rtol=0)
    # and decoding goes on correctly from the compacted cache
    nxt = tokens(cfg, 1, 1, seed=18)
    with torch.no_grad():
        logits, states = model.forward_nodes(nxt, torch.tensor([n]), torch.ones(1, n + 1, dtype=torch.bool), cache)
        ref = model(torch.cat([committed, nxt], dim=1))
    torch.testing.assert_close(logits[:, 0], ref.logits[:, -1], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.lm_head(states)[:, 0], ref.stream_logits[:, -1], atol=ATOL, rtol=0)


def test_cache_holds_main_stream_only(tiny_config):
    """Only the main stream's keys/values are cached: a γ=3 model fills the cache exactly as its γ=0 base."""
    plain = make_model(tiny_config(n_streams=0), seed=19)
    streamed = copy_shared(plain, make_model(tiny_config(n_streams=3, n_msa_layers=3), seed=20))
    prompt = tokens(plain.config, 1, 9, seed=21)
    c0, _ = prefill(plain, prompt)
    c3, _ = prefill(streamed, prompt)
    n = c0.max_len  # the γ=3 cache has 3 more columns: streams_at's scratch (KVCache.write_scratch), empty here
    for layer in range(plain.config.n_layer):  # main and stream rows share one matmul: equal up to rounding
        torch.testing.assert_close(c0.k[layer], c3.k[layer][:, :, :n], atol=1e-12, rtol=0)
        torch.testing.assert_close(c0.v[layer], c3.v[layer][:, :, :n], atol=1e-12, rtol=0)
        assert not c3.k[layer][:, :, n:].any() and not c3.v[layer][:, :, n:].any()


@pytest.mark.parametrize("merged", [False, True])
def test_streams_at_equals_the_streams_of_a_full_forward(tiny_config, merged):
    """GPT.streams_at (the streams of the last committed node alone, their keys/values in the cache's scratch)
    gives the stream logits a full forward gives at that position; the next forward, which overwrites the scratch,
    is still exact; a cache with pending entries is refused. With LoRA and a stream adapter, merged or not."""
    cfg = tiny_config(lora_rank=2, stream_adapter_rank=2)
    model = make_model(cfg, seed=23)
    if merged:
        model.merge_lora()
    x = tokens(cfg, 2, 8, seed=24)
    cache = KVCache(cfg, 2, 8, dtype=torch.float64)  # room for 8 entries: the scratch of γ = 3 goes past them
    with torch.no_grad():
        h = model.lower(model.embed(x[:, :7], torch.arange(7)), causal_mask(0, 7), cache)
        model.upper(h, causal_mask(0, 7), cache, n_streams=0)
        cache.commit()
        streams = model.streams_at(h[:, -1], cache)  # (2, γ, C)
        ref = model(x)
        torch.testing.assert_close(model.lm_head(streams), ref.stream_logits[:, 6], atol=ATOL, rtol=0)
        torch.testing.assert_close(model.streams_at(h[:, -1], cache, n_streams=2), streams[:, :2], atol=ATOL, rtol=0)
        logits, _ = model.forward_nodes(x[:, 7:], torch.tensor([7]), torch.ones(1, 8, dtype=torch.bool), cache)
        torch.testing.assert_close(logits[:, 0], ref.logits[:, 7], atol=ATOL, rtol=0)
        with pytest.raises(ValueError, match="pending"):
            model.streams_at(h[:, -1], cache)


def test_cache_errors(tiny_config):
    cfg = tiny_config()
    model = make_model(cfg, seed=22)
    cache, _ = prefill(model, tokens(cfg, 1, 4), max_len=6)
    with torch.no_grad():
        with pytest.raises(ValueError, match="mask"):
            model.forward_nodes(tokens(cfg, 1, 1), torch.tensor([4]), None, cache)
        with pytest.raises(ValueError, match="overflow"):
            model.forward_nodes(tokens(cfg, 1, 3), torch.arange(4, 7), causal_mask(4, 3), cache)
        with pytest.raises(ValueError, match="block_size"):
            model(tokens(cfg, 1, cfg.block_size + 1))


# ----------------------------------------------------------------------------------------------------------
# loss (Eq. 5)
# ----------------------------------------------------------------------------------------------------------

def hand_loss(logits, stream_logits, x, loss_mask, alpha):
    """Eq. 5 from the token sequence x (B, T+1) itself: main at t -> x[t+1], stream j at t -> x[t+1+j];
    a target is dropped when it lies past x's end or loss_mask (indexed like targets, i.e. by t+1-1) is False."""
    B, T, G, _ = stream_logits.shape

    def ce(pairs):
        if not pairs:
            return torch.zeros((), dtype=logits.dtype)
        return torch.stack([F.cross_entropy(lg[None], tgt[None]) for lg, tgt in pairs]).mean()

    main = [(logits[b, t], x[b, t + 1]) for b in range(B) for t in range(T) if loss_mask[b, t]]
    streams = []
    for j in range(1, G + 1):
        streams.append(ce([(stream_logits[b, t, j - 1], x[b, t + 1 + j]) for b in range(B) for t in range(T)
                           if t + 1 + j <= T and loss_mask[b, t + j]]))
    streams = torch.stack(streams)
    return ce(main) + alpha * streams.sum(), ce(main), streams


def test_loss_matches_hand_computation_of_eq5(tiny_config):
    cfg = tiny_config(vocab_size=20, n_streams=3, n_msa_layers=2, stream_loss_weight=0.25)
    model = make_model(cfg, seed=23)
    B, T = 2, 9
    x = tokens(cfg, B, T + 1, seed=24)
    loss_mask = torch.ones(B, T, dtype=torch.bool)
    loss_mask[0, :3] = False  # prompt tokens x[1..3] of the first sequence
    loss_mask[1, 5] = False
    g = torch.Generator().manual_seed(25)
    logits = torch.randn(B, T, 20, generator=g, dtype=torch.float64)
    stream_logits = torch.randn(B, T, 3, 20, generator=g, dtype=torch.float64)
    targets = x[:, 1:].masked_fill(~loss_mask, -1)
    loss, main, streams = model.loss(logits, stream_logits, targets, stream_targets(targets, 3))
    h_loss, h_main, h_streams = hand_loss(logits, stream_logits, x, loss_mask, 0.25)
    torch.testing.assert_close(main, h_main, atol=1e-12, rtol=0)
    torch.testing.assert_close(streams, h_streams, atol=1e-12, rtol=0)
    torch.testing.assert_close(loss, h_loss, atol=1e-12, rtol=0)


@pytest.mark.parametrize("drafter", [dict(n_streams=3), dict(n_medusa_heads=3)])
def test_without_main_loss_the_loss_is_the_stream_terms_alone(tiny_config, drafter):
    """main_loss=False (frozen-mode training, α0 = 0): no main LM head, and the loss and stream CEs equal the
    stream terms of the full forward's Eq. 5."""
    cfg = tiny_config(vocab_size=20, n_msa_layers=2 if "n_streams" in drafter else 0, stream_loss_weight=0.25,
                      **({"n_streams": 0} if "n_medusa_heads" in drafter else {}), **drafter)
    model = make_model(cfg, seed=26)
    x = tokens(cfg, 2, 11, seed=27)
    loss_mask = torch.ones(2, 10, dtype=torch.bool)
    loss_mask[0, :4] = False
    rows = torch.tensor([0, 3, 4, 8])
    full = model(x[:, :-1], x[:, 1:], loss_mask, rows)
    alone = model(x[:, :-1], x[:, 1:], loss_mask, rows, main_loss=False)
    assert alone.logits is None and alone.main_loss is None
    torch.testing.assert_close(alone.stream_losses, full.stream_losses, atol=1e-12, rtol=0)
    torch.testing.assert_close(alone.loss, 0.25 * full.stream_losses.sum(), atol=1e-12, rtol=0)
    torch.testing.assert_close(full.loss, full.main_loss + 0.25 * full.stream_losses.sum(), atol=1e-12, rtol=0)
    plain = make_model(tiny_config(vocab_size=20, n_streams=0, n_msa_layers=0), seed=26)
    with pytest.raises(ValueError, match="no loss"):
        plain(x[:, :-1], x[:, 1:], main_loss=False)


def test_early_exit_loss_scores_only_the_learned_positions(tiny_config):
    """train.early_exit_loss sends only the rows with a target through the LM head; the value is the next-token
    CE of the early-exit logits of every position, prompt and padding positions masked."""
    from train import early_exit_loss
    cfg = tiny_config(vocab_size=20, n_streams=3, n_msa_layers=2, prune_rank=4)
    model = make_model(cfg, seed=28)
    x = tokens(cfg, 2, 11, seed=29)
    targets = x[:, 1:].clone()
    targets[1, 7:] = -1  # padding
    loss_mask = torch.ones(2, 10, dtype=torch.bool)
    loss_mask[:, :3] = False  # prompts
    h = model.lower(model.embed(x[:, :-1], torch.arange(10)))
    expected = F.cross_entropy(model.early_exit_logits(h).reshape(-1, 20),
                               targets.masked_fill(~loss_mask, -1).reshape(-1), ignore_index=-1)
    torch.testing.assert_close(early_exit_loss(model, x[:, :-1], targets, loss_mask), expected, atol=1e-12, rtol=0)


def test_stream_targets_are_j_plus_one_ahead(tiny_config):
    """Logits that put all mass on the right token give ~0 loss; being off by one position gives a large loss."""
    cfg = tiny_config(vocab_size=30, n_streams=3, n_msa_layers=2)
    model = make_model(cfg, seed=26)
    B, T, V, G = 1, 12, 30, 3
    x = torch.arange(T + 1).unsqueeze(0) * 7 % V  # all distinct tokens
    logits = torch.full((B, T, V), -50.0, dtype=torch.float64)
    stream_logits = torch.full((B, T, G, V), -50.0, dtype=torch.float64)
    for t in range(T):
        logits[0, t, x[0, t + 1]] = 50.0
        for j in range(1, G + 1):
            if t + 1 + j <= T:
                stream_logits[0, t, j - 1, x[0, t + 1 + j]] = 50.0
    loss, main, streams = model.loss(logits, stream_logits, x[:, 1:], stream_targets(x[:, 1:], G))
    assert loss.item() < 1e-6 and main.item() < 1e-6 and streams.max().item() < 1e-6
    shifted = stream_logits.roll(1, dims=1)  # stream at t now aims at x[t+j]
    _, _, streams_bad = model.loss(logits, shifted, x[:, 1:], stream_targets(x[:, 1:], G))
    assert (streams_bad > 10).all()


def test_masked_and_ignored_targets_contribute_nothing(tiny_config):
    cfg = tiny_config(n_streams=3, n_msa_layers=2)
    model = make_model(cfg, seed=27)
    B, T = 2, 10
    idx = tokens(cfg, B, T, seed=28)
    targets = tokens(cfg, B, T, seed=29)
    loss_mask = torch.ones(B, T, dtype=torch.bool)
    loss_mask[:, :4] = False
    targets[1, -1] = -1
    with torch.no_grad():
        ref = model(idx, targets, loss_mask)
        t2 = targets.clone()
        t2[:, :4] = (t2[:, :4] + 5) % cfg.vocab_size  # change only masked targets
        t2[1, -1] = -1
        same = model(idx, t2, loss_mask)
        t3 = targets.clone()
        t3[0, 6] = (t3[0, 6] + 5) % cfg.vocab_size  # change a learned target
        other = model(idx, t3, loss_mask)
    torch.testing.assert_close(same.loss, ref.loss, atol=0, rtol=0)
    torch.testing.assert_close(same.stream_losses, ref.stream_losses, atol=0, rtol=0)
    assert (other.loss - ref.loss).abs() > 1e-6
    assert (other.stream_losses - ref.stream_losses).abs().max() > 1e-6
    # a fully masked batch gives a zero loss, not NaN
    with torch.no_grad():
        none = model(idx, targets, torch.zeros(B, T, dtype=torch.bool))
    assert none.loss.item() == 0.0 and torch.equal(none.stream_losses, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("T", [1, 2, 3, 4])
def test_loss_with_sequences_not_longer_than_the_streams(tiny_config, T):
    """Stream j at t has no target when t + j >= T: such positions are ignored, even when T <= j (no NaN, no
    shape error); a stream with no target at all contributes 0."""
    G = 3
    cfg = tiny_config(n_streams=G, n_msa_layers=2)
    model = make_model(cfg, seed=30)
    x = tokens(cfg, 2, T + 1, seed=31)
    with torch.no_grad():
        out = model(x[:, :-1], x[:, 1:])
        full = model(x[:, :-1])
    assert torch.isfinite(out.loss) and torch.isfinite(out.stream_losses).all()
    assert out.stream_losses.shape == (G,)
    h_loss, h_main, h_streams = hand_loss(full.logits, full.stream_logits, x, torch.ones(2, T, dtype=torch.bool),
                                          cfg.stream_loss_weight)
    torch.testing.assert_close(out.stream_losses, h_streams, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.loss, h_loss, atol=1e-12, rtol=0)
    for j in range(1, G + 1):
        if j >= T:
            assert out.stream_losses[j - 1].item() == 0.0


# ----------------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------------

def test_fresh_lora_is_a_no_op(tiny_config):
    base = make_model(tiny_config(lora_rank=0), seed=32)
    lora = copy_shared(base, GPT(tiny_config(lora_rank=4)).double().eval())  # fresh LoRA: B = 0, A random
    assert lora_layers(lora) and all(torch.equal(m.lora_B, torch.zeros_like(m.lora_B)) for m in lora_layers(lora))
    assert all(m.lora_A.abs().sum() > 0 for m in lora_layers(lora))
    idx = tokens(base.config, 2, 12)
    with torch.no_grad():
        a, b = base(idx), lora(idx)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-12, rtol=0)
    torch.testing.assert_close(b.stream_logits, a.stream_logits, atol=1e-12, rtol=0)
    with torch.no_grad():
        lora_layers(lora)[0].lora_B.normal_()
        assert (lora(idx).logits - a.logits).abs().max() > 1e-6


def test_lora_merge_equals_unmerged_and_unmerge_restores(tiny_config):
    model = make_model(tiny_config(lora_rank=4, lora_alpha=8.0), seed=33, lora_b=True)
    base = copy_shared(model, make_model(tiny_config(lora_rank=0), seed=34))
    idx = tokens(model.config, 2, 12)
    weights = {n: p.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        unmerged = model(idx)
        assert (unmerged.logits - base(idx).logits).abs().max() > 1e-6  # the adapter does something
        model.merge_lora()
        assert all(m.merged for m in lora_layers(model))
        merged = model(idx)
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, weights[n])]
        model.merge_lora()  # merging twice is a no-op
        twice = model(idx)
    torch.testing.assert_close(merged.logits, unmerged.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(merged.stream_logits, unmerged.stream_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(twice.logits, merged.logits, atol=0, rtol=0)
    n_lora_layers = 4 * model.config.n_layer
    assert len(changed) == n_lora_layers and all(n.endswith(".weight") and "lora" not in n for n in changed)
    model.merge_lora(False)
    assert not any(m.merged for m in lora_layers(model))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, weights[n], atol=1e-12, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(idx).logits, unmerged.logits, atol=ATOL, rtol=0)


def test_with_a_frozen_base_gradients_reach_every_adapter_and_stream_embedding(tiny_config):
    cfg = tiny_config(lora_rank=2, prune_rank=3, n_streams=2, n_msa_layers=1)
    model = make_model(cfg, seed=35, dtype=torch.float32, lora_b=True).train()
    for n, p in model.named_parameters():  # the base frozen, as in fine-tuning
        p.requires_grad = "lora_" in n or n == "transformer.stream_emb" or n.startswith("prune_adapter.")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "transformer.stream_emb" in trainable and "prune_adapter.down.weight" in trainable
    assert len([n for n in trainable if "lora_" in n]) == 2 * 4 * cfg.n_layer
    idx = tokens(cfg, 2, 10)
    out = model(idx, idx.roll(-1, 1))
    h = model.lower(model.embed(idx, torch.arange(10)))
    loss = out.loss + F.cross_entropy(model.early_exit_logits(h).flatten(0, 1), idx.roll(-1, 1).flatten())
    loss.backward()
    for n, p in model.named_parameters():
        if n in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


# ----------------------------------------------------------------------------------------------------------
# learning
# ----------------------------------------------------------------------------------------------------------

def test_tiny_model_learns_every_stream_on_a_periodic_sequence():
    torch.manual_seed(0)
    V, period, T, B, G = 16, 7, 16, 8, 3
    cfg = GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32, n_streams=G, n_msa_layers=2)
    model = GPT(cfg)
    cycle = torch.randperm(V)[:period]  # distinct tokens: x_t determines every later token

    def batch():
        start = torch.randint(0, period, (B, 1))
        seq = cycle[(start + torch.arange(T + 1)) % period]
        return seq[:, :-1], seq[:, 1:]

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    with torch.no_grad():
        initial = model(*batch()).stream_losses.clone()
    for _ in range(150):
        out = model(*batch())
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = model(*batch())
    assert final.main_loss < 0.3 * math.log(V)
    assert (final.stream_losses < 0.3 * initial).all(), (initial, final.stream_losses)


# ----------------------------------------------------------------------------------------------------------
# configs and checkpoints
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,field", [
    (dict(n_streams=-1), "n_streams"),
    (dict(n_streams=1.5), "n_streams"),
    (dict(n_streams=2, n_msa_layers=0), "n_msa_layers"),
    (dict(n_streams=2, n_msa_layers=4), "n_msa_layers"),
    (dict(n_streams=0, n_msa_layers=5), "n_msa_layers"),
    (dict(n_streams=2, n_msa_layers=2, n_medusa_heads=2), "n_medusa_heads"),
    (dict(n_streams=0, n_msa_layers=0, n_medusa_heads=-1), "n_medusa_heads"),
    (dict(n_embd=30, n_head=4), "n_embd"),
    (dict(dropout=1.5), "dropout"),
    (dict(dropout=-0.1), "dropout"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(block_size=0), "block_size"),
    (dict(n_layer=0), "n_layer"),
    (dict(n_head=0), "n_head"),
    (dict(lora_rank=-1), "lora_rank"),
    (dict(lora_alpha=0.0), "lora_alpha"),
    (dict(stream_loss_weight=-0.1), "stream_loss_weight"),
    (dict(prune_rank=-2), "prune_rank"),
])
def test_bad_config_raises_value_error_naming_the_field(tiny_config, overrides, field):
    with pytest.raises(ValueError, match=rf"GPTConfig\.{field}="):
        tiny_config(**overrides)


# ----------------------------------------------------------------------------------------------------------
# state dict layout and parameter counts
# ----------------------------------------------------------------------------------------------------------

def gpt2_keys(n_layer, bias=True):
    keys = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "lm_head.weight"}
    if bias:
        keys.add("transformer.ln_f.bias")
    for i in range(n_layer):
        for mod in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            keys.add(f"transformer.h.{i}.{mod}.weight")
            if bias:
                keys.add(f"transformer.h.{i}.{mod}.bias")
    return keys


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_has_the_gpt2_layout(tiny_config, bias):
    assert set(GPT(tiny_config(n_streams=0, bias=bias)).state_dict()) == gpt2_keys(3, bias)
    assert set(GPT(tiny_config(n_streams=3, bias=bias)).state_dict()) == gpt2_keys(3, bias) | {"transformer.stream_emb"}
    lora_keys = set(GPT(tiny_config(n_streams=3, lora_rank=2, bias=bias)).state_dict())
    base = gpt2_keys(3, bias) | {"transformer.stream_emb"}
    assert base <= lora_keys
    extra = lora_keys - base
    assert len(extra) == 2 * 4 * 3 and all(k.endswith((".lora_A", ".lora_B")) for k in extra)
    assert {k.rsplit(".", 1)[0] for k in extra} == {
        f"transformer.h.{i}.{m}" for i in range(3) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


def test_streams_on_a_subset_of_positions_equal_the_full_forward_there(tiny_config):
    """Training with stream_rows (a random share of positions) is exact for those positions."""
    model = make_model(tiny_config(n_streams=3, n_msa_layers=2), seed=40)
    idx = tokens(model.config, 2, 12, seed=41)
    rows = torch.tensor([1, 4, 5, 11])
    with torch.no_grad():
        full, sub = model(idx), model(idx, stream_rows=rows)
        torch.testing.assert_close(sub.logits, full.logits, atol=ATOL, rtol=0)  # the main stream is untouched
        torch.testing.assert_close(sub.stream_logits, full.stream_logits[:, rows], atol=ATOL, rtol=0)
        targets = tokens(model.config, 2, 12, seed=42)
        out = model(idx, targets, stream_rows=rows)
    ahead = stream_targets(targets, 3)[:, rows]  # (B, 4, γ)
    for j in range(3):
        valid = ahead[..., j] != -1
        expected = F.cross_entropy(full.stream_logits[:, rows][..., j, :][valid], ahead[..., j][valid])
        torch.testing.assert_close(out.stream_losses[j], expected, atol=ATOL, rtol=0)
