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
# # 03 · Training the streams, and acceptance vs $\gamma$
#
# **These numbers come from a reduced run inside this notebook** (small model, few steps, 10 prompts), meant to
# show the shapes of the curves in about a minute. `make demo` trains the full toy model and writes the real
# study (more steps, more prompts, wall-time speedups, tree sizes, pruning) to `results/toy/`.
#
# Training objective (paper Eq. 5), with $\alpha_0 = 1$, $\alpha_j = 0.1$:
#
# $$\mathcal L = \alpha_0\,\mathrm{CE}(\text{main}_t, x_{t+1}) + \sum_{j=1}^{\gamma} \alpha_j\,\mathrm{CE}(\text{stream}_{t,j}, x_{t+1+j})$$
#
# Stages (`train_toy.train_pipeline`): (a) pretrain a plain GPT, (b) Speculative Streaming fine-tuning: LoRA on
# attention/MLP projections + the stream embeddings $P_j$, Eq. 5, (c) the pruning adapter.

# %%
import sys; sys.path.insert(0, "..")  # cwd is notebooks/: the project's modules are one folder up
import warnings; warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets
# %matplotlib inline
import matplotlib.pyplot as plt
import torch
torch.manual_seed(0)
torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and stable on a shared CPU
plt.rcParams.update({"figure.dpi": 90, "font.size": 9})

# %%
import dataclasses, time
from benchmarks.params import parameter_counts
from train_toy import NOTEBOOK, train_pipeline

start = time.time()
# notebook 02's small model with one more stream, twice the stories and twice the steps (in memory: no files)
recipe = dataclasses.replace(NOTEBOOK, gamma=4, n_stories=2000, pretrain_steps=300, ss_steps=300)
model, data, histories = train_pipeline(recipe, quiet=True)
GAMMA = model.config.n_streams
print(f"trained in {time.time() - start:.0f} s: n_embd {recipe.n_embd}, {recipe.n_layer} layers "
      f"(top {recipe.n_msa_layers} with MSA), gamma = {GAMMA}, LoRA rank {recipe.lora_rank}")
counts = parameter_counts(model)
print(f"parameters: base {counts['base']:,}, LoRA {counts['lora']:,}, stream embeddings {counts['stream_emb']:,} "
      f"(= γ·d), pruning adapter {counts['prune_adapter']:,}")

# %% [markdown]
# ## Per-stream loss and accuracy during fine-tuning
#
# Logged every 10 steps on the training batch. Stream $j$ must predict $x_{t+1+j}$: the further ahead, the more
# free choices of the toy language lie in between, so loss rises and accuracy falls with $j$. The main loss starts
# where pretraining ended (LoRA starts as a no-op), may bump while the streams' large early losses move the shared
# LoRA weights, and is pulled back by its weight $\alpha_0 = 1$.

# %%
import numpy as np

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
print("final stream accuracy:", " ".join(f"{x:.2f}" for x in stream_acc[-1]))

# %% [markdown]
# ## Acceptance vs $\gamma'$
#
# We decode 10 held-out prompts with $k = 1$ (a chain of $\gamma'$ drafts per step) using only the first
# $\gamma' = 1..\gamma$ streams of the same model (stream $j$ never sees streams $> j$, so dropping the last ones is
# exact), and count per depth how often a draft was attempted and accepted.
#
# * **Acceptance rate at depth $j$** = accepted / attempted at depth $j$ = $P(\text{depth } j \text{ accepted} \mid
#   \text{depth } j-1 \text{ accepted})$: a depth-$j$ draft is only checked when every draft above it was accepted.
#   So it is *not* the stream's plain accuracy, and it need not fall with $j$.
# * **Tokens per call** = committed tokens / decode calls, **the root (bonus) token included**: it is between 1 and
#   $\gamma'+1$. CR (call reduction) = autoregressive calls / speculative calls, prefill included in both.
#
# **Predict, then run.** Will tokens per call grow in step with $\gamma'$, one more token per extra stream?

# %%
from generate import generate_autoregressive, generate_speculative

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
          + f" | tokens per call {study[g]['tokens_per_call']:.2f} | CR {study[g]['cr']:.2f}")

# %%
gs = list(study)
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
plt.tight_layout(); plt.show()

# %% [markdown]
# **Answer.** Depth-$j$ acceptance changes only mildly with $\gamma'$: the same stream $j$ drafts it;
# what shifts is where in a sentence the steps start (after a longer accepted run). Each extra stream adds one more
# *conditional* chance to extend the accepted run, so tokens per call grows with $\gamma'$ with diminishing returns,
# well below the $\gamma'+1$ bound. CR sits a little below tokens per call because it also counts the prefill and
# the final, shorter steps. On a CPU the wall-time speedup is smaller still (a tree step costs more than a one-token
# step): `make demo` measures it, on the fully trained model, with more prompts, larger $k$, capped trees and
# pruning, and writes the full study to `results/toy/`.
