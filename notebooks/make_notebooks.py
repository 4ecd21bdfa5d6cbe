"""Build the teaching notebooks from the cell lists below and execute them in place (committed WITH outputs).

    .venv/bin/python notebooks/make_notebooks.py          # all of them
    .venv/bin/python notebooks/make_notebooks.py 02       # only the notebooks whose name contains "02"

Each notebook is a list of ("md" | "code", source) cells. Execution uses nbclient with the python3 kernel of the
interpreter running this script (the project's .venv): see `VenvKernelManager`; cwd = this folder, so the first
code cell of every notebook does `sys.path.insert(0, "..")` to find the project's modules. Nothing is installed.
tests/test_notebooks.py runs the same cells again from a fresh copy and checks that they are what is committed.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

NB_DIR = Path(__file__).resolve().parent
TIMEOUT = 600  # seconds per cell

SETUP = r'''import sys; sys.path.insert(0, "..")  # cwd is notebooks/: the project's modules are one folder up
import warnings; warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets
%matplotlib inline
import matplotlib.pyplot as plt
import torch
torch.manual_seed(0)
torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and stable on a shared CPU
plt.rcParams.update({"figure.dpi": 90, "font.size": 9})'''

# ------------------------------------------------------------------------------------------------------------
# 01: multi-stream attention
# ------------------------------------------------------------------------------------------------------------
NB01 = [
    ("md", r'''# 01 · Multi-stream attention (MSA)

*Speculative Streaming* (Bhendawade et al., [arXiv 2402.11131](https://arxiv.org/abs/2402.11131)) turns one
GPT into its own draft model. In the top $N_s$ blocks, every position $t$ carries, besides the ordinary **main
stream** $M_t$, $\gamma$ **speculative streams** $S_{t,1..\gamma}$. Stream $j$ at $t$ learns to predict the token
$j$ steps further ahead than the main stream: main logits at $t$ predict $x_{t+1}$, stream $j$ predicts
$x_{t+1+j}$.

This notebook takes a tiny random model apart and checks, numerically, the three equations that define MSA:

| | paper | what it says |
|---|---|---|
| Eq. 1 | $M^{l+1}_t = \mathrm{Block}(M^l_t;\ \text{keys/values } M^l_{\le t})$ | the main stream never looks at a stream |
| Eq. 2 | $S^{l+1}_{t,j} = \mathrm{Block}(S^l_{t,j};\ \text{keys/values } M^l_{\le t} \oplus S^l_{t,1..j})$ | stream $j$ at $t$ sees main $\le t$ and streams $1..j$ of position $t$ |
| Eq. 3 | $S^{N-N_s}_{t,j} = M^{N-N_s}_t + P_j$ | streams start as the main state plus a learned embedding $P_j$ |

Streams use the very same weights (Q/K/V/O, MLP, LayerNorms) as the main stream; the only new parameters are
the $\gamma$ vectors $P_j$.'''),
    ("code", SETUP),
    ("md", r'''## A tiny model: $\gamma = 3$ streams on the top $N_s = 2$ of 3 blocks

We work in float64 and give the weights a larger random scale than the default init (std 0.02), so that every
effect shows up clearly and "unchanged" means equal to ~1e-15.'''),
    ("code", r'''import math
from torch.nn import functional as F
from model import GPT, GPTConfig

cfg = GPTConfig(vocab_size=32, block_size=16, n_layer=3, n_head=2, n_embd=16, n_streams=3, n_msa_layers=2)
model = GPT(cfg).double().eval()
with torch.no_grad():  # a non-trivial random model
    for name, p in model.named_parameters():
        if "ln_" in name and name.endswith("weight"):
            p.copy_(1 + 0.2 * torch.randn_like(p))
        elif p.dim() == 2 and name != "transformer.stream_emb":
            p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1]))
        else:  # biases and the stream embeddings P_j
            p.copy_(0.5 * torch.randn_like(p))
torch.set_grad_enabled(False)

G, C, nh = cfg.n_streams, cfg.n_embd, cfg.n_head
print(f"gamma = {G} streams, blocks 0..{cfg.n_layer - 1}, MSA blocks {cfg.first_msa_layer}..{cfg.n_layer - 1}")
print("stream embeddings P:", tuple(model.transformer.stream_emb.shape), "= the only new parameters")'''),
    ("md", r'''## Shapes, step by step, through the first MSA block

Main stream: `(B, T, C)`. Streams: `(B, T, γ, C)`, one extra axis. The main stream is ordinary causal attention.
For the stream queries the model does **not** build the big mask of the next section; it computes two score
blocks and one softmax over their concatenation:

* stream → main keys: `(B, nh, γ, T, L+T)` with the causal mask (L = cached entries; 0 in training),
* stream → the streams of the *same* position: `(B, nh, T, γ, γ)` with a lower-triangular mask (Eq. 2: $1..j$).

Below we redo the first MSA block by hand and compare it with the model's `Block`.'''),
    ("code", r'''B, T = 2, 5
idx = torch.randint(0, cfg.vocab_size, (B, T))
M = model.lower(model.embed(idx, torch.arange(T)))      # main stream at the input of block N - N_s
S = M.unsqueeze(2) + model.transformer.stream_emb      # Eq. 3 (next sections check it in the model)
print("main M    :", tuple(M.shape), "  (B, T, C)")
print("streams S :", tuple(S.shape), "(B, T, γ, C)")

blk = model.transformer.h[cfg.first_msa_layer]
heads = lambda t: t.unflatten(-1, (nh, -1)).movedim(-2, 1)  # (B, ..., C) -> (B, nh, ..., hs)
q, k, v = map(heads, blk.attn.c_attn(blk.ln_1(M)).split(C, dim=-1))      # shared weights ...
qs, ks, vs = map(heads, blk.attn.c_attn(blk.ln_1(S)).split(C, dim=-1))   # ... for main and streams
print("main q,k,v:", tuple(q.shape), "   (B, nh, T, hs)")
print("stream q,k,v:", tuple(qs.shape), "(B, nh, T, γ, hs)")

L, scale = 0, 1 / math.sqrt(C // nh)
causal = torch.ones(T, L + T, dtype=torch.bool).tril(diagonal=L)
att_main = (qs.transpose(2, 3) @ k.unsqueeze(2).transpose(-2, -1)) * scale   # stream j at t vs main keys
att_main = att_main.masked_fill(~causal, float("-inf"))
att_self = (qs @ ks.transpose(-2, -1)) * scale                               # stream j vs streams j' of t
att_self = att_self.masked_fill(~torch.ones(G, G, dtype=torch.bool).tril(), float("-inf"))
print("score block stream->main   :", tuple(att_main.shape), "(B, nh, γ, T, L+T)")
print("score block stream->streams:", tuple(att_self.shape), "(B, nh, T, γ, γ)")
att = F.softmax(torch.cat([att_main, att_self.transpose(2, 3)], dim=-1), dim=-1)  # ONE softmax
print(f"one softmax over {att.shape[-1]} keys = {L + T} main keys + {G} stream keys")
a_main, a_self = att.split([L + T, G], dim=-1)
y = (a_main @ v.unsqueeze(2)).transpose(2, 3) + a_self.transpose(2, 3) @ vs  # (B, nh, T, γ, hs)
S_att = S + blk.attn.c_proj(y.movedim(1, -2).flatten(-2))                     # (B, T, γ, C)
S_out = S_att + blk.mlp(blk.ln_2(S_att))
_, S_block = blk(M, S)
print("by hand vs model Block, max |diff| =", f"{(S_out - S_block).abs().max().item():.1e}")'''),
    ("md", r'''## The full MSA mask, built from the rules

Conceptually, MSA is ordinary masked attention over $(1+\gamma)T$ rows: the $T$ main rows, then the $T$ rows of
stream 1, stream 2, ... The rules of Eq. 1 and Eq. 2 give this boolean mask (row = query, column = key):

* main $t$ → main $\le t$ (Eq. 1; nothing else),
* stream $j$ at $t$ → main $\le t$, and streams $1..j$ of position $t$ only (Eq. 2).

The efficient computation above never materialises it; it is still the best test oracle.'''),
    ("code", r'''def full_msa_mask(T, G):
    """(1+G)T x (1+G)T bool mask; rows/cols: main 0..T-1, then stream 1 at 0..T-1, stream 2, ..."""
    row = lambda j, t: j * T + t  # j = 0 is the main stream
    mask = torch.zeros((1 + G) * T, (1 + G) * T, dtype=torch.bool)
    for t in range(T):
        for j in range(G + 1):
            mask[row(j, t), [row(0, u) for u in range(t + 1)]] = True  # main keys <= t
            for j2 in range(1, j + 1):
                mask[row(j, t), row(j2, t)] = True                    # streams 1..j of the same t
    return mask

mask = full_msa_mask(T, G)
labels = [f"M{t}" for t in range(T)] + [f"S{j}@{t}" for j in range(1, G + 1) for t in range(T)]
fig, ax = plt.subplots(figsize=(6, 6))
ax.imshow(mask, cmap="Blues", vmin=0, vmax=1.25)
ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
ax.set_yticks(range(len(labels)), labels, fontsize=7)
for b in range(1, G + 1):
    ax.axhline(b * T - 0.5, color="k", lw=0.7); ax.axvline(b * T - 0.5, color="k", lw=0.7)
ax.set_xlabel("key"); ax.set_ylabel("query")
ax.set_title(f"MSA mask, T={T}, γ={G}: {mask.shape[0]}x{mask.shape[1]} (blue = may attend)")
plt.show()
print(f"{int(mask.sum())} of {mask.numel()} entries are True")'''),
    ("md", r'''## Efficient two-block MSA == naive full-mask attention

The naive version lays out all $(1+\gamma)T$ rows, adds $P_j$ to the stream rows (Eq. 3), and runs each MSA
block as *plain* masked attention with the mask above (the model's `Block` without streams, given an explicit
mask). Same weights, completely different computation.'''),
    ("code", r'''def naive_msa_logits(model, idx):
    cfg, tr = model.config, model.transformer
    T, G = idx.size(1), cfg.n_streams
    M = model.lower(model.embed(idx, torch.arange(T)))
    rows = torch.cat([M] + [M + tr.stream_emb[j] for j in range(G)], dim=1)  # (B, (1+G)T, C)
    mask = full_msa_mask(T, G)
    for layer in range(cfg.first_msa_layer, cfg.n_layer):
        rows, _ = tr.h[layer](rows, None, mask)  # plain attention over all rows, explicit mask
    logits = model.lm_head(tr.ln_f(rows))
    return logits[:, :T], logits[:, T:].unflatten(1, (G, T)).transpose(1, 2)  # (B,T,V), (B,T,γ,V)

out = model(idx)  # the efficient path
main_naive, streams_naive = naive_msa_logits(model, idx)
print("main logits   :", tuple(out.logits.shape), " max |efficient - naive| =",
      f"{(out.logits - main_naive).abs().max().item():.1e}")
print("stream logits :", tuple(out.stream_logits.shape), "max |efficient - naive| =",
      f"{(out.stream_logits - streams_naive).abs().max().item():.1e}")
print(f"(logits are of size ~{out.logits.abs().max().item():.1f}: the two agree to float64 rounding)")
assert torch.allclose(out.logits, main_naive, atol=1e-10)
assert torch.allclose(out.stream_logits, streams_naive, atol=1e-10)'''),
    ("md", r'''## Eq. 1: the main stream never sees a stream

Two checks: (a) a plain GPT with the same base weights (no streams) gives the same main logits; (b) perturbing
the stream embeddings $P_j$ changes the stream logits a lot and the main logits not at all. This is what makes
Speculative Streaming lossless: the verifier *is* the original model.'''),
    ("code", r'''plain = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=3, n_head=2, n_embd=16)).double().eval()
plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "transformer.stream_emb"})
print("(a) plain GPT vs MSA model, main logits: max |diff| =",
      f"{(plain(idx).logits - out.logits).abs().max().item():.1e}", "(float64 rounding: other matmul shapes)")

P = model.transformer.stream_emb
P_saved = P.clone()
P.add_(5 * torch.randn_like(P))
out_perturbed = model(idx)
P.copy_(P_saved)
print("(b) P_j perturbed: main logits max |diff| =",
      f"{(out_perturbed.logits - out.logits).abs().max().item():.1e}",
      "   stream logits max |diff| =", f"{(out_perturbed.stream_logits - out.stream_logits).abs().max().item():.2f}")'''),
    ("md", r'''## Eq. 2: what stream $j$ at position $t$ may depend on

Causality in time: change the tokens after $t_0 = 2$; the stream outputs at positions $\le t_0$ must not move.
Order among streams: perturb one $P_{j'}$; stream $j$ must not move when $j' > j$ (it only sees streams $1..j$
of its own position).'''),
    ("code", r'''t0 = 2
idx_future = idx.clone()
idx_future[:, t0 + 1:] = (idx_future[:, t0 + 1:] + 7) % cfg.vocab_size  # change every token after t0
d_time = (model(idx_future).stream_logits - out.stream_logits).abs().amax(dim=(0, 3))  # (T, γ)

d_order = torch.zeros(G, G, dtype=torch.float64)  # [stream j, perturbed P_j']
for jp in range(G):
    P[jp] += 2 * torch.randn(C, dtype=torch.float64)
    d_order[:, jp] = (model(idx).stream_logits - out.stream_logits).abs().amax(dim=(0, 1, 3))
    P.copy_(P_saved)

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, d, title, xl, yl, xt, yt in [
        (axes[0], d_time.T, f"tokens after t0={t0} changed", "position t", "stream j",
         [str(t) for t in range(T)], [str(j) for j in range(1, G + 1)]),
        (axes[1], d_order, "one P_j' perturbed", "perturbed P_j'", "stream j",
         [str(j) for j in range(1, G + 1)], [str(j) for j in range(1, G + 1)])]:
    ax.imshow(d > 1e-12, cmap="Reds", vmin=0, vmax=2.5)
    for (r, c), val in zip(torch.cartesian_prod(torch.arange(d.shape[0]), torch.arange(d.shape[1])).tolist(),
                           d.flatten().tolist()):
        ax.text(c, r, f"{val:.1e}" if val < 1e-12 else f"{val:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(xt)), xt); ax.set_yticks(range(len(yt)), yt)
    ax.set_xlabel(xl); ax.set_ylabel(yl); ax.set_title(title + "\nmax |Δ stream logits|")
plt.tight_layout(); plt.show()
assert d_time[:t0 + 1].max() < 1e-12 and d_time[t0 + 1:].min() > 1e-3
assert all((d_order[j, jp] < 1e-12) == (jp > j) for j in range(G) for jp in range(G))
print("positions <= t0 unchanged; stream j unchanged by P_j' for every j' > j (upper triangle is 0)")'''),
    ("md", r'''## Eq. 3: stream initialisation at the first MSA block

At the input of block $N-N_s$ each stream starts as a copy of the main state plus its own embedding,
$S_{t,j} = M_t + P_j$ (the paper's $f_\eta$ is the identity here; the paper found it as good as a learned
projection). We catch the inputs of that block with a forward pre-hook and check it.'''),
    ("code", r'''captured = {}
hook = model.transformer.h[cfg.first_msa_layer].register_forward_pre_hook(
    lambda module, args: captured.update(M=args[0], S=args[1]))
model(idx)
hook.remove()
M_in, S_in = captured["M"], captured["S"]
print("block", cfg.first_msa_layer, "inputs: main", tuple(M_in.shape), " streams", tuple(S_in.shape))
print("max |S_{t,j} - (M_t + P_j)| =", f"{(S_in - (M_in.unsqueeze(2) + P)).abs().max().item():.1e}")
print("the lower block(s) never see streams:", cfg.first_msa_layer, "block(s) run the main stream only")'''),
    ("md", r'''## Summary

* MSA = one softmax per stream query over main keys $\le t$ plus same-position streams $1..j$; computed as two
  small score blocks, numerically identical to the full $(1+\gamma)T$ mask.
* Eq. 1 makes the main stream (the verifier) exactly the base model; Eq. 2 keeps streams causal in time and in
  stream order; Eq. 3 starts stream $j$ at $M_t + P_j$.
* Training (Eq. 5, notebook 03) adds $\sum_j \alpha_j\,\mathrm{CE}(\text{stream}_{t,j}, x_{t+1+j})$ to the
  next-token loss. Notebook 02 shows how a single forward pass uses the streams to draft and the main stream to
  verify.'''),
]

# ------------------------------------------------------------------------------------------------------------
# 02: tree drafting and verification
# ------------------------------------------------------------------------------------------------------------
NB02 = [
    ("md", r'''# 02 · Tree drafting, verification and cache compaction

One decode step of Speculative Streaming is **one forward pass** that

1. *verifies* the tree of candidates drafted in the previous step, with the main stream (greedy: a child is
   accepted iff its token is the main argmax at its parent), and
2. *drafts* the next tree from the $\gamma$ streams of the last accepted node: depth $j$ holds the top-$k$ tokens
   of stream $j$, each a child of every depth-$(j-1)$ node ($1 + k + \dots + k^\gamma$ nodes).

We train a small toy model right here (about half a minute), then trace real decode steps with `trace=True`.'''),
    ("code", SETUP),
    ("md", r'''## A small toy model, trained in the notebook

The toy language (see `train_toy.py`) alternates free choices (unpredictable) with fixed phrases (fully
determined), so streams can be right only part of the time. `train_pipeline` runs the three stages: pretraining,
Speculative Streaming fine-tuning (LoRA + stream embeddings, Eq. 5) and the pruning adapter. Settings are much
smaller than `make demo`'s, just enough for drafts to get accepted.'''),
    ("code", r'''import tempfile, time
from train_toy import parser, train_pipeline

start = time.time()
with tempfile.TemporaryDirectory() as tmp:
    args = parser().parse_args(["--out-dir", tmp, "--n-stories", "1000", "--n-embd", "64", "--gamma", "3",
                                "--batch-size", "16", "--pretrain-steps", "150", "--ss-steps", "150",
                                "--prune-steps", "30", "--threads", "1"])
    model, data, histories = train_pipeline(args, quiet=True)
print(f"trained in {time.time() - start:.0f} s; vocabulary {len(data.words)} words; gamma = {model.config.n_streams}")
print("top-1 accuracy of streams 1..γ on the last batch:",
      " ".join(f"{a:.2f}" for a in histories["streams"]["stream_acc"][-1]))
print("a training story:", data.decode(data.stories[0]))'''),
    ("md", r'''## Decoding with $k = 2$, tracing every step

`step_tokens[0]` is the first root, produced by the prefill; every later entry is what one forward call
committed: the accepted drafts plus the new root ("bonus") token, so it always holds at least one token.'''),
    ("code", r'''from generate import generate_autoregressive, generate_speculative

prompt = data.prompts(1)[0]
result = generate_speculative(model, prompt, 40, k=2, eos_id=data.eos_id, trace=True)
print("prompt:", data.decode(prompt))
print(f"call  0 (prefill): {data.decode(result.step_tokens[0])}")
for i, step in enumerate(result.trace, start=1):
    print(f"call {i:2d}: cache {step.cache_len:2d}, tree {len(step.tree):2d} nodes, "
          f"accepted depth {len(step.path) - 1} -> commits {len(step.committed)}: {data.decode(step.committed)}")
print(f"\n{len(result.tokens)} tokens in {result.forward_calls} forward calls (prefill included); "
      f"{result.tokens_per_call:.2f} tokens per decode call (root/bonus token included)")'''),
    ("md", r'''## One step, drawn

We pick the step that accepted the longest path. Each node shows its token; green nodes form the accepted path,
grey nodes were rejected (or hang below a rejected node). Under each node: the main stream's argmax there,
which is what its children are checked against.'''),
    ("code", r'''def layout(tree):
    """x = depth; y: leaves in depth-first order, a parent at the mean of its children."""
    children = {i: [] for i in range(len(tree))}
    for i, p in enumerate(tree.parents.tolist()):
        if p >= 0:
            children[p].append(i)
    ys, next_leaf = {}, [0]
    def place(i):
        if not children[i]:
            ys[i] = next_leaf[0]; next_leaf[0] += 1
        else:
            for c in children[i]:
                place(c)
            ys[i] = sum(ys[c] for c in children[i]) / len(children[i])
    place(0)
    return {i: (int(tree.depths[i]), -ys[i]) for i in range(len(tree))}

def draw_tree(ax, tree, colors, title, notes=None):
    pos = layout(tree)
    for i, p in enumerate(tree.parents.tolist()):
        if p >= 0:
            ax.plot([pos[p][0], pos[i][0]], [pos[p][1], pos[i][1]], color="0.6", lw=1, zorder=1)
    for i, (x, y) in pos.items():
        ax.text(x, y, data.words[int(tree.tokens[i])], ha="center", va="center", fontsize=8, zorder=2,
                bbox=dict(boxstyle="round", fc=colors[i], ec="0.3"))
        if notes:
            ax.text(x, y - 0.38, notes[i], ha="center", va="top", fontsize=6.5, color="0.25")
    ax.set_xticks(range(int(tree.depths.max()) + 1))
    ax.set_xlabel("depth (depth j drafted by stream j)"); ax.set_yticks([])
    ax.set_xlim(-0.5, int(tree.depths.max()) + 0.5); ax.set_ylim(min(y for _, y in pos.values()) - 0.8, 0.6)
    ax.set_title(title)

GREEN, GREY, RED = "#8fd18f", "#dddddd", "#f4a3a3"
i_step = max(range(len(result.trace)), key=lambda i: len(result.trace[i].path))
step = result.trace[i_step]
colors = [GREEN if i in step.path else GREY for i in range(len(step.tree))]
notes = ["argmax: " + data.words[a] for a in step.main_argmax]
fig, ax = plt.subplots(figsize=(8, 5.5))
draw_tree(ax, step.tree, colors, f"decode call {i_step + 1}: {len(step.tree)} nodes (k=2, γ=3), "
          f"accepted depth {len(step.path) - 1}", notes)
plt.show()
print("accepted path (node indices):", step.path, "->", data.decode(step.tree.tokens[step.path].tolist()))
print("committed by this call (accepted drafts + new root):", data.decode(step.committed))'''),
    ("md", r'''## The tree attention mask

The flattened tree (breadth first) goes through the model on top of the KV cache. Node $i$ sees the whole cache
and its ancestors and itself (not its siblings or cousins); its position id is cache length + depth. So every
root-to-leaf path is computed exactly as if it were a plain sequence (`tree_attention_mask`,
`position_ids`).'''),
    ("code", r'''from matplotlib.colors import ListedColormap
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
print("position ids:", position_ids(step.tree, L).tolist())'''),
    ("md", r'''## Cache compaction

The forward pass writes the main-stream keys/values of all $n$ tree nodes as *pending* entries after the $L$
committed ones. After verification only the accepted path is kept: `cache.commit(path)` moves those entries right
after the committed ones, in path order, and the rest is forgotten (stream keys/values never enter the cache).

We replay this step by hand with a `KVCache` and check that the compacted cache equals the cache of a plain
prefill of the same tokens.'''),
    ("code", r'''from generate import causal_mask
from model import KVCache

committed_before = sum(len(s) for s in result.step_tokens[:i_step + 1])  # tokens before this call (root incl.)
ctx = prompt + result.tokens[:committed_before]       # its last token is the root, node 0 of the tree
cache = KVCache(model.config, 1, 64)
no_streams = torch.empty(0, dtype=torch.long)
with torch.inference_mode():
    model.forward_nodes(torch.tensor([ctx[:-1]]), torch.arange(len(ctx) - 1), causal_mask(len(ctx) - 1, "cpu"),
                        cache, stream_rows=no_streams)
    cache.commit()
    print(f"cache before the call: {cache.length} committed entries (= L = {step.cache_len})")
    logits, _ = model.forward_nodes(step.tree.tokens[None], position_ids(step.tree, cache.length),
                                    tree_attention_mask(step.tree, cache.length), cache)
    print(f"after the tree forward: {cache.length} committed + {cache.pending} pending (one per tree node)")
    assert logits[0].argmax(-1).tolist() == step.main_argmax
    cache.commit(torch.tensor(step.path))
    print(f"commit(path={step.path}): kept pending entries {step.path} -> cache length {cache.length} "
          f"= {step.cache_len} + {len(step.path)}")

    accepted = step.tree.tokens[step.path[1:]].tolist()
    ref = KVCache(model.config, 1, 64)
    seq = ctx + accepted
    model.forward_nodes(torch.tensor([seq]), torch.arange(len(seq)), causal_mask(len(seq), "cpu"), ref,
                        stream_rows=no_streams)
    ref.commit()
diff = max((a[:, :, :ref.length] - b[:, :, :ref.length]).abs().max().item()
           for a, b in zip(cache.k + cache.v, ref.k + ref.v))
print(f"compacted cache vs plain prefill of {ref.length} tokens: max |diff| = {diff:.1e} (float32)")
assert cache.length == ref.length and diff < 1e-4'''),
    ("md", r'''## Pruning (optional)

Before the MSA layers, early-exit logits $\tilde z = \mathrm{lm\_head}(\mathrm{ln_f}(o(h)))$ at the input of
block $N-N_s$ (with the small pruning adapter $o$) score every node; a node whose token has probability below a
threshold at its parent is dropped with its whole subtree (the root never). Fewer rows go through the MSA layers
and fewer stream rows are formed; the output does not change, since verification still uses the full model.'''),
    ("code", r'''pruned = generate_speculative(model, prompt, 40, k=2, prune_threshold=0.1, eos_id=data.eos_id, trace=True)
print("nodes drafted per call :", pruned.tree_sizes)
print("nodes after pruning    :", pruned.pruned_tree_sizes)
i_p = max(range(len(pruned.trace)), key=lambda i: (len(pruned.trace[i].kept) < len(pruned.trace[i].drafted),
                                                   len(pruned.trace[i].path)))
st = pruned.trace[i_p]
kept_path = {st.kept[i] for i in st.path}  # path indices refer to the pruned tree
colors = [GREEN if i in kept_path else GREY if i in st.kept else RED for i in range(len(st.drafted))]
fig, ax = plt.subplots(figsize=(8, 5))
draw_tree(ax, st.drafted, colors, f"decode call {i_p + 1}: {len(st.drafted)} drafted -> {len(st.kept)} kept "
          "(red = pruned, green = accepted)")
plt.show()
assert pruned.tokens == result.tokens
print("pruned decoding gives the same output as unpruned:", pruned.tokens == result.tokens)'''),
    ("md", r'''## Lossless: the output is exactly greedy decoding

Every committed token was either the main argmax (the root) or a draft equal to the main argmax at its parent,
so Speculative Streaming reproduces plain greedy decoding of the same model — in fewer forward calls.'''),
    ("code", r'''greedy = generate_autoregressive(model, prompt, 40, eos_id=data.eos_id)
assert result.tokens == greedy.tokens
print("output :", data.decode(result.tokens))
print(f"identical to greedy: {result.tokens == greedy.tokens}; forward calls {result.forward_calls} "
      f"(speculative) vs {greedy.forward_calls} (autoregressive)")'''),
]

# ------------------------------------------------------------------------------------------------------------
# 03: training and acceptance vs gamma
# ------------------------------------------------------------------------------------------------------------
NB03 = [
    ("md", r'''# 03 · Training the streams, and acceptance vs $\gamma$

**These numbers come from a reduced run inside this notebook** (small model, few steps, 10 prompts), meant to
show the shapes of the curves in about a minute. `make demo` trains the full toy model and writes the real
study (more steps, more prompts, wall-time speedups, tree sizes, pruning) to `results/toy/`.

Training objective (paper Eq. 5), with $\alpha_0 = 1$, $\alpha_j = 0.1$:

$$\mathcal L = \alpha_0\,\mathrm{CE}(\text{main}_t, x_{t+1}) + \sum_{j=1}^{\gamma} \alpha_j\,\mathrm{CE}(\text{stream}_{t,j}, x_{t+1+j})$$

Stages (`train_toy.train_pipeline`): (a) pretrain a plain GPT, (b) Speculative Streaming fine-tuning: LoRA on
attention/MLP projections + the stream embeddings $P_j$, Eq. 5, (c) the pruning adapter.'''),
    ("code", SETUP),
    ("code", r'''import tempfile, time
from train_toy import parser, train_pipeline

start = time.time()
with tempfile.TemporaryDirectory() as tmp:
    args = parser().parse_args(["--out-dir", tmp, "--n-stories", "2000", "--n-embd", "64", "--gamma", "4",
                                "--batch-size", "16", "--pretrain-steps", "300", "--ss-steps", "300",
                                "--prune-steps", "30", "--threads", "1"])
    model, data, histories = train_pipeline(args, quiet=True)
GAMMA = model.config.n_streams
print(f"trained in {time.time() - start:.0f} s: n_embd {args.n_embd}, {args.n_layer} layers "
      f"(top {args.n_msa_layers} with MSA), gamma = {GAMMA}, LoRA rank {args.lora_rank}")
counts = model.parameter_counts()
print(f"parameters: base {counts['base']:,}, LoRA {counts['lora']:,}, stream embeddings {counts['stream_emb']:,} "
      f"(= γ·d), pruning adapter {counts['prune_adapter']:,}")'''),
    ("md", r'''## Per-stream loss and accuracy during fine-tuning

Logged every 10 steps on the training batch. Stream $j$ must predict $x_{t+1+j}$: the further ahead, the more
free choices of the toy language lie in between, so loss rises and accuracy falls with $j$. The main loss starts
where pretraining ended (LoRA starts as a no-op), may bump while the streams' large early losses move the shared
LoRA weights, and is pulled back by its weight $\alpha_0 = 1$.'''),
    ("code", r'''import numpy as np

h = histories["streams"]
steps = np.array(h["step"])
stream_loss, stream_acc = np.array(h["stream_loss"]), np.array(h["stream_acc"])  # (logged steps, γ)
fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
pre = histories["pretrain"]
axes[0].plot(pre["step"], pre["main_loss"], color="k", label="pretraining")
axes[0].plot(steps + pre["step"][-1], h["main_loss"], color="k", ls="--", label="fine-tuning (main)")
axes[0].set_title("main-stream loss"); axes[0].set_xlabel("step (pretraining, then fine-tuning)")
axes[0].legend()
for j in range(GAMMA):
    axes[1].plot(steps, stream_loss[:, j], label=f"stream {j + 1} (x[t+{j + 2}])")
    axes[2].plot(steps, stream_acc[:, j], label=f"stream {j + 1}")
axes[1].set_title("stream CE loss (Eq. 5 terms)"); axes[1].set_xlabel("fine-tuning step"); axes[1].legend()
axes[2].set_title("stream top-1 accuracy"); axes[2].set_xlabel("fine-tuning step"); axes[2].set_ylim(0, 1)
plt.tight_layout(); plt.show()
print("final stream loss    :", " ".join(f"{x:.2f}" for x in stream_loss[-1]))
print("final stream accuracy:", " ".join(f"{x:.2f}" for x in stream_acc[-1]))'''),
    ("md", r'''## Acceptance vs $\gamma'$

We decode 10 held-out prompts with $k = 1$ (a chain of $\gamma'$ drafts per step) using only the first
$\gamma' = 1..\gamma$ streams of the same model (stream $j$ never sees streams $> j$, so dropping the last ones is
exact), and count per depth how often a draft was attempted and accepted.

* **Acceptance rate at depth $j$** = accepted / attempted at depth $j$ = $P(\text{depth } j \text{ accepted} \mid
  \text{depth } j-1 \text{ accepted})$: a depth-$j$ draft is only checked when every draft above it was accepted.
  So it is *not* the stream's plain accuracy, and it need not fall with $j$.
* **Tokens per call** = committed tokens / decode calls, **the root (bonus) token included**: it is between 1 and
  $\gamma'+1$. CR (call reduction) = autoregressive calls / speculative calls, prefill included in both.'''),
    ("code", r'''from generate import generate_autoregressive, generate_speculative

prompts = data.prompts(10)
greedy = [generate_autoregressive(model, p, 60, eos_id=data.eos_id) for p in prompts]
study = {}
for g in range(1, GAMMA + 1):
    att, acc, committed, calls, ss_calls = np.zeros(g), np.zeros(g), 0, 0, 0
    for p, ar in zip(prompts, greedy):
        r = generate_speculative(model, p, 60, gamma=g, k=1, eos_id=data.eos_id)
        assert r.tokens == ar.tokens  # lossless for every γ'
        att += r.depth_attempted; acc += r.depth_accepted
        committed += sum(r.accepted_lengths); calls += len(r.accepted_lengths); ss_calls += r.forward_calls
    study[g] = dict(rate=acc / att, tokens_per_call=committed / calls,
                    cr=sum(a.forward_calls for a in greedy) / ss_calls)
    print(f"γ'={g}: acceptance at depth 1..{g} = " + " ".join(f"{x:.2f}" for x in study[g]["rate"])
          + f" | tokens per call {study[g]['tokens_per_call']:.2f} | CR {study[g]['cr']:.2f}")'''),
    ("code", r'''gs = list(study)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for j in range(1, GAMMA + 1):
    axes[0].plot(gs[j - 1:], [study[g]["rate"][j - 1] for g in gs[j - 1:]], "o-", label=f"depth {j}")
axes[0].set_xticks(gs); axes[0].set_ylim(0, 1); axes[0].set_xlabel("γ' (streams used)")
axes[0].set_title("acceptance rate at depth j\n(given depth j-1 accepted)"); axes[0].legend()
axes[1].plot(gs, [study[g]["tokens_per_call"] for g in gs], "o-", label="tokens per call (root included)")
axes[1].plot(gs, [study[g]["cr"] for g in gs], "s--", label="CR (calls AR / calls SS)")
axes[1].plot(gs, [g + 1 for g in gs], ":", color="0.5", label="upper bound γ'+1")
axes[1].set_xticks(gs); axes[1].set_xlabel("γ' (streams used)"); axes[1].set_ylim(0.8, GAMMA + 1.2)
axes[1].set_title("tokens per decode call vs γ'"); axes[1].legend()
plt.tight_layout(); plt.show()'''),
    ("md", r'''**Reading the plots.** Depth-$j$ acceptance changes only mildly with $\gamma'$: the same stream $j$ drafts it;
what shifts is where in a sentence the steps start (after a longer accepted run). Each extra stream adds one more
*conditional* chance to extend the accepted run, so tokens per call grows with $\gamma'$ with diminishing returns,
well below the $\gamma'+1$ bound. CR sits a little below tokens per call because it also counts the prefill and
the final, shorter steps. On a CPU the wall-time speedup is smaller still (a tree step costs more than a one-token
step): `make demo` measures it, on the fully trained model, with more prompts, larger $k$, capped trees and
pruning, and writes the full study to `results/toy/`.'''),
]

# ------------------------------------------------------------------------------------------------------------
# 04: a real task (E2E)
# ------------------------------------------------------------------------------------------------------------
NB04 = [
    ("md", r'''# 04 · A real task: E2E-NLG, step by step

E2E turns a restaurant's meaning representation (MR) into a sentence:
`name[The Eagle], eatType[coffee shop], food[French], ...` $\to$ *"The Eagle is a French coffee shop ..."*.
`train_task.py` trains a small GPT-2-tokenized model on it in stages (a base pretrained on the three tasks'
training text, then LoRA fine-tuning with $\gamma=4$ streams, then the pruning adapter; the same for the
baselines), and `bench.py task` measures every decoder side by side.

This notebook loads the models that `make train-tasks` wrote to `checkpoints/tasks/`. Without them (a fresh
clone) it trains a *tiny* model in a few seconds instead (`--quick`): its sentences are nonsense, but every
mechanism below is the same. Data comes from `../shared/data` (or `$SPECSTREAM_DATA`).'''),
    ("code", SETUP),
    ("code", r'''import os
import train_task
from data import EOS, CompactVocab, load_task, prompt_ids
from generate import generate_autoregressive, generate_speculative
from model import GPT

TASK_DIR = "../checkpoints/tasks"
if not os.path.exists(f"{TASK_DIR}/e2e_ss_pruned.pt"):
    print("no trained E2E models found: training a tiny --quick model (nonsense outputs, same mechanics)")
    TASK_DIR = "../checkpoints/tasks_quick"
    train_task.train_task(train_task.parse(["--task", "e2e", "--quick", "--method", "ss", "--out-dir", TASK_DIR]),
                          quiet=True)
model = GPT.from_checkpoint(f"{TASK_DIR}/e2e_ss_pruned.pt").eval()
model.merge_lora()  # fold LoRA into the weights for inference
vocab = CompactVocab.from_dict(torch.load(f"{TASK_DIR}/e2e_ss_pruned.pt", weights_only=True)["vocabulary"])
cfg = model.config
print(f"{TASK_DIR}: d={cfg.n_embd}, {cfg.n_layer} layers, γ={cfg.n_streams} streams on the top {cfg.n_msa_layers} "
      f"blocks, vocabulary {cfg.vocab_size} (compact GPT-2 ids)")
counts = model.parameter_counts()
print(f"parameters: base {counts['base']:,}, LoRA {counts['lora']:,}, stream embeddings {counts['stream_emb']:,}, "
      f"pruning adapter {counts['prune_adapter']:,}")'''),
    ("md", r'''## Decoding a few test MRs

Speculative decoding must give exactly the model's greedy output, in fewer forward calls. Each call commits the
accepted drafts plus one new token from the main stream (shown between bars).'''),
    ("code", r'''examples = load_task("e2e", "test")[:3]
for ex in examples:
    prompt = prompt_ids(vocab, ex, 64)
    ss = generate_speculative(model, prompt, 80, k=2, tree_cap=8, eos_id=EOS, trace=True)
    ar = generate_autoregressive(model, prompt, 80, eos_id=EOS)
    assert ss.tokens == ar.tokens
    print("MR   :", ex.prompt)
    print("calls:", " | ".join(vocab.decode(s) for s in ss.step_tokens))
    print(f"       {len(ss.tokens)} tokens in {ss.forward_calls} calls instead of {ar.forward_calls} "
          f"({ss.tokens_per_call:.2f} tokens per decode call)\n")'''),
    ("md", r'''## One decode call, drawn

The tree of the call that accepted the most: depth $j$ holds the top-$k$ tokens of stream $j$ at the last
accepted node. Green = accepted path; grey = rejected. Below each node: the main stream's argmax there, what its
child must equal to be accepted.'''),
    ("code", r'''def layout(tree):
    """x = depth; y: leaves top to bottom, a parent at the mean of its children."""
    children = {i: [] for i in range(len(tree))}
    for i, p in enumerate(tree.parents.tolist()):
        if p >= 0:
            children[p].append(i)
    ys = {}
    def place(i):
        if children[i]:
            for c in children[i]:
                place(c)
            ys[i] = sum(ys[c] for c in children[i]) / len(children[i])
        else:
            ys[i] = len([y for j, y in ys.items() if not children[j]])
    place(0)
    return {i: (int(tree.depths[i]), -ys[i]) for i in range(len(tree))}

step = max(ss.trace, key=lambda s: len(s.path))
pos, word = layout(step.tree), lambda t: repr(vocab.decode([int(t)]))
fig, ax = plt.subplots(figsize=(9, 0.6 * len(step.tree) + 1.5))
for i, p in enumerate(step.tree.parents.tolist()):
    if p >= 0:
        ax.plot([pos[p][0], pos[i][0]], [pos[p][1], pos[i][1]], color="0.6", lw=1, zorder=1)
for i, (x, y) in pos.items():
    ax.text(x, y, word(step.tree.tokens[i]), ha="center", va="center", fontsize=8, zorder=2,
            bbox=dict(boxstyle="round", fc="#8fd18f" if i in step.path else "#dddddd", ec="0.3"))
    ax.text(x, y - 0.32, "argmax " + word(step.main_argmax[i]), ha="center", va="top", fontsize=6.5, color="0.3")
ax.set_xticks(range(int(step.tree.depths.max()) + 1)); ax.set_yticks([])
ax.set_xlim(-0.6, int(step.tree.depths.max()) + 0.6); ax.set_ylim(min(y for _, y in pos.values()) - 0.8, 0.6)
ax.set_xlabel("depth (depth j drafted by stream j)")
ax.set_title(f"{len(step.tree)} nodes, accepted depth {len(step.path) - 1}: commits {vocab.decode(step.committed)!r}")
plt.show()'''),
    ("md", r'''## The benchmark's results

`bench.py task --task e2e` decodes the test MRs with every method on the same prompts, in one process,
interleaved, and checks that each output equals its model's greedy output. Its tables (written by the script,
with the command in their first lines) are in `results/e2e/`.'''),
    ("code", r'''from IPython.display import Image, Markdown, display
if os.path.exists("../results/e2e/results.md"):
    text = open("../results/e2e/results.md").read()
    display(Markdown(text.split("## Every setting")[0]))  # the summary tables
    if os.path.exists("../results/e2e/speedup_vs_k.png"):
        display(Image("../results/e2e/speedup_vs_k.png"))
else:
    print("no results/e2e yet: run `make tasks` (or train-tasks, then bench-tasks)")'''),
]

NOTEBOOKS = {
    "01_multi_stream_attention.ipynb": NB01,
    "02_tree_drafting_and_verification.ipynb": NB02,
    "03_training_and_acceptance_vs_gamma.ipynb": NB03,
    "04_real_task_e2e.ipynb": NB04,
}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in cells:
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        elif kind == "code":
            nb.cells.append(nbformat.v4.new_code_cell(source))
        else:
            raise ValueError(f"unknown cell kind {kind!r}")
    return nb


class VenvKernelManager(AsyncKernelManager):
    """The python3 kernel of *this* interpreter (the project's .venv): its kernelspec is looked up only under
    sys.prefix (ipykernel's wheel installs it there, and ensure_native_kernel falls back to ipykernel's own), and
    jupyter_client runs a `python` argv with sys.executable. A python3 kernel installed elsewhere (user or system
    Jupyter folders) is never picked."""

    @default("kernel_spec_manager")
    def _venv_kernel_spec_manager(self):
        return KernelSpecManager(kernel_dirs=[os.path.join(sys.prefix, "share", "jupyter", "kernels")])


def check_kernel():
    """Fail early, with a clear message, if the python3 kernel would not run this interpreter."""
    cmd = VenvKernelManager(kernel_name="python3").format_kernel_cmd()
    if cmd[0] != sys.executable:
        raise RuntimeError(f"the python3 kernel would run {cmd[0]}, not {sys.executable}")


def execute(nb: nbformat.NotebookNode, cwd: Path = NB_DIR, timeout: int = TIMEOUT) -> float:
    """Run every cell in a fresh kernel with cwd `cwd` (outputs are written into nb); returns seconds taken.
    Raises nbclient's CellExecutionError on the first failing cell."""
    check_kernel()
    start = time.perf_counter()
    NotebookClient(nb, kernel_manager_class=VenvKernelManager, kernel_name="python3", timeout=timeout,
                   record_timing=False, resources={"metadata": {"path": str(cwd)}}).execute()
    return time.perf_counter() - start


def errors(nb: nbformat.NotebookNode) -> list[str]:
    """Error outputs of a notebook, as 'cell i: ename: evalue'."""
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def main(argv: list[str]) -> int:
    names = [n for n in NOTEBOOKS if not argv or any(a in n for a in argv)]
    for name in names:
        nb = build(NOTEBOOKS[name])
        seconds = execute(nb)
        bad = errors(nb)
        if bad:
            print(f"{name}: errors: {bad}")
            return 1
        nbformat.validate(nb)
        nbformat.write(nb, NB_DIR / name)
        print(f"{name}: executed in {seconds:.1f} s, written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
