"""Speculative *sampling* is lossless (docs/CONVENTIONS.md, tree.verify_sampled): the tokens it outputs have exactly
the distribution of plain sampling from the same model, with the same temperature / top-k / top-p.

How it is tested. The exact joint distribution of three consecutive tokens is computed by enumeration
(vocabulary 8: 512 cells) and compared with the frequencies of many samples by a chi-square test (cells with
an expected count < 5 pooled) at a fixed seed, and by the total-variation distance against its sampling bound
(Jensen: E TV <= 1/2 sum sqrt(p(1-p)/n), plus McDiarmid's deviation sqrt(ln(1/δ)/2n) at δ = 1e-3).
  - one tree step, with exact target / draft tables (fast: 20,000 samples in the main setting, 4,000 in each
    other): depth-2 trees (γ = 2), k = 2-3 sampled siblings, several temperatures, top-k and top-p, a capped
    and a pruned tree;
  - end to end, generate_speculative on a tiny random model against the model's own enumerated distribution,
    with a full tree and with a capped and pruned one (1,000 samples each: a decode call costs milliseconds).
Power: the same test rejects two deliberately wrong rules: resampling from p instead of the residual, and not
updating q between siblings drawn without replacement. (Siblings drawn *with* replacement and q not updated
would be lossless again, SpecInfer's original rule; it is the mix that is wrong.) The LOSSY rules of the
paper's later version and of Medusa are measured too: the test shows how far they are from the target.
"""
import pytest
import torch

import tree as tree_module
from benchmarks.sampling import distribution_test, first_tokens_distribution
from generate import generate_autoregressive, generate_speculative
from helpers import random_model
from tree import draft_tree_sampled, prune_tree, sample, sampling_probs, subtree, verify_sampled

pytest.importorskip("scipy")  # benchmarks.sampling.distribution_test uses scipy.stats

V = 8
N_STEP = 20_000  # samples per tree-step setting
ALPHA = 1e-3     # the level of the chi-square test and of the TV bound (distribution_test); fixed seeds


# ------------------------------------------------------------------------------------------------------------
# one tree step with exact tables
# ------------------------------------------------------------------------------------------------------------

def tables(seed: int, temperature: float, top_k, top_p):
    """Target p(x1), p(x2|x1), p(x3|x1,x2) and the drafts q1, q2 (2, V), all through the sampling transform."""
    g = torch.Generator().manual_seed(seed)
    logits = lambda *shape: 2.0 * torch.randn(*shape, V, generator=g, dtype=torch.float64)
    probs = lambda lg: sampling_probs(lg, temperature, top_k, top_p)
    return probs(logits()), probs(logits(V)), probs(logits(V, V)), probs(logits(2))


def exact_joint(p1, p2, p3) -> torch.Tensor:
    return p1[:, None, None] * p2[:, :, None] * p3


def step_samples(setting: dict, n: int, seed: int = 0) -> tuple[list[tuple[int, int, int]], torch.Tensor]:
    """n samples of (x1, x2, x3): one sampled depth-2 tree after a fixed root, verified, and the sequence
    completed from the exact tables where the step committed fewer than 3 tokens."""
    p1, p2, p3, q = tables(setting.get("table_seed", 1), setting["T"], setting.get("top_k"), setting.get("top_p"))
    # one row per context: the root, (x1), (x1, x2); a node's row is 0, 1 + x1 or 1 + V + x1 V + x2
    rows = torch.cat([p1[None], p2, p3.reshape(V * V, V)])
    prune = setting.get("prune")  # early-exit stand-in: keep a child iff exits[its parent's row][token] >= prune
    exits = torch.rand(len(rows), V, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        drafted, drawn, _ = draft_tree_sampled(0, q, setting["k"], g, cap=setting.get("cap"))
        tokens, depths = drafted.tokens, drafted.depths
        parent_token = tokens[drafted.parents.clamp(min=0)]
        row = torch.where(depths == 0, 0, torch.where(depths == 1, 1 + tokens, 1 + V + parent_token * V + tokens))
        targets, t, allowed = rows[row], drafted, None
        if prune is not None:
            keep = prune_tree(drafted, exits[row], prune)
            t, targets, allowed = subtree(drafted, keep), targets[keep], exits[row[keep]] >= prune
        path, bonus = verify_sampled(t, targets, q, drawn, g, setting.get("acceptance", "recursive"), allowed)
        seq = t.tokens[path[1:]].tolist() + [bonus]
        if len(seq) < 2:
            seq.append(sample(p2[seq[0]], g))
        if len(seq) < 3:
            seq.append(sample(p3[seq[0], seq[1]], g))
        out.append(tuple(seq[:3]))
    return out, exact_joint(p1, p2, p3)


MAIN = dict(T=1.0, k=3, top_k=6, top_p=0.95)  # 20,000 samples; the power tests use it too (q's support: 5 > k)
SETTINGS = {
    "T=1.0 k=3 top-k 6 top-p 0.95": (MAIN, N_STEP),
    "T=0.7 k=2 top-k 6": (dict(T=0.7, k=2, top_k=6), N_STEP // 5),
    "T=0.5 k=2 top-p 0.9 capped at 5 nodes": (dict(T=0.5, k=2, top_p=0.9, cap=5), N_STEP // 5),
    "T=0.8 k=3 top-k 7 pruned": (dict(T=0.8, k=3, top_k=7, prune=0.3), N_STEP // 5),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_tree_step_is_lossless(name):
    setting, n = SETTINGS[name]
    r = distribution_test(*step_samples(setting, n))
    assert r["p_value"] > ALPHA, f"{name}: chi-square rejects the target distribution: {r}"
    assert r["tv"] < r["tv_bound"], f"{name}: TV distance beyond its sampling bound: {r}"


WRONG_RULES = {
    "resample from p instead of the residual": ("residual_probs", lambda p, q: p),
    "q not updated between siblings drawn without replacement": (
        "sibling_draft_probs", lambda q, drawn: q.expand(len(drawn), -1)),
}


@pytest.mark.parametrize("name", list(WRONG_RULES))
def test_distribution_test_rejects_wrong_rules(name, monkeypatch):
    """Power: the same test, on a seventh of the samples, rejects a sampler that is subtly wrong."""
    monkeypatch.setattr(tree_module, *WRONG_RULES[name])
    r = distribution_test(*step_samples(MAIN, N_STEP // 7))
    assert r["p_value"] < ALPHA and r["tv"] > r["tv_bound"], f"{name} passed the test: {r}"


@pytest.mark.parametrize("acceptance", ["per_path_lossy", "typical_lossy"])
def test_lossy_rules_are_measurably_lossy(acceptance):
    """The later paper's per-path rule and Medusa's typical acceptance do not sample the target."""
    r = distribution_test(*step_samples(dict(MAIN, acceptance=acceptance), N_STEP // 7))
    print(f"{acceptance}: TV from the target {r['tv']:.3f} (sampling bound {r['tv_bound']:.3f})")
    assert r["p_value"] < ALPHA and r["tv"] > r["tv_bound"]


# ------------------------------------------------------------------------------------------------------------
# end to end on a tiny model
# ------------------------------------------------------------------------------------------------------------

PROMPT = [1, 2]


@pytest.fixture(scope="module")
def tiny(_one_thread):
    return random_model(seed=3, vocab_size=V, n_layer=2, n_msa_layers=1, n_embd=16, n_streams=2, block_size=16)


@pytest.mark.parametrize("tree", [dict(), dict(tree_cap=5, prune_threshold=0.1)], ids=["full", "capped+pruned"])
def test_speculative_sampling_end_to_end(tiny, tree):
    """generate_speculative (γ = 2, k = 2: a depth-2 tree verified in one call; full, or capped and pruned) vs the
    model's own enumerated distribution, temperature, top-k and top-p on."""
    T, top_k, top_p, n = 0.8, 6, 0.95, 1000
    g = torch.Generator().manual_seed(0)
    samples = [tuple(generate_speculative(tiny, PROMPT, 4, gamma=2, k=2, temperature=T, top_k=top_k, top_p=top_p,
                                          generator=g, **tree).tokens[:3]) for _ in range(n)]
    r = distribution_test(samples, first_tokens_distribution(tiny, PROMPT, T, top_k, top_p))
    assert r["p_value"] > ALPHA and r["tv"] < r["tv_bound"], r


def test_small_temperature_is_greedy(tiny):
    greedy = generate_autoregressive(tiny, PROMPT, 12).tokens
    g = torch.Generator().manual_seed(0)
    for k, cap in ((1, None), (2, None), (2, 4)):
        out = generate_speculative(tiny, PROMPT, 12, gamma=2, k=k, tree_cap=cap, temperature=1e-4, generator=g)
        assert out.tokens == greedy
    assert generate_autoregressive(tiny, PROMPT, 12, temperature=1e-4, generator=g).tokens == greedy


def test_same_seed_same_output(tiny):
    run = lambda seed: generate_speculative(tiny, PROMPT, 12, gamma=2, k=2, temperature=1.0,
                                            generator=torch.Generator().manual_seed(seed))
    a, b, c = run(0), run(0), run(1)
    assert a.tokens == b.tokens and a.step_tokens == b.step_tokens
    assert [run(s).tokens for s in range(2, 6)] != [a.tokens] * 4, "different seeds never change the output"
    assert c.tokens != a.tokens or c.step_tokens != a.step_tokens


def test_sampling_probs_transform():
    logits = torch.tensor([3.0, 1.0, 2.0, 0.0, -1.0])
    p = sampling_probs(logits, 1.0, top_k=2)
    assert (p > 0).tolist() == [True, False, True, False, False]
    full = torch.softmax(logits.double(), 0)
    p = sampling_probs(logits, 1.0, top_p=float(full[0] + 0.01))  # needs the two most probable tokens
    assert (p > 0).tolist() == [True, False, True, False, False]
    assert torch.allclose(p[[0, 2]], full[[0, 2]] / full[[0, 2]].sum())
    assert torch.allclose(sampling_probs(logits, 0.5), torch.softmax(2 * logits.double(), 0))


def test_bad_sampling_options_are_refused(tiny):
    for bad in (dict(temperature=-1.0), dict(temperature=1.0, top_k=0), dict(temperature=1.0, top_p=0.0),
                dict(temperature=1.0, acceptance="typical")):
        with pytest.raises(ValueError):
            generate_speculative(tiny, PROMPT, 4, gamma=2, **bad)
    with pytest.raises(ValueError, match="temperature"):
        generate_autoregressive(tiny, PROMPT, 4, temperature=-0.5)


def test_distribution_test_needs_two_bins():
    """Too few samples for any cell to expect 5: no chi-square (nan, which fails `p_value > ALPHA`), not p = 0."""
    exact = torch.full((V, V, V), 1.0 / V ** 3, dtype=torch.float64)
    r = distribution_test([(0, 0, 0)] * 10, exact)
    assert r["p_value"] != r["p_value"] and not r["p_value"] > ALPHA
