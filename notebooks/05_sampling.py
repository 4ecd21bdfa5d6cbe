# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Lossless speculative *sampling* on the tree
#
# Greedy Speculative Streaming accepts a drafted child iff it is the main stream's argmax. With temperature
# $T > 0$ (and top-$k$ / top-$p$) there is no argmax to match: the output must instead have **exactly the
# distribution** of plain sampling from the model. This project's rule (docs/CONVENTIONS.md; SpecInfer, Recursive
# Speculative Decoding):
#
# * **drafting**: the depth-$j$ children are $k$ draws *without replacement* from stream $j$'s distribution $q$
#   (after the same temperature / top-$k$ / top-$p$ transform as the target);
# * **verification** (recursive rejection sampling) at a node with target distribution $p$: try its children in
#   draw order; accept child $x$ with probability $\min(1, p(x)/q(x))$, where $q$ is the distribution that
#   child was drawn from (the stream's $q$ with the earlier siblings removed, renormalised); on rejection
#   $p \leftarrow \mathrm{norm}(\max(p - q, 0))$; if every child is rejected, sample from what is left of $p$.
#
# This notebook draws the rule at one node, checks the output distribution against the exact one (a picture of
# the test in `tests/test_sampling.py`), and measures acceptance against temperature on a small trained model.

# %%
import sys; sys.path.insert(0, "..")  # cwd is notebooks/: the project's modules are one folder up
import warnings; warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets
# %matplotlib inline
import matplotlib.pyplot as plt
import torch
torch.manual_seed(0)
torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and stable on a shared CPU
plt.rcParams.update({"figure.dpi": 90, "font.size": 9})

# %% [markdown]
# ## The rule at one node
#
# A target $p$ and a draft $q$ over 6 tokens, two siblings drawn from $q$ without replacement. The second
# sibling was drawn from $q$ *without the first*: that is the $q$ its acceptance test must use. After the
# first sibling is rejected, the target left to sample is the residual $\mathrm{norm}(\max(p - q_1, 0))$.

# %%
from tree import draw_without_replacement, residual_probs, sampling_probs, sibling_draft_probs

g = torch.Generator().manual_seed(3)
p = sampling_probs(torch.tensor([2.0, 1.5, 0.2, 0.0, -0.5, -1.0]), temperature=1.0)
q = sampling_probs(torch.tensor([0.3, 2.2, 1.6, -0.4, 0.1, -1.5]), temperature=1.0)
drawn = draw_without_replacement(q[None], 2, g)[0]
q1, q2 = sibling_draft_probs(q, drawn)
print("siblings drawn (in order):", drawn.tolist())

fig, axes = plt.subplots(1, 4, figsize=(12, 2.6), sharey=True)
tokens = range(len(p))
for ax, (title, dist, color) in zip(axes, [("target p", p, "C0"), (f"q: sibling 1 = {int(drawn[0])}", q1, "C1"),
                                         (f"q without {int(drawn[0])}: sibling 2 = {int(drawn[1])}", q2, "C1"),
                                         (f"residual after rejecting {int(drawn[0])}", residual_probs(p, q1), "C2")]):
    ax.bar(tokens, dist, color=color)
    ax.set_title(title, fontsize=8), ax.set_xticks(list(tokens))
x = int(drawn[0])
print(f"sibling 1 = {x}: accepted with probability min(1, p/q) = {min(1.0, float(p[x] / q1[x])):.3f}")
fig.tight_layout()

# %% [markdown]
# Why it is exact (the proof sketch in `tree.verify_sampled`): with one candidate $x \sim q$,
# $P(x = y \text{ accepted}) = q(y)\min(1, p(y)/q(y)) = \min(p(y), q(y))$ and
# $P(\text{rejected}) = \sum \max(p - q, 0)$, so if whatever happens after a rejection yields a token from
# $\mathrm{norm}(\max(p - q, 0))$, the total is $\min(p, q) + \max(p - q, 0) = p$. The next sibling, given what was
# drawn and rejected before, is distributed as $q$ without the earlier draws, which is the $q$ it is tested
# with; by induction from the last sibling, every stage returns its current $p$.
#
# Check it at this one node, empirically: many independent draws of the two siblings, one verification each.

# %%
from tree import draft_tree_sampled, verify_sampled

n = 10_000
counts = torch.zeros(len(p))
for _ in range(n):
    tree, drawn, _ = draft_tree_sampled(0, q[None], 2, g)  # root + 2 sampled children (depth 1)
    targets = torch.stack([p] + [torch.zeros_like(p)] * (len(tree) - 1))  # p at the root; children unused
    path, token = verify_sampled(tree, targets, q[None], drawn, g)
    counts[tree.tokens[path[1]] if len(path) > 1 else token] += 1
print("target p :", " ".join(f"{v:.3f}" for v in p))
print("empirical:", " ".join(f"{v:.3f}" for v in counts / n), f"({n} draws)")

# %% [markdown]
# ## The distribution test, drawn
#
# A tiny random model (vocabulary 8, $\gamma = 2$ streams, random weights) has an exact distribution of its
# first three sampled tokens that we can enumerate (512 cells). We sample them with `generate_speculative`
# ($k = 2$, a depth-2 tree verified in one call, temperature 0.8, top-$k$ 6, top-$p$ 0.95) under the lossless rule
# and under the two **lossy** rules: the later paper's per-path rule and Medusa's typical acceptance.
# `distribution_test` (benchmarks/sampling.py) gives the chi-square p-value and the total-variation distance with its
# sampling bound (the test suite's main setting uses 20,000 samples; here fewer, to stay quick).

# %%
import math
from benchmarks.sampling import distribution_test, first_tokens_distribution
from generate import generate_speculative
from model import GPT, GPTConfig

torch.manual_seed(3)
tiny = GPT(GPTConfig(vocab_size=8, block_size=16, n_layer=2, n_head=2, n_embd=16, n_streams=2, n_msa_layers=1))
with torch.no_grad():  # non-trivial random weights (the default init makes every distribution nearly uniform)
    for name, w in tiny.named_parameters():
        w.copy_(torch.randn_like(w) / math.sqrt(w.shape[-1]) if w.dim() == 2 else 0.5 * torch.randn_like(w))
tiny = tiny.double().eval()

prompt, T, top_k, top_p, n = [1, 2], 0.8, 6, 0.95, 1000
exact = first_tokens_distribution(tiny, prompt, T, top_k, top_p)
tests = {}
for rule in ("recursive", "per_path_lossy", "typical_lossy"):
    g = torch.Generator().manual_seed(0)
    samples = [tuple(generate_speculative(tiny, prompt, 4, gamma=2, k=2, temperature=T, top_k=top_k, top_p=top_p,
                                          generator=g, acceptance=rule).tokens[:3]) for _ in range(n)]
    tests[rule] = distribution_test(samples, exact)
    t = tests[rule]
    print(f"{rule:>15}: chi-square p = {t['p_value']:.3g}, TV = {t['tv']:.3f} (sampling bound {t['tv_bound']:.3f})")

# the joint has 512 cells, too many to see by eye with 1000 samples: draw the exact marginals of x2 and x3 (the
# tokens the tree decides) against each rule's frequencies; the chi-square test above is on the full joint
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)
for ax, position in zip(axes, (1, 2)):
    exact_marginal = exact.sum(dim=[d for d in range(3) if d != position])
    ax.bar(range(8), exact_marginal, color="lightgray", label="exact (enumerated)")
    for (rule, t), marker in zip(tests.items(), ("o", "x", "^")):
        freq = t["frequencies"].view(8, 8, 8).sum(dim=[d for d in range(3) if d != position])
        ax.plot(range(8), freq, marker, ls="none", ms=7, label=f"{rule}: joint TV {t['tv']:.3f}")
    ax.set_xlabel(f"token x{position + 1}"), ax.set_xticks(range(8))
axes[0].set_ylabel("probability / frequency"), axes[1].legend(fontsize=8)
fig.suptitle(f"first 3 sampled tokens, {n} samples per rule: marginals of x2 and x3", fontsize=9)
fig.tight_layout()

# %% [markdown]
# ## Acceptance against temperature, on a small trained model
#
# A toy model trained right here (smaller than notebook 02's, about 20 s; the sweep does not prune). `sampling_sweep`
# (benchmarks/sampling.py) decodes the same prompts at $T = 0$ (greedy), 0.5, 0.7 and 1.0 with the recursive rule,
# and with the two lossy rules for comparison. Tokens per call count the root/bonus token; acceptance at depth $j$ is
# P(depth $j$ accepted | depth $j-1$ accepted), nodes removed by the cap counting as rejections.

# %%
import dataclasses, time
from benchmarks.sampling import sampling_sweep
from train_toy import NOTEBOOK, train_pipeline

start = time.time()
# notebook 02's small model with fewer steps (in memory: no checkpoint files)
model, data, _ = train_pipeline(dataclasses.replace(NOTEBOOK, pretrain_steps=120, ss_steps=120, prune_steps=10),
                                quiet=True)
model.eval()
print(f"trained in {time.time() - start:.0f} s")
rows = sampling_sweep(model, data.prompts(8), 40, data.eos_id, gamma=3, k=2, tree_cap=8, seed=0, progress=False)
for r in rows:
    print(f"T={r['temperature']:<4} {r['acceptance']:<15} tokens/call {r['tokens_per_call']:.2f}  acceptance by depth "
          + " ".join("-" if a is None else f"{a:.2f}" for a in r["depth_acceptance"]))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
for rule, style in (("recursive", "o-"), ("per_path_lossy", "s--"), ("typical_lossy", "^:")):
    rs = [r for r in rows if r["acceptance"] in (rule, "greedy")]
    ax1.plot([r["temperature"] for r in rs], [r["tokens_per_call"] for r in rs], style,
             label=rule + ("" if rule == "recursive" else " (LOSSY)"))
ax1.set_xlabel("temperature"), ax1.set_ylabel("tokens per call"), ax1.legend(fontsize=8)
for r in (r for r in rows if r["acceptance"] in ("recursive", "greedy")):
    acceptance = [float("nan") if a is None else a for a in r["depth_acceptance"]]
    ax2.plot(range(1, 4), acceptance, "o-", label=f"T = {r['temperature']}")
ax2.set_xlabel("depth j"), ax2.set_ylabel("acceptance at depth j"), ax2.set_ylim(0, 1.02), ax2.legend(fontsize=8)
ax2.set_title("recursive rule (lossless)", fontsize=9)
fig.tight_layout()

# %% [markdown]
# What to take away:
#
# * the recursive rule's samples follow the exact distribution (chi-square passes, TV within its sampling
#   bound); the lossy rules' do not: per-path acceptance is biased towards the drafted tokens (several siblings
#   each get an independent chance), typical acceptance towards whatever clears its probability threshold;
#   their tokens per call are not comparable with the lossless rule's, since they decode another distribution;
# * on this small model lossless sampling accepts a little less than greedy hard matching; on the larger toy
#   model of `train_toy.py` it does not (README, "Sampling"), probably because many of its choices are uniform and
#   min(1, p/q) is close to 1 when p and q are both near uniform.
