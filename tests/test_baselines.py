"""Baseline decoders of benchmarks/baselines.py: prompt-lookup decoding and two-model speculative decoding (greedy).

Both must be exactly lossless with respect to greedy autoregressive decoding of the target: checked in float64
on tiny random models (vocabulary of 20 tokens, so that n-grams repeat), with and without EOS, for budgets
from 0 to the last position the block allows. Acceptance is forced where it matters: a model whose output is
periodic in the position (prompt lookup drafts several tokens and they are right) and a draft that is a copy
(or a slightly noisy copy) of the target (two-model drafts accepted in full, or rejected mid-chain, which
exercises the draft cache's roll-back).
"""
import copy
import math

import pytest
import torch

from benchmarks import baselines
from benchmarks.baselines import generate_prompt_lookup, generate_two_model, lookup_draft
from benchmarks.params import parameter_counts
from generate import GenerationResult, generate_autoregressive
from helpers import full_acceptance_lengths, make_model, perturb_, randomize_fan_in
from model import GPT, GPTConfig

V, BLOCK = 20, 32
LOOKUP_SETTINGS = [(g, d) for g in (1, 3) for d in (1, 4, 7)]  # (max_ngram, num_draft)
GAMMAS = (1, 3, 5)


# ------------------------------------------------------------------------------------------------------------
# models and prompts
# ------------------------------------------------------------------------------------------------------------

def random_gpt(seed, n_layer=2, n_embd=32, n_streams=0, vocab_size=V, gain=3.0) -> GPT:
    """Random weights, float64. With the default init (or gain 1) the tied embedding dominates and greedy output
    is one repeated token; gain 3 on the block matrices gives varied outputs."""
    cfg = GPTConfig(vocab_size=vocab_size, block_size=BLOCK, n_layer=n_layer, n_head=2, n_embd=n_embd,
                    n_streams=n_streams, n_msa_layers=1 if n_streams else 0)
    return make_model(cfg, seed, noise_dtype=torch.float32, gain=gain,
                      stds={"transformer.wte.weight": 1.0, "transformer.stream_emb": 1.0})


def periodic_gpt(period=3) -> GPT:
    """Greedy output (nearly) periodic in the position: position embeddings repeat with `period` and dominate,
    the blocks add a small input-dependent term (so a wrong cache or position would still show)."""
    model = random_gpt(seed=7, gain=0.3)
    with torch.no_grad():
        rows = torch.randn(period, model.config.n_embd, generator=torch.Generator().manual_seed(8))
        model.transformer.wpe.weight.copy_(3.0 * rows.repeat(BLOCK // period + 1, 1)[:BLOCK])
        model.transformer.wte.weight.mul_(0.1)  # tied: the LM head only scales, the input token weighs less
    return model


@pytest.fixture(scope="module")
def models(_one_thread):
    target = random_gpt(seed=1)
    noisy = perturb_(copy.deepcopy(target), 99, std=0.15)
    torch.manual_seed(0)
    repeating = GPT(target.config).double().eval()  # the default init: greedy output is one repeated token
    return dict(target=target, streams=random_gpt(seed=2, n_streams=2), draft=random_gpt(seed=3, n_layer=1, n_embd=16),
                noisy=noisy, periodic=periodic_gpt(), repeating=repeating)


def random_prompts(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (int(torch.randint(1, 13, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def repetitive_prompts(n, seed):
    """A random pattern of 1..4 tokens repeated up to 12 tokens; every third one has a corrupted token."""
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(n):
        pattern = torch.randint(0, V, (1 + i % 4,), generator=g).tolist()
        p = (pattern * 12)[:int(torch.randint(len(pattern) + 1, 13, (1,), generator=g))]
        if i % 3 == 2:
            p[int(torch.randint(0, len(p), (1,), generator=g))] = int(torch.randint(0, V, (1,), generator=g))
        prompts.append(p)
    return prompts


def budgets(prompt, i):
    """0, 1, 2, something in between and the largest budget the block allows (the last token needs no position)."""
    return [0, 1, 2, 3 + i % 9, BLOCK - len(prompt) + 1]


def eos_settings(model, prompt, m):
    """No EOS, and an EOS that does occur in the greedy output (when there is one)."""
    ar = generate_autoregressive(model, prompt, m).tokens
    return [None] + ([ar[len(ar) // 2]] if ar else [])


# ------------------------------------------------------------------------------------------------------------
# metrics shared by both decoders
# ------------------------------------------------------------------------------------------------------------

def check_result(r: GenerationResult, ar: GenerationResult, n_draft: int, eos_id):
    assert r.tokens == ar.tokens
    assert r.forward_calls == len(r.step_tokens) <= ar.forward_calls
    assert sum(r.step_tokens, []) == r.tokens
    assert len(r.depth_attempted) == len(r.depth_accepted) == n_draft
    if not r.tokens:
        assert r.forward_calls == 0 and r.draft_calls == 0
        return
    assert r.step_tokens[0] == r.tokens[:1]  # the prefill commits the first token
    assert len(r.tree_sizes) == len(r.pruned_tree_sizes) == r.forward_calls - 1
    assert r.tree_sizes == r.pruned_tree_sizes and all(1 <= s <= n_draft + 1 for s in r.tree_sizes)
    assert all(1 <= a <= s for a, s in zip(r.accepted_lengths, r.tree_sizes))
    for j in range(n_draft):  # depth j+1 attempted only where depth j was accepted
        assert r.depth_accepted[j] <= r.depth_attempted[j]
        if j:
            assert r.depth_attempted[j] <= r.depth_accepted[j - 1]
    accepted_drafts = sum(a - 1 for a in r.accepted_lengths)
    if eos_id is None:  # with EOS, drafts accepted past it are dropped from the output
        assert sum(r.depth_accepted) == accepted_drafts
        rejections = sum(a < s for a, s in zip(r.accepted_lengths, r.tree_sizes))  # calls that rejected a draft
        assert sum(r.depth_attempted) == sum(r.depth_accepted) + rejections
    else:
        assert sum(r.depth_accepted) >= accepted_drafts


# ------------------------------------------------------------------------------------------------------------
# prompt lookup
# ------------------------------------------------------------------------------------------------------------

def test_lookup_draft():
    assert lookup_draft([1, 2, 3, 1, 2], 3, 4) == [3, 1, 2]          # longest suffix [3,1,2] absent, [1,2] found
    assert lookup_draft([1, 2, 9, 3, 2, 8, 1, 2], 2, 4) == [9, 3, 2, 8]  # the 2-gram wins over the 1-gram
    assert lookup_draft([1, 2, 9, 3, 2, 8, 1, 2], 1, 4) == [8, 1, 2]     # most recent 1-gram, cut at the end
    assert lookup_draft([1, 7, 1, 8, 1], 3, 1) == [8]
    assert lookup_draft([5, 5, 5], 3, 4) == [5]   # the occurrence must end before the last position
    assert lookup_draft([1, 2, 3], 3, 4) == [] and lookup_draft([4], 3, 4) == []
    assert lookup_draft([1, 2, 1, 2], 2, 0) == []


@pytest.mark.parametrize("which", ["target", "streams"])
def test_prompt_lookup_is_lossless(which, models):
    model = models[which]  # "streams": a model with streams, decoded with the main stream only
    runs = 0
    for i, prompt in enumerate(random_prompts(50, seed=11 + (which == "streams"))):
        for b, m in enumerate(budgets(prompt, i)):
            for eos in eos_settings(model, prompt, m):
                ar = generate_autoregressive(model, prompt, m, eos_id=eos)
                max_ngram, num_draft = LOOKUP_SETTINGS[(i + b) % len(LOOKUP_SETTINGS)]
                r = generate_prompt_lookup(model, prompt, m, max_ngram=max_ngram, num_draft=num_draft, eos_id=eos)
                check_result(r, ar, num_draft, eos)
                assert r.draft_calls == 0
                runs += 1
    assert runs > 400


@pytest.mark.parametrize("which", ["periodic", "repeating", "target"])
def test_prompt_lookup_accepts_drafts_on_repetition(which, models):
    """The test fails if lookup never drafts: repetitive prompts, and models whose output repeats."""
    model = models[which]
    results = []
    for i, prompt in enumerate(repetitive_prompts(20, seed=21)):
        m = BLOCK - len(prompt) + 1
        for eos in (None, [None, 0, 3][i % 3]):
            ar = generate_autoregressive(model, prompt, m, eos_id=eos)
            max_ngram, num_draft = LOOKUP_SETTINGS[i % len(LOOKUP_SETTINGS)]
            r = generate_prompt_lookup(model, prompt, m, max_ngram=max_ngram, num_draft=num_draft, eos_id=eos)
            check_result(r, ar, num_draft, eos)
            results.append(r)
    accepted = [sum(r.depth_accepted[j] for r in results if len(r.depth_accepted) > j) for j in range(3)]
    calls = sum(r.forward_calls for r in results)
    tokens = sum(len(r.tokens) for r in results)
    assert accepted[0] > 0, "prompt lookup never accepted a draft"
    if which == "periodic":  # period 3: drafts of up to 3 tokens, mostly right
        assert accepted[2] > 0 and tokens / calls > 2.0
    if which == "repeating":  # one token forever: the most recent 1-gram match drafts exactly one token
        assert tokens / calls > 1.7


# ------------------------------------------------------------------------------------------------------------
# two-model speculative decoding
# ------------------------------------------------------------------------------------------------------------

def spy_drafts(monkeypatch, draft_model, prompt):
    """Check, at every verification, that the chain drafted equals the draft model's own greedy continuation of
    the accepted sequence (a draft cache not rolled back after a rejection would draft something else), and that
    the draft is fed each token once: the prompt and first token, then 1 token per call, 2 (the last draft and
    the bonus token) at the start of a round after a round that accepted every draft."""
    rounds, feeds = [], []  # (drafted, accepted drafts) per decode call; tokens fed per draft call
    verify, forward = baselines.verify_chain, baselines.forward_chain

    def spy_forward(model, tokens, cache):
        if model is draft_model:
            feeds.append(len(tokens))
        return forward(model, tokens, cache)

    def spy_verify(model, cache, root, draft, result):
        context = list(prompt) + result.tokens
        assert draft == generate_autoregressive(draft_model, context, len(draft)).tokens
        if draft:
            first = len(prompt) + 1 if not rounds else 1 + (rounds[-1][0] == rounds[-1][1])
            assert feeds[-len(draft):] == [first] + [1] * (len(draft) - 1)
        accepted = verify(model, cache, root, draft, result)
        rounds.append((len(draft), len(accepted) - 1))
        return accepted

    monkeypatch.setattr(baselines, "forward_chain", spy_forward)
    monkeypatch.setattr(baselines, "verify_chain", spy_verify)
    return rounds


def test_two_model_is_lossless(models):
    target, draft = models["target"], models["draft"]
    runs = draft_calls = 0
    for i, prompt in enumerate(random_prompts(50, seed=31)):
        for b, m in enumerate(budgets(prompt, i)):
            for eos in eos_settings(target, prompt, m):
                ar = generate_autoregressive(target, prompt, m, eos_id=eos)
                gamma = GAMMAS[(i + b) % len(GAMMAS)]
                r = generate_two_model(target, draft, prompt, m, gamma=gamma, eos_id=eos)
                check_result(r, ar, gamma, eos)
                assert r.draft_calls == sum(s - 1 for s in r.tree_sizes)  # one draft call per drafted token
                draft_calls += r.draft_calls
                runs += 1
    assert runs > 400 and draft_calls > 1000


def test_two_model_identical_draft_accepts_everything(models, monkeypatch):
    """Draft = a copy of the target: every drafted token is right, so each call commits γ+1 tokens (except at
    the end) and the draft calls are exactly the accepted drafts."""
    target = models["target"]
    twin = copy.deepcopy(target)
    for i, prompt in enumerate(random_prompts(12, seed=41)):
        gamma, m = GAMMAS[i % 3], BLOCK - len(prompt) + 1 - i % 4
        ar = generate_autoregressive(target, prompt, m)
        with monkeypatch.context() as mp:
            spy_drafts(mp, twin, prompt)
            r = generate_two_model(target, twin, prompt, m, gamma=gamma)
        check_result(r, ar, gamma, None)
        assert r.accepted_lengths == full_acceptance_lengths(m, gamma)
        assert r.forward_calls == 1 + math.ceil((m - 1) / (gamma + 1))
        assert r.draft_calls == sum(a - 1 for a in r.accepted_lengths)
        assert r.depth_accepted == r.depth_attempted


def test_two_model_draft_cache_rolls_back(models, monkeypatch):
    """A slightly noisy copy of the target as draft: drafts are often right and sometimes rejected mid-chain;
    after each rejection the draft must continue from the accepted sequence."""
    target, noisy = models["target"], models["noisy"]
    steps = []
    for i, prompt in enumerate(random_prompts(12, seed=51)):
        gamma, m = GAMMAS[i % 3], BLOCK - len(prompt) + 1
        eos = None if i % 2 else 5
        with monkeypatch.context() as mp:
            seen = spy_drafts(mp, noisy, prompt)
            r = generate_two_model(target, noisy, prompt, m, gamma=gamma, eos_id=eos)
        check_result(r, generate_autoregressive(target, prompt, m, eos_id=eos), gamma, eos)
        assert r.draft_calls == sum(d for d, _ in seen)
        steps += seen
    assert any(0 < a < d for d, a in steps), "no mid-chain rejection: the roll-back is not exercised"
    assert any(a == d > 1 for d, a in steps) and any(a == 0 < d for d, a in steps)


# ------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    (dict(max_ngram=0), "max_ngram=0 must be an integer >= 1"),
    (dict(max_ngram=2.0), "max_ngram=2.0"),
    (dict(num_draft=0), "num_draft=0 must be an integer >= 1"),
    (dict(num_draft=True), "num_draft=True"),
])
def test_prompt_lookup_errors(kw, message, models):
    with pytest.raises(ValueError, match=message):
        generate_prompt_lookup(models["target"], [1, 2], 4, **kw)


def test_two_model_errors(models):
    target, draft = models["target"], models["draft"]
    for gamma in (0, -1, 1.5, "3"):
        with pytest.raises(ValueError, match=f"gamma={gamma!r} must be an integer >= 1"):
            generate_two_model(target, draft, [1, 2], 4, gamma=gamma)
    with pytest.raises(ValueError, match=r"vocabulary \(30 tokens\) differs from the target's \(20\)"):
        generate_two_model(target, random_gpt(seed=4, n_layer=1, n_embd=16, vocab_size=30), [1, 2], 4)
    short = GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=16)).double()
    with pytest.raises(ValueError, match="block_size=8"):
        generate_two_model(target, short, [1, 2], 10)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate_two_model(target, draft, [1, V], 4)


# ------------------------------------------------------------------------------------------------------------
# Medusa heads: the same tree loop as Speculative Streaming, heads instead of streams
# ------------------------------------------------------------------------------------------------------------

def random_medusa(seed, n_heads=4, prune_rank=4) -> GPT:
    """A random float64 Medusa model; its heads get random (non-zero) ResBlocks so that drafts vary."""
    base = random_gpt(seed)
    cfg = GPTConfig(**{**vars(base.config), "n_medusa_heads": n_heads, "n_msa_layers": 1, "prune_rank": prune_rank})
    model = GPT(cfg).double()
    model.load_state_dict({**model.state_dict(), **base.state_dict()})
    randomize_fan_in([*model.medusa.parameters(), *model.prune_adapter.parameters()], seed + 100)
    return model.eval()


def test_medusa_heads_start_as_the_base_lm_head():
    cfg = GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16, n_medusa_heads=3)
    model = GPT(cfg)
    h = torch.randn(5, 16)
    expected = model.lm_head(h)  # zero ResBlock = identity, LM head copied from the base
    logits = model.medusa(h)
    assert logits.shape == (5, 3, V)
    for j in range(3):
        torch.testing.assert_close(logits[:, j], expected)
    counts = parameter_counts(model)
    assert counts["medusa"] == 3 * (16 * 16 + 16 + 16 * V) and counts["stream_emb"] == 0


def test_medusa_training_targets_are_j_plus_one_ahead():
    """Head j at t is scored against x[t+1+j]: put all mass there and the head loss is ~0, shift it and it grows."""
    model = random_medusa(seed=5, n_heads=2)
    x = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(x[:, :-1])
        out = model(x[:, :-1], x[:, 1:])
        sub = model(x[:, :-1], x[:, 1:], stream_rows=torch.tensor([0, 3, 7]))
    assert full.stream_logits.shape == (2, 10, 2, V)
    torch.testing.assert_close(full.stream_logits, model.medusa(model.upper(model.lower(
        model.embed(x[:, :-1], torch.arange(10))))[0]))
    for j in (1, 2):
        expected = torch.stack([torch.nn.functional.cross_entropy(full.stream_logits[b, t, j - 1], x[b, t + 1 + j])
                                for b in range(2) for t in range(10 - j)]).mean()
        torch.testing.assert_close(out.stream_losses[j - 1], expected)
        on_rows = torch.stack([torch.nn.functional.cross_entropy(full.stream_logits[b, t, j - 1], x[b, t + 1 + j])
                               for b in range(2) for t in (0, 3, 7) if t + j < 10]).mean()
        torch.testing.assert_close(sub.stream_losses[j - 1], on_rows)
    torch.testing.assert_close(sub.main_loss, out.main_loss)  # the main loss always covers every position


@pytest.mark.parametrize("gamma,k,cap,prune", [(1, 1, None, None), (3, 1, None, None), (4, 2, None, None),
                                               (4, 3, 12, None), (2, 2, None, 0.2), (4, 2, 10, 0.1)])
def test_medusa_is_lossless(gamma, k, cap, prune, _one_thread):
    from generate import generate_speculative
    model = random_medusa(seed=4)
    accepted = 0
    for i, prompt in enumerate(random_prompts(50, seed=30 + gamma + k)):
        m = budgets(prompt, i)[3 + i % 2]
        eos = eos_settings(model, prompt, m)[i % 2] if i % 5 == 0 else None
        ar = generate_autoregressive(model, prompt, m, eos_id=eos)
        r = generate_speculative(model, prompt, m, gamma=gamma, k=k, tree_cap=cap, prune_threshold=prune, eos_id=eos)
        assert r.tokens == ar.tokens
        assert r.forward_calls == len(r.step_tokens) and sum(r.step_tokens, []) == r.tokens
        accepted += sum(r.depth_accepted)
    assert accepted > 0  # the heads do draft right sometimes: the loop is exercised, not only the root


def test_medusa_errors():
    from generate import generate_speculative
    model = random_medusa(seed=4, n_heads=2)
    with pytest.raises(ValueError, match="n_medusa_heads"):
        generate_speculative(model, [1, 2], 5, gamma=3)
    with pytest.raises(ValueError, match="n_medusa_heads"):
        GPTConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=16, n_streams=2, n_msa_layers=1, n_medusa_heads=2)
