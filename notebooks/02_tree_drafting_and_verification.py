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
# # 02 · Tree drafting, verification and cache compaction
#
# One decode step of Speculative Streaming is **one forward pass** that
#
# 1. *verifies* the tree of candidates drafted in the previous step, with the main stream (greedy: a child is
#    accepted iff its token is the main argmax at its parent), and
# 2. *drafts* the next tree from the $\gamma$ streams of the last accepted node: depth $j$ holds the top-$k$ tokens
#    of stream $j$, each a child of every depth-$(j-1)$ node ($1 + k + \dots + k^\gamma$ nodes).
#
# We train a small toy model right here (about half a minute), then trace real decode steps with `trace=True`.

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
# ## A small toy model, trained in the notebook
#
# The toy language (see `train_toy.py`) alternates free choices (unpredictable) with fixed phrases (fully
# determined), so streams can be right only part of the time. `train_pipeline` runs the three stages: pretraining,
# Speculative Streaming fine-tuning (LoRA + stream embeddings, Eq. 5) and the pruning adapter. Settings are much
# smaller than `make demo`'s, just enough for drafts to get accepted.

# %%
import time
from train_toy import NOTEBOOK, train_pipeline

start = time.time()
model, data, histories = train_pipeline(NOTEBOOK, quiet=True)  # in memory: no checkpoint files
print(f"trained in {time.time() - start:.0f} s; vocabulary {len(data.words)} words; gamma = {model.config.n_streams}")
print("top-1 accuracy of streams 1..γ on the last batch:",
      " ".join(f"{a:.2f}" for a in histories["streams"]["stream_acc"][-1]))
print("a training story:", data.decode(data.stories[0]))

# %% [markdown]
# **Predict, then run.** This model has $\gamma = 3$ streams and we decode with $k = 2$. How many nodes does a full
# draft tree have, and how many tokens can one decode call commit at most? At least?

# %%
from tree import draft_tree

example = draft_tree(root=0, topk_tokens=torch.tensor([[1, 2], [3, 4], [5, 6]]), topk_probs=torch.full((3, 2), 0.5))
print(f"{len(example)} nodes; depths {example.depths.tolist()}")
print(example)

# %% [markdown]
# **Answer.** $1 + 2 + 4 + 8 = 15$ nodes (the root, then $k^j$ nodes at depth $j$: every depth-$j$ candidate hangs
# under *every* depth-$(j-1)$ node). A call commits at most $\gamma + 1 = 4$ tokens (one accepted node per depth,
# plus the new root from the main stream) and at least 1 (the new root, even when every draft is rejected). So at
# most 4 of the 15 nodes are ever used: the tree buys a better chance, not a longer path.

# %% [markdown]
# ## Decoding with $k = 2$, tracing every step
#
# `step_tokens[0]` is the first root, produced by the prefill; every later entry is what one forward call
# committed: the accepted drafts plus the new root ("bonus") token, so it always holds at least one token.

# %%
from generate import generate_autoregressive, generate_speculative

prompt = data.prompts(1)[0]
result = generate_speculative(model, prompt, 40, k=2, eos_id=data.eos_id, trace=True)
print("prompt:", data.decode(prompt))
print(f"call  0 (prefill): {data.decode(result.step_tokens[0])}")
for i, step in enumerate(result.trace, start=1):
    print(f"call {i:2d}: cache {step.cache_len:2d}, tree {len(step.tree):2d} nodes, "
          f"accepted depth {len(step.path) - 1} -> commits {len(step.committed)}: {data.decode(step.committed)}")
print(f"\n{len(result.tokens)} tokens in {result.forward_calls} forward calls (prefill included); "
      f"{result.tokens_per_call:.2f} tokens per decode call (root/bonus token included)")


# %% [markdown]
# ## One step, drawn
#
# We pick the step that accepted the longest path. Each node shows its index and its token; green nodes form the
# accepted path, grey nodes were rejected (or hang below a rejected node). Under each node: the main stream's argmax
# there, the model's own next token after that node, which is what its children are checked against. The gold box
# is the **bonus token**: the argmax at the last accepted node. It is not a node of the tree, but the call commits
# it too, so every call commits at least one token.

# %%
from drawing import GREEN, GREY, RED, draw_tree  # notebooks/drawing.py: shared by notebooks 02 and 04

i_step = max(range(len(result.trace) - 1), key=lambda i: len(result.trace[i].path))  # a call followed by another
step = result.trace[i_step]
last = step.path[-1]
bonus = step.main_argmax[last]
colors = [GREEN if i in step.path else GREY for i in range(len(step.tree))]
notes = ["argmax: " + data.words[a] for a in step.main_argmax]
labels = [f"{i}: {data.words[t]}" for i, t in enumerate(step.tree.tokens.tolist())]
fig, ax = plt.subplots(figsize=(9, 5.5))
draw_tree(ax, step.tree, labels, colors, f"decode call {i_step + 1}: {len(step.tree)} nodes (k=2, γ=3), "
          f"accepted depth {len(step.path) - 1}", notes, bonus=(last, "bonus: " + data.words[bonus]))
plt.show()
accepted = step.tree.tokens[step.path[1:]].tolist()
print("accepted path (node indices):", step.path, "->", data.decode(step.tree.tokens[step.path].tolist()))
print(f"node 0 ({data.words[int(step.tree.tokens[0])]!r}) was committed by the previous call; this call commits")
print(f"  the accepted drafts {data.decode(accepted)!r} (nodes {step.path[1:]})")
print(f"  + the bonus token {data.words[bonus]!r} (the main argmax at node {last}, the last accepted node)")
print(f"  = {data.decode(step.committed)!r}")

# %% [markdown]
# ## Where the next tree comes from
#
# The same forward pass also ran the $\gamma$ streams of the last accepted node. Stream $j$ there predicts the
# token $j + 1$ steps after it, that is $j$ steps after the bonus token. So the next call's tree has the bonus
# token as its root (node 0), and at depth $j$ the top-$k$ of stream $j$ of the last accepted node
# (`StepTrace.draft_topk`), every depth-$j$ candidate under every depth-$(j-1)$ node.
#
# **Predict, then run.** Which tokens will the two depth-1 nodes of the next tree carry?

# %%
nxt = result.trace[i_step + 1]
topk_tokens, topk_probs = nxt.draft_topk
print(f"call {i_step + 2} is drafted from node {last} of call {i_step + 1}:")
print(f"  root (node 0) = the bonus token {data.words[int(nxt.drafted.tokens[0])]!r}")
for j, (toks, probs) in enumerate(zip(topk_tokens.tolist(), topk_probs.tolist()), start=1):
    shown = ", ".join(f"{data.words[t]!r} ({p:.2f})" for t, p in zip(toks, probs))
    print(f"  stream {j} of node {last}: top-2 {shown} -> the depth-{j} nodes of the next tree")
assert int(nxt.drafted.tokens[0]) == bonus
for j, toks in enumerate(topk_tokens.tolist(), start=1):  # every depth-j node carries one of stream j's top-k
    assert set(nxt.drafted.tokens[nxt.drafted.depths == j].tolist()) == set(toks)
fig, ax = plt.subplots(figsize=(9, 5.5))
labels = [f"{i}: {data.words[t]}" for i, t in enumerate(nxt.drafted.tokens.tolist())]
colors = [GREEN if i in nxt.path else GREY for i in range(len(nxt.drafted))]
draw_tree(ax, nxt.drafted, labels, colors, f"decode call {i_step + 2}: drafted from node {last} of call "
          f"{i_step + 1}; accepted depth {len(nxt.path) - 1}")
plt.show()

# %% [markdown]
# **Answer.** The two most probable tokens of stream 1 at the last accepted node, printed above: the streams are
# the model's own guesses of the tokens after the bonus token. The next call verifies this tree with the main
# stream, and its streams draft the tree after it.

# %% [markdown]
# ## The tree attention mask
#
# The flattened tree (breadth first) goes through the model on top of the KV cache. Node $i$ sees the whole cache
# and its ancestors and itself (not its siblings or cousins); its position id is cache length + depth. So every
# root-to-leaf path is computed exactly as if it were a plain sequence (`tree_attention_mask`,
# `position_ids`).
#
# **Predict, then run.** With $L$ committed cache entries, what are the position ids of the tree's nodes? Which
# tree nodes does a depth-2 node see?

# %%
from matplotlib.colors import ListedColormap
from tree import position_ids, tree_attention_mask

L, n = step.cache_len, len(step.tree)
m = tree_attention_mask(step.tree, L)
assert torch.equal(m, step.mask)
image = m.int() * torch.cat([torch.ones(L), 2 * torch.ones(n)]).int()  # 0 hidden, 1 cache, 2 tree
node_labels = [f"{i}:{data.words[int(t)]}" for i, t in enumerate(step.tree.tokens)]
context = prompt + result.tokens  # the cache holds the main stream of the first L of these tokens
fig, ax = plt.subplots(figsize=(10, 4.5))
ax.imshow(image, cmap=ListedColormap(["white", "#9ecae1", "#fd8d3c"]), vmin=0, vmax=2, aspect="auto")
ax.set_xticks(range(L + n), [f"c{c}:{data.words[context[c]]}" for c in range(L)] + node_labels,
              rotation=90, fontsize=6.5)
ax.set_yticks(range(n), node_labels, fontsize=7)
ax.axvline(L - 0.5, color="k", lw=0.8)
ax.set_title(f"tree attention mask ({n} x {L}+{n}): blue = KV cache, orange = ancestors + self")
plt.show()
print("position ids:", position_ids(step.tree, L).tolist(), f"(L = {L})")

# %% [markdown]
# **Answer.** Position = $L$ + depth: $L$ for the root, $L+1$ for both depth-1 nodes, and so on. Nodes of the same
# depth are alternatives for the *same* slot of the sequence, so they share a position (giving node $i$ the
# position $L + i$ would shift every path after the first and change its logits). A depth-2 node sees the whole
# cache, the root, its depth-1 parent and itself: 3 tree nodes, its own root-to-node path.

# %% [markdown]
# ## Cache compaction
#
# The KV cache holds one row per committed token: that token's keys and values, for every layer. The tree forward
# appended one row per tree node after the $L$ committed ones, in node order: the same order as the columns of the
# mask above. Each accepted node's row was computed seeing exactly the cache and its own ancestors (the mask), that
# is, exactly what it would have seen had the accepted tokens been decoded one by one. So after verification the
# rows of the accepted path are kept, moved right after the committed rows in path order, and the rest is
# forgotten. The bonus token gets its row in the next call, where it is node 0.
#
# **Predict, then run.** Which cache rows does the accepted path keep, and where do they go?

# %%
L, n = step.cache_len, len(step.tree)
context = prompt + result.tokens  # the whole text: the first L tokens are the committed cache rows
rows = [data.words[t] for t in context[:L]] + [f"node {i}: {data.words[t]}" for i, t in
                                                enumerate(step.tree.tokens.tolist())]
kept = list(range(L)) + [L + i for i in step.path]  # committed rows, then the path's rows, in path order
print(f"before verification: {L} committed rows + {n} tree rows")
print("  last committed rows:", rows[L - 3:L], "| tree rows:", rows[L:L + 4], "...")
print(f"keep rows 0..{L - 1}, then rows {[L + i for i in step.path]} (= L + path, path {step.path})")
print(f"after compaction: {len(kept)} rows =", rows[L - 3:L], "+", [rows[r] for r in kept[L:]])
assert [r.split(": ")[-1] for r in (rows[r] for r in kept)] == [data.words[t] for t in context[:len(kept)]]
print("the same tokens, in the same order, as decoding them one by one:", data.decode(context[len(kept) - 4:len(kept)]))

# %% [markdown]
# **Answer.** The committed rows stay where they are; the rows of the path's nodes, `L + path`, move to rows
# $L, L+1, \dots$ in path order (the root first), and the other tree rows are overwritten by the next forward.
# The rows hold numbers, not words, of course: `tests/test_generate.py` checks that the compacted cache equals the
# cache of a plain prefill of the same tokens (`test_compacted_cache_equals_fresh_prefill`), and exercise 5 asks
# you to write the compaction.

# %% [markdown]
# ## Pruning (optional)
#
# Before the MSA layers, early-exit logits $\tilde z = \mathrm{lm\_head}(\mathrm{ln_f}(o(h)))$ at the input of
# block $N-N_s$ (with the small pruning adapter $o$) score every node; a node whose token has probability below a
# threshold at its parent is dropped with its whole subtree (the root never). Fewer rows go through the MSA layers
# and fewer stream rows are formed; the output does not change, since verification still uses the full model.

# %%
pruned = generate_speculative(model, prompt, 40, k=2, prune_threshold=0.1, eos_id=data.eos_id, trace=True)
print("nodes drafted per call :", pruned.tree_sizes)
print("nodes after pruning    :", pruned.pruned_tree_sizes)
i_p = max(range(len(pruned.trace)), key=lambda i: (len(pruned.trace[i].kept) < len(pruned.trace[i].drafted),
                                                   len(pruned.trace[i].path)))
st = pruned.trace[i_p]
kept_path = {st.kept[i] for i in st.path}  # path indices refer to the pruned tree
colors = [GREEN if i in kept_path else GREY if i in st.kept else RED for i in range(len(st.drafted))]
fig, ax = plt.subplots(figsize=(8, 5))
draw_tree(ax, st.drafted, [data.words[t] for t in st.drafted.tokens.tolist()], colors,
          f"decode call {i_p + 1}: {len(st.drafted)} drafted -> {len(st.kept)} kept (red = pruned, green = accepted)")
plt.show()
assert pruned.tokens == result.tokens
print("pruned decoding gives the same output as unpruned:", pruned.tokens == result.tokens)

# %% [markdown]
# **Forward calls with and without pruning.** Pruning removes rows from the MSA layers and never changes the
# output, but it can lose accepted tokens: when the early-exit head drops a node that the full model would have
# accepted, the call commits less and decoding needs more calls. Over ten prompts:

# %%
for name, threshold in [("no pruning", None), ("pruning 0.1", 0.1), ("pruning 0.3", 0.3)]:
    runs = [generate_speculative(model, p, 40, k=2, prune_threshold=threshold, eos_id=data.eos_id)
            for p in data.prompts(10)]
    calls = sum(r.forward_calls for r in runs)
    drafted, verified = sum(sum(r.tree_sizes) for r in runs), sum(sum(r.pruned_tree_sizes) for r in runs)
    tokens = sum(len(r.tokens) for r in runs)
    print(f"{name:12s}: {tokens} tokens in {calls} forward calls; {drafted} nodes drafted, {verified} through the "
          f"MSA layers; {tokens / calls:.2f} tokens per call")

# %% [markdown]
# The pruning adapter of this notebook had 30 training steps, so its early exits often disagree with the full
# model: pruning costs calls here, and saves most of the rows. Whether the trade pays depends on what a row costs
# (notebook 00): on a CPU, where rows cost, fewer rows per call can outweigh more calls; on a GPU, where a few more
# rows are nearly free, pruning rarely pays.

# %% [markdown]
# ## Lossless: the output is exactly greedy decoding
#
# Every committed token was either the main argmax (the root) or a draft equal to the main argmax at its parent,
# so Speculative Streaming reproduces plain greedy decoding of the same model — in fewer forward calls.

# %%
greedy = generate_autoregressive(model, prompt, 40, eos_id=data.eos_id)
assert result.tokens == greedy.tokens
print("output :", data.decode(result.tokens))
print(f"identical to greedy: {result.tokens == greedy.tokens}; forward calls {result.forward_calls} "
      f"(speculative) vs {greedy.forward_calls} (autoregressive)")
