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
# # 04 · A real task: E2E-NLG, step by step
#
# E2E turns a restaurant's meaning representation (MR) into a sentence:
# `name[The Eagle], eatType[coffee shop], food[French], ...` $\to$ *"The Eagle is a French coffee shop ..."*.
# `train_task.py` trains a small GPT-2-tokenized model on it in stages (a base pretrained on the three tasks'
# training text, then LoRA fine-tuning with $\gamma=4$ streams, then the pruning adapter; the same for the
# baselines), and `bench.py task` measures every decoder side by side.
#
# This notebook loads the models that `make train-tasks` wrote to `checkpoints/tasks/`. Without them (a fresh
# clone) it trains a *tiny* model in a few seconds instead (`--quick`): its sentences are nonsense, but every
# mechanism below is the same. Data comes from `../shared/data` (or `$SPECSTREAM_DATA`).

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
import dataclasses, os
import train_task
from data import EOS, CompactVocab, load_task, prompt_ids, relexicalise
from drawing import GREEN, GREY, draw_tree
from generate import generate_autoregressive, generate_speculative
from benchmarks.params import parameter_counts
from checkpoint import load_model, read_checkpoint

# `make train-tasks` trains the frozen-mode recipe with self-distilled stream targets (train_task.py --help)
TASK_DIR, SS = "../checkpoints/tasks", "e2e_ss_frozen_self_pruned.pt"
if not os.path.exists(f"{TASK_DIR}/{SS}"):
    print("no trained E2E models found: training a tiny --quick model (nonsense outputs, same mechanics)")
    TASK_DIR, SS = "../checkpoints/tasks_quick", "e2e_ss_frozen_data_pruned.pt"  # data targets: quicker here
    recipe = dataclasses.replace(train_task.QUICK, task="e2e", methods=("ss",), stream_targets="data")
    train_task.train_task(recipe, TASK_DIR, quiet=True)
model = load_model(f"{TASK_DIR}/{SS}").eval()
ntp = load_model(f"{TASK_DIR}/e2e_ntp.pt").eval()  # the next-token LoRA baseline, same base
for m in (model, ntp):
    m.merge_lora()  # fold LoRA into the weights for inference
vocab = CompactVocab.from_dict(read_checkpoint(f"{TASK_DIR}/{SS}")["vocabulary"])
cfg = model.config
print(f"{TASK_DIR}: d={cfg.n_embd}, {cfg.n_layer} layers, γ={cfg.n_streams} streams on the top {cfg.n_msa_layers} "
      f"blocks, vocabulary {cfg.vocab_size} (compact GPT-2 ids)")
counts = parameter_counts(model)
print(f"parameters: base {counts['base']:,}, LoRA {counts['lora']:,}, stream embeddings {counts['stream_emb']:,}, "
      f"pruning adapter {counts['prune_adapter']:,}")

# %% [markdown]
# ## Decoding a few test MRs
#
# The models never see a restaurant's name: `load_task(..., delexicalised=True)` writes `X-name` / `X-near` for the
# MR's `name` and `near` values (9 of the 18 test names never occur in the training file), and `relexicalise` puts
# the values back into the output. For each MR: the human reference sentence(s) of the test set, then the greedy
# output of the next-token LoRA baseline and of the Speculative Streaming (SS) model. The SS model is decoded twice, autoregressively and
# speculatively; each speculative call commits the accepted drafts plus one new token from the main stream
# (shown between bars).
#
# **Predict, then run.** Will the speculative output be identical to the SS model's greedy output? And to the
# next-token model's output?

# %%
text = lambda tokens: relexicalise(vocab.decode([t for t in tokens if t != EOS]), ex.slots)
examples = load_task("e2e", "test", delexicalised=True)[:3]
for ex in examples:
    prompt = prompt_ids(vocab, ex, 64)
    ss = generate_speculative(model, prompt, 80, k=2, tree_cap=8, eos_id=EOS, trace=True)
    ar = generate_autoregressive(model, prompt, 80, eos_id=EOS)
    baseline = generate_autoregressive(ntp, prompt, 80, eos_id=EOS)
    print("MR (as the model sees it):", ex.prompt, ex.slots)
    print(f"reference (1 of {len(ex.references)})      :", ex.references[0])
    print("next-token LoRA, greedy :", text(baseline.tokens))
    print("SS model, greedy        :", text(ar.tokens))
    print("SS model, speculative   :", " | ".join(vocab.decode(s) for s in ss.step_tokens), "(as generated)")
    print(f"    identical to its greedy output: {ss.tokens == ar.tokens}; {len(ss.tokens)} tokens in "
          f"{ss.forward_calls} calls instead of {ar.forward_calls} ({ss.tokens_per_call:.2f} tokens per decode "
          f"call, root included); same as the next-token model: {ss.tokens == baseline.tokens}\n")
    assert ss.tokens == ar.tokens

# %% [markdown]
# **Answer.** Speculative decoding always reproduces *its own model's* greedy output, token for token (the
# `assert` above checks it): every committed token is the SS model's main-stream argmax. This SS model was trained
# in *frozen* mode: its main stream is the next-token model itself (only the stream embeddings and a stream-only
# adapter were trained), so its outputs are the next-token model's too. A *shared*-mode model
# (`train_task.py --mode shared`, the paper's first version) trains the main stream with the streams, and its
# sentences may differ from the baseline's: the quality cost measured in `results/e2e/`.

# %% [markdown]
# ## One decode call, drawn
#
# The tree of the call that accepted the most: depth $j$ holds the top-$k$ tokens of stream $j$ at the last
# accepted node. Green = accepted path; grey = rejected. Below each node: the main stream's argmax there, what its
# child must equal to be accepted.

# %%
step = max(ss.trace, key=lambda s: len(s.path))
word = lambda t: repr(vocab.decode([int(t)]))
fig, ax = plt.subplots(figsize=(9, 0.6 * len(step.tree) + 1.5))
draw_tree(ax, step.tree, [word(t) for t in step.tree.tokens], [GREEN if i in step.path else GREY
                                                                for i in range(len(step.tree))],
          f"{len(step.tree)} nodes, accepted depth {len(step.path) - 1}: commits {vocab.decode(step.committed)!r}",
          notes=["argmax " + word(a) for a in step.main_argmax])
plt.show()

# %% [markdown]
# ## The benchmark's results
#
# `bench.py task --task e2e` decodes the test MRs with every method on the same prompts, in one process,
# interleaved, and checks that each output equals its model's greedy output. Its tables (written by the script,
# with the command in their first lines) are in `results/e2e/`. Its sample outputs are left out here: there
# "target" means the *target model* of speculative decoding (the next-token model), not the reference; the cell
# above shows references and outputs side by side.

# %%
from IPython.display import Image, Markdown, display
if os.path.exists("../results/e2e/results.md"):
    summary = open("../results/e2e/results.md").read().split("## Every setting")[0]
    if "Samples (first test examples):" in summary:  # drop the samples block, keep the tables around it
        before, after = summary.split("Samples (first test examples):")
        summary = before + after[after.index("## "):]
    display(Markdown(summary))
    if os.path.exists("../results/e2e/speedup_vs_k.png"):
        display(Image("../results/e2e/speedup_vs_k.png"))
else:
    print("no results/e2e yet: run `make tasks` (or train-tasks, then bench-tasks)")
