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
# # 01 · Multi-stream attention (MSA)
#
# *Speculative Streaming* (Bhendawade et al., [arXiv 2402.11131](https://arxiv.org/abs/2402.11131)) turns one
# GPT into its own draft model. In the top $N_s$ blocks, every position $t$ carries, besides the ordinary **main
# stream** $M_t$, $\gamma$ **speculative streams** $S_{t,1..\gamma}$. Stream $j$ at $t$ learns to predict the token
# $j$ steps further ahead than the main stream: main logits at $t$ predict $x_{t+1}$, stream $j$ predicts
# $x_{t+1+j}$.
#
# This notebook takes a tiny random model apart and checks, numerically, the three equations that define MSA:
#
# | | paper | what it says |
# |---|---|---|
# | Eq. 1 | $M^{l+1}_t = \mathrm{Block}(M^l_t;\ \text{keys/values } M^l_{\le t})$ | the main stream never looks at a stream |
# | Eq. 2 | $S^{l+1}_{t,j} = \mathrm{Block}(S^l_{t,j};\ \text{keys/values } M^l_{\le t} \oplus S^l_{t,1..j})$ | stream $j$ at $t$ sees main $\le t$ and streams $1..j$ of position $t$ |
# | Eq. 3 | $S^{N-N_s}_{t,j} = M^{N-N_s}_t + P_j$ | streams start as the main state plus a learned embedding $P_j$ |
#
# Streams use the very same weights (Q/K/V/O, MLP, LayerNorms) as the main stream; the only new parameters are
# the $\gamma$ vectors $P_j$.

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
# ## The whole method in one file: `specstream_minimal.py`
#
# Before taking the optimised model apart, read [`specstream_minimal.py`](../specstream_minimal.py): Speculative
# Streaming in ~320 lines of plain torch, written to be read, not to be fast. Everything of the paper is there:
#
# | function | what it is |
# |---|---|
# | `msa_mask(T, γ)` | Eq. 1-2 as one explicit $(1+\gamma)T \times (1+\gamma)T$ boolean mask |
# | `MiniGPT.forward` | Eq. 3 ($S_{t,j} = M_t + P_j$), then plain masked attention over main and stream rows |
# | `MiniGPT.loss` | Eq. 5: next-token loss + $\sum_j \alpha_j$ CE(stream $j$, $x_{t+1+j}$) |
# | `draft_tree`, `verify_tree`, `speculative_decode` | a $k$-ary tree from the streams' top-$k$, greedy verification, the decode loop |
#
# No KV cache, no tree mask: every step recomputes the whole sequence, one batch row per root-to-leaf path. The
# tests check that it gives the same logits and accepts the same tokens as `model.py` + `generate.py`. At the end
# of this notebook, once the streams are defined, we train a tiny `MiniGPT` and watch it decode.

# %% [markdown]
# **Predict, then run.** `ssm.msa_mask(T=2, n_streams=2)` is a 6 x 6 mask with rows and columns ordered
# `M0 M1 | S1@0 S1@1 | S2@0 S2@1` (main, stream 1, stream 2; `@t` = position). Write down, for the query row
# `S2@1` (stream 2 at position 1), which keys it may attend to. Then run the cell.

# %%
import specstream_minimal as ssm

labels = ["M0", "M1", "S1@0", "S1@1", "S2@0", "S2@1"]
small = ssm.msa_mask(2, 2)
print("query  | " + " ".join(f"{c:>5}" for c in labels))
for label, row in zip(labels, small.int().tolist()):
    print(f"{label:>6} | " + " ".join(f"{v:>5}" for v in row))

# %% [markdown]
# **Answer.** `S2@1` sees `M0`, `M1` (the main stream up to and including its own position, Eq. 2) and `S1@1`,
# `S2@1` (streams 1..2 of its *own* position, itself included). It never sees `S1@0` or `S2@0`: a stream never
# looks at other positions' streams. And no main row (`M0`, `M1`) sees any stream: Eq. 1.

# %% [markdown]
# ## A tiny model: $\gamma = 3$ streams on the top $N_s = 2$ of 3 blocks
#
# We work in float64 and give the weights a larger random scale than the default init (std 0.02), so that every
# effect shows up clearly and "unchanged" means equal to ~1e-15.

# %%
import math
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
print("stream embeddings P:", tuple(model.transformer.stream_emb.shape), "= the only new parameters")

# %% [markdown]
# ## Shapes, step by step, through the first MSA block
#
# Main stream: `(B, T, C)`. Streams: `(B, T, γ, C)`, one extra axis. The main stream is ordinary causal attention.
# For the stream queries the model does **not** build the big mask of the next section; it computes two score
# blocks and one softmax over their concatenation:
#
# * stream → main keys: `(B, nh, γ, T, L+T)` with the causal mask (L = cached entries; 0 in training),
# * stream → the streams of the *same* position: `(B, nh, T, γ, γ)` with a lower-triangular mask (Eq. 2: $1..j$).
#
# Below we redo the first MSA block by hand and compare it with the model's `Block`.

# %%
B, T = 2, 5
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
print("by hand vs model Block, max |diff| =", f"{(S_out - S_block).abs().max().item():.1e}")


# %% [markdown]
# ## The full MSA mask, built from the rules
#
# Conceptually, MSA is ordinary masked attention over $(1+\gamma)T$ rows: the $T$ main rows, then the $T$ rows of
# stream 1, stream 2, ... The rules of Eq. 1 and Eq. 2 give this boolean mask (row = query, column = key):
#
# * main $t$ → main $\le t$ (Eq. 1; nothing else),
# * stream $j$ at $t$ → main $\le t$, and streams $1..j$ of position $t$ only (Eq. 2).
#
# The efficient computation above never materialises it; it is still the best test oracle.

# %%
def full_msa_mask(T, G):
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
print(f"{int(mask.sum())} of {mask.numel()} entries are True")


# %% [markdown]
# **Predict, then run.** For $T = 5$ and $\gamma = 3$ the mask drawn above is $20 \times 20$. How many of its
# entries are True? (Count row by row: a main row at $t$, then a stream-$j$ row at $t$.)

# %%
print(f"T={T}, γ={G}: {int(mask.sum())} True entries;",
      "the same mask as specstream_minimal.msa_mask:", torch.equal(mask, ssm.msa_mask(T, G)))

# %% [markdown]
# **Answer.** 90. A main row at $t$ sees $t+1$ main keys: $1+2+3+4+5 = 15$ for the $T$ main rows. A stream-$j$
# row at $t$ sees the same $t+1$ main keys plus $j$ streams: $15 + 5j$ for the $T$ rows of stream $j$. In all,
# $15 + (20 + 25 + 30) = 90$ of 400 entries: the big mask is mostly empty, which is why the model computes two
# small score blocks instead.

# %% [markdown]
# ## Efficient two-block MSA == naive full-mask attention
#
# The naive version lays out all $(1+\gamma)T$ rows, adds $P_j$ to the stream rows (Eq. 3), and runs each MSA
# block as *plain* masked attention with the mask above (the model's `Block` without streams, given an explicit
# mask). Same weights, completely different computation.

# %%
def naive_msa_logits(model, idx):
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
assert torch.allclose(out.stream_logits, streams_naive, atol=1e-10)

# %% [markdown]
# ## Eq. 1: the main stream never sees a stream
#
# Two checks: (a) a plain GPT with the same base weights (no streams) gives the same main logits; (b) perturbing
# the stream embeddings $P_j$ changes the stream logits a lot and the main logits not at all. This is what makes
# Speculative Streaming lossless: the verifier *is* the original model.

# %%
plain = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=3, n_head=2, n_embd=16)).double().eval()
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
      "   stream logits max |diff| =", f"{(out_perturbed.stream_logits - out.stream_logits).abs().max().item():.2f}")

# %% [markdown]
# ## Eq. 2: what stream $j$ at position $t$ may depend on
#
# **Predict, then run.** Below we change every token after position $t_0 = 2$, and then perturb one stream
# embedding $P_{j'}$ at a time. Which cells of the two grids (stream $j$ x position $t$, and stream $j$ x perturbed
# $P_{j'}$) will stay exactly 0?
#
# Causality in time: change the tokens after $t_0 = 2$; the stream outputs at positions $\le t_0$ must not move.
# Order among streams: perturb one $P_{j'}$; stream $j$ must not move when $j' > j$ (it only sees streams $1..j$
# of its own position).

# %%
t0 = 2
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
print("positions <= t0 unchanged; stream j unchanged by P_j' for every j' > j (upper triangle is 0)")

# %% [markdown]
# **Answer.** Left: every position $t \le t_0$, for every stream (a stream at $t$ sees main keys $\le t$ only;
# the main stream below it is causal too). Right: the upper triangle, $j' > j$: stream $j$ sees streams $1..j$
# of its position, so perturbing a later stream's $P_{j'}$ cannot reach it, while every $j' \le j$ does.

# %% [markdown]
# ## Eq. 3: stream initialisation at the first MSA block
#
# At the input of block $N-N_s$ each stream starts as a copy of the main state plus its own embedding,
# $S_{t,j} = M_t + P_j$ (the paper's $f_\eta$ is the identity here; the paper found it as good as a learned
# projection). We catch the inputs of that block with a forward pre-hook and check it.

# %%
captured = {}
hook = model.transformer.h[cfg.first_msa_layer].register_forward_pre_hook(
    lambda module, args: captured.update(M=args[0], S=args[1]))
model(idx)
hook.remove()
M_in, S_in = captured["M"], captured["S"]
print("block", cfg.first_msa_layer, "inputs: main", tuple(M_in.shape), " streams", tuple(S_in.shape))
print("max |S_{t,j} - (M_t + P_j)| =", f"{(S_in - (M_in.unsqueeze(2) + P)).abs().max().item():.1e}")
print("the lower block(s) never see streams:", cfg.first_msa_layer, "block(s) run the main stream only")

# %% [markdown]
# ## Summary
#
# * MSA = one softmax per stream query over main keys $\le t$ plus same-position streams $1..j$; computed as two
#   small score blocks, numerically identical to the full $(1+\gamma)T$ mask.
# * Eq. 1 makes the main stream (the verifier) exactly the base model; Eq. 2 keeps streams causal in time and in
#   stream order; Eq. 3 starts stream $j$ at $M_t + P_j$.
# * Training (Eq. 5, notebook 03) adds $\sum_j \alpha_j\,\mathrm{CE}(\text{stream}_{t,j}, x_{t+1+j})$ to the
#   next-token loss. Notebook 02 shows how a single forward pass uses the streams to draft and the main stream to
#   verify.

# %% [markdown]
# ## The whole method at work
#
# The streams are what a model needs to draft for itself. One decode step of Speculative Streaming, in the words the
# printout below uses:
#
# * **root**: the last token the main stream committed (its greedy choice); the draft tree hangs below it;
# * **drafts** `dj`: the top-$k$ tokens of stream $j$ at the root's position, candidates for the token $j$ steps
#   after the root (stream $j$ at $t$ predicts $x_{t+1+j}$, the main stream $x_{t+1}$); every depth-$j$ candidate
#   goes under every depth-$(j-1)$ one, a tree of paths;
# * **accepted**: one forward pass over the tree verifies it with the main stream: a draft is accepted iff it equals
#   the main stream's argmax at its parent, so every accepted token is the one greedy decoding would produce;
# * **commits**: the accepted drafts, plus the main stream's argmax after the last accepted one (the *bonus* token,
#   always right), which becomes the next root. The same pass also runs the streams there, drafting the next tree.
#
# A tiny `MiniGPT` trained for a few seconds on template sentences, decoded with $\gamma = 2$, $k = 2$ (notebook 02
# takes one such step apart):

# %%
import time

torch.manual_seed(0)
torch.set_grad_enabled(True)  # training needs gradients (switched off above for the model's forward passes)
words = ssm.toy_text(seed=0, n_sentences=400)
vocab = sorted(set(words))
encode = lambda text: [vocab.index(w) for w in text.split()]
decode = lambda ids: " ".join(vocab[i] for i in ids)
mini = ssm.MiniGPT(ssm.MiniConfig(vocab_size=len(vocab), block_size=48, n_layer=2, n_head=2, n_embd=48,
                                  n_streams=2, n_msa_layers=1))
start = time.time()
ssm.train(mini, torch.tensor(encode(" ".join(words))), steps=150, batch_size=16, seq_len=24, lr=3e-3)
print(f"trained in {time.time() - start:.0f} s")
mini.double()  # float64: batched and unbatched forwards agree on every argmax
tokens, steps = ssm.speculative_decode(mini, encode("the cat"), 16, gamma=2, k=2, verbose=True, decode=decode)
print("identical to greedy decoding:", tokens == ssm.greedy_decode(mini, encode("the cat"), 16))

# %% [markdown]
# Each step commits between 1 token (no draft accepted: the bonus token alone) and $\gamma + 1 = 3$ (both drafts
# accepted, plus the bonus token); the output is exactly greedy decoding, in fewer forward passes.
