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
# # 00 · Why speculative decoding pays, and when it does not
#
# Greedy decoding runs the model once per token: one forward pass over **one** new row (the last token) on top of
# the KV cache. Speculative decoding guesses several tokens ahead and checks all the guesses in **one** forward pass
# over several rows. If the guesses are often right, one call commits several tokens.
#
# That only pays if a forward over $n$ rows costs about what a forward over one row costs. It often does: for one
# row, the time goes into reading every weight from memory (each weight is used once) and into launching the work
# (Python, kernel launches); a few more rows reuse the same weights while they are loaded, almost for free. Once the
# rows are many or the model is large, the arithmetic itself dominates and the cost grows with $n$.
#
# This notebook measures that cost **on your machine**, then puts it together with the tokens committed per call to
# say when Speculative Streaming pays.

# %%
import sys; sys.path.insert(0, "..")  # cwd is notebooks/: the project's modules are one folder up
# %matplotlib inline
import time
import matplotlib.pyplot as plt
import torch
from model import GPT, GPTConfig, KVCache
torch.manual_seed(0)
torch.set_num_threads(1)  # one thread, as the project's CPU benchmarks run
torch.set_grad_enabled(False)
plt.rcParams.update({"figure.dpi": 90, "font.size": 9})

# %% [markdown]
# ## The cost of one forward pass against the number of rows
#
# Two random models (their weights do not matter for timing): the shape of the project's toy model (4 layers,
# width 128) and the shape of GPT-2 small (12 layers, width 768, a 50k-word vocabulary). Each forward puts $n$ new
# rows on top of a cache of 64 committed tokens, as a decode call does; we keep the fastest of a few rounds. (Timings
# differ from run to run and machine to machine: the committed outputs are those of the machine that ran it last.)
#
# **Predict, then run.** On this CPU, how much longer than one row does a forward over 16 rows take, for the toy
# model? For GPT-2 small?

# %%
def forward_times(model: GPT, rows: list[int], cache_len: int = 64, rounds: int = 7) -> list[float]:
    """Seconds of one forward of n new rows on top of a cache of cache_len committed entries, for each n in rows.
    The sizes take turns, round after round, and each keeps its fastest round: whatever else the machine is doing
    then hits every size alike."""
    cfg = model.config
    cache = KVCache(cfg, 1, cache_len + max(rows))
    cache.length = cache_len  # the committed entries' values do not change the time
    best = {n: float("inf") for n in rows}
    for r in range(rounds + 1):  # round 0 warms up
        for n in rows:
            idx, pos = torch.randint(0, cfg.vocab_size, (1, n)), torch.arange(cache_len, cache_len + n)
            mask = torch.ones(n, cache_len + n, dtype=torch.bool).tril(cache_len)  # n rows after the cache, causal
            start = time.perf_counter()
            model.forward_nodes(idx, pos, mask, cache)
            if r > 0:
                best[n] = min(best[n], time.perf_counter() - start)
    return [best[n] for n in rows]


shapes = {"toy (4 x 128)": GPTConfig(vocab_size=128, block_size=256, n_layer=4, n_head=4, n_embd=128),
          "GPT-2 small (12 x 768)": GPTConfig(vocab_size=50257, block_size=256, n_layer=12, n_head=12, n_embd=768)}
rows = [1, 2, 4, 8, 16, 32, 64]
cost = {}
for name, cfg in shapes.items():
    model = GPT(cfg).eval()
    cost[name] = forward_times(model, rows)
    print(f"{name:24s}", "  ".join(f"n={n}: {1000 * t:6.2f} ms" for n, t in zip(rows, cost[name])))
del model

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
for name, times in cost.items():
    ax.plot(rows, [t / times[0] for t in times], "o-", label=name)
ax.plot(rows, rows, ":", color="0.5", label="cost proportional to rows")
ax.set_xscale("log", base=2); ax.set_yscale("log", base=2)
ax.set_xticks(rows, [str(n) for n in rows])
ax.set_xlabel("rows in one forward pass (n)"); ax.set_ylabel("time / time of one row")
ax.set_title("one forward pass on this CPU, cache of 64 tokens, 1 thread"); ax.legend()
plt.show()
for name, times in cost.items():
    print(f"{name:24s} 16 rows cost {times[rows.index(16)] / times[0]:.1f}x one row")

# %% [markdown]
# **Answer.** It depends on your machine (the printed lines say by how much here), but the shape is typical. For
# the toy model the curve starts nearly flat: one row takes about as long as several, because the time goes into
# per-call overhead (Python, dispatching dozens of small operations), not arithmetic. For GPT-2 small one row reads
# half a gigabyte of weights for very little arithmetic; more rows reuse the weights while they are loaded, so the
# cost grows far more slowly than the rows, but on a CPU it does grow: the arithmetic is no longer negligible. A
# GPU has far more arithmetic per byte of memory, so there the curve stays flat much longer.

# %% [markdown]
# ## Putting it together: tokens per call against the cost of a call
#
# A speculative call over a tree of $n$ nodes costs about $t(n)$, and commits on average $\tau$ tokens (the
# accepted drafts plus the bonus token; the project's *CR* is the same ratio counted over whole outputs, prefill
# included). Greedy decoding commits one token per $t(1)$. So, ignoring the bookkeeping around the forward,
#
# $$\text{speedup} \approx \tau \cdot \frac{t(1)}{t(n)}.$$
#
# Bigger trees raise $\tau$ (more guesses, more chances) but also $t(n)$. The tokens per call below were measured
# on the toy task with trees capped at $n$ nodes (k = 3, the "Tree size" table of `results/toy/results.md`,
# command `python bench.py toy`); the costs are the ones you just measured for the toy shape.

# %%
tree_nodes = [2, 4, 8, 16, 32, 64]
tokens_per_call = [1.76, 2.69, 3.43, 3.61, 3.75, 3.97]  # results/toy/results.md, "Tree size", no pruning
speedup_measured = [0.82, 1.10, 1.16, 0.96, 0.67, 0.41]  # same table, tree pass, on the machine that wrote it
toy = dict(zip(rows, cost["toy (4 x 128)"]))
predicted = [tau * toy[1] / toy[n] for n, tau in zip(tree_nodes, tokens_per_call)]
print(" nodes  tokens/call  t(n)/t(1) here  predicted speedup here  measured there (results/toy)")
for n, tau, p, m in zip(tree_nodes, tokens_per_call, predicted, speedup_measured):
    print(f"{n:6d}  {tau:11.2f}  {toy[n] / toy[1]:14.2f}  {p:22.2f}  {m:27.2f}")

fig, ax = plt.subplots(figsize=(6, 3.4))
ax.plot(tree_nodes, tokens_per_call, "o-", label="tokens per call τ (the best speedup if rows were free)")
ax.plot(tree_nodes, predicted, "s-", label="τ · t(1)/t(n) with the costs measured here")
ax.plot(tree_nodes, speedup_measured, "^--", label="measured speedup, results/toy/results.md")
ax.axhline(1, color="0.5", lw=0.8)
ax.set_xscale("log", base=2); ax.set_xticks(tree_nodes, [str(n) for n in tree_nodes])
ax.set_xlabel("tree nodes per call (n)"); ax.set_ylabel("x greedy"); ax.legend(fontsize=7)
ax.set_title("toy model on a CPU: bigger trees accept more, but each row costs")
plt.show()

# %% [markdown]
# The prediction is an upper bound, and a loose one on a CPU: a real call also drafts, builds and masks the tree
# and compacts the cache, and above all the tree pass carries $\gamma$ stream rows per node through the top blocks
# (the paper's single pass), so it costs far more than $t(n)$. `results/toy/profile.md` times each part: on the
# machine that wrote it, a call with a 7-node tree cost 2.6 greedy steps with the tree pass and 1.9 with the
# accepted-node pass (`stream_pass="accepted"`: the streams of the accepted node only, after verification). The
# measured speedups are lower, and they fall for big trees exactly where the cost of rows catches up with the extra
# tokens.
#
# ## On a GPU the rows are (nearly) free
#
# Speedup $= CR \times t(1) / t_{call}$, so $CR / \text{speedup}$ is what one speculative call costs, counted in
# greedy steps. Here it is for trees of 8 and 16 nodes, from the project's CPU runs and from its runs on a GPU, each
# number copied from the file named next to it (each file holds its command).

# %%
runs = [  # (file, machine, setting, tree nodes, CR, speedup with the tree pass)
    ("results/toy/results.md", "CPU", "toy, k=3, cap 8", 8, 3.18, 1.16),
    ("results/toy/results.md", "CPU", "toy, k=3, cap 16", 16, 3.33, 0.96),
    ("results/toy/results.md", "CPU", "toy, k=3, cap 64", 64, 3.62, 0.41),
    ("results/toy/gpu_h200_speed.md", "H200", "toy, γ=4, k=2, cap 8", 8, 2.80, 1.11),
    ("results/toy/gpu_h200_speed.md", "H200", "toy, γ=4, k=2, cap 16", 16, 2.99, 1.21),
    ("results/toy/gpu_h200_speed.md", "H200", "toy, γ=6, k=1 (a chain)", 7, 2.70, 1.48),
    ("results/sql/gpu_h200.md", "H200", "SQL task, γ=4, k=1", 5, 4.50, 2.39),
    ("results/e2e/gpu_h200.md", "H200", "E2E task, γ=4, k=3, cap 16", 16, 2.36, 1.04),
]
print(f"{'machine':8s} {'setting':28s} {'nodes':>5s} {'CR':>5s} {'speedup':>8s} {'call cost (greedy steps)':>25s}  file")
for file, machine, setting, nodes, cr, speedup in runs:
    print(f"{machine:8s} {setting:28s} {nodes:5d} {cr:5.2f} {speedup:7.2f}x {cr / speedup:25.2f}  {file}")

# %% [markdown]
# On the CPU, doubling the toy tree from 8 to 16 nodes makes a call cost 3.5 greedy steps instead of 2.7, and a
# 64-node tree costs almost 9: the rows are real work. On the H200 the 8- and 16-node trees cost the same 2.5
# steps: the extra rows are free. These models are still far too small to keep a GPU busy, so every step is bound
# by kernel launches, and a speculative call, which launches more kernels than a one-token step (streams, tree,
# verification, compaction), costs about two steps whatever its size: it gains only what its CR exceeds that.
# The SQL task, with long, predictable outputs (CR 4.5), gains the most; E2E, with CR 2.4, barely breaks even.
#
# ## When it pays, and when it does not
#
# * It pays when one forward over a few rows costs about one row (small batches, memory- or launch-bound
#   hardware: a large model on a GPU, the usual serving case) **and** the drafts are often right (predictable
#   text: code, SQL, templates), so that $\tau \cdot t(1)/t(n)$ is well above 1.
# * It does not pay when the rows cost (a CPU with a large model, or large batches on any hardware: the extra rows
#   are then real arithmetic), when the drafts are rarely accepted ($\tau \approx 1$: every call pays for a tree
#   and commits the bonus token alone), or when the bookkeeping around the forward (drafting, masks, compaction)
#   is large next to the forward itself (tiny models).
# * Pruning (notebook 02) and capped trees trade $\tau$ for fewer rows: worth it exactly when rows cost.
#
# Notebook 01 now shows how a single model drafts for itself (multi-stream attention), and notebook 02 how one
# forward pass verifies a whole tree.
