# `make demo` and `make test` both create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo toy-study test tasks train-tasks train-e2e-dialogsum train-sql bench-tasks ablation sweep study-e2e toy-baselines profile clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The demo stays a few minutes: train the toy model, then decode held-out prompts with AR and SS side by side.
demo: $(STAMP)
	$(PY) train_toy.py
	$(PY) bench.py speed --prompts 10 --repeats 1

# The γ study of results/toy/ (trains two more models; ~6 min more on 2 cores).
toy-study: $(STAMP)
	$(PY) train_toy.py
	$(PY) bench.py toy

# The real-task pipeline (train_task.py, then bench.py task): every task with every method.
# Long sequences (SQL, DialogSum) get fewer fine-tuning steps so that training stays near one hour on 2 cores.
THREADS ?= 2
# E2E's drafter stage (SS and Medusa alike) trains for 1,200 steps, about 4.5 epochs of its training rows: the knee
# of acceptance against steps on the dev split (results/e2e/study_steps.md). The other stages keep 600 steps.
# E2E's stream-only adapter sits in the MLPs only: on the dev split it accepts as much as in both sublayers at k = 1
# (0.03-0.05 less at k >= 2) and its calls are cheaper (results/e2e/study_placement.md, ablation_dev_draftvocab250.md).
E2E_STEPS := --task e2e --drafter-steps 1200
E2E := $(E2E_STEPS) --stream-adapter-in mlp
# The two shared bases first (THREADS threads), then the tasks as two parallel jobs of 1 thread each (E2E then
# DialogSum, and SQL): on small matrices two 1-thread processes get more done than one 2-thread process.
# Their progress bars share the terminal; each bar names its task and stage.
train-tasks: $(STAMP)
	$(PY) train_task.py --bases-only --threads $(THREADS)
	$(MAKE) -j2 train-e2e-dialogsum train-sql

train-e2e-dialogsum: $(STAMP)
	$(PY) train_task.py $(E2E) --threads 1
	$(PY) train_task.py --task dialogsum --ft-steps 300 --threads 1

train-sql: $(STAMP)
	$(PY) train_task.py --task sql --ft-steps 400 --threads 1

# bench.py runs every decoder on the same prompts, interleaved. Many prompts, one pass each: acceptance varies from
# MR to MR, and the total time of one pass over many prompts, interleaved, is steady.
# SQL outputs are ~250 tokens: fewer prompts. Then E2E and SQL again with their drafters (SS and Medusa alike)
# scoring only the N most frequent tokens of the training completions, N chosen on the dev split
# (results/{e2e,sql}/study_draftvocab.md): written to results/e2e_draftvocab250/ and results/sql_draftvocab150/.
bench-tasks: $(STAMP)
	$(PY) bench.py task --task e2e --prompts 200 --repeats 1
	$(PY) bench.py task --task sql --prompts 30 --repeats 1
	$(PY) bench.py task --task dialogsum --prompts 60 --repeats 1
	$(PY) bench.py task --task e2e --prompts 200 --repeats 1 --draft-vocab 250
	$(PY) bench.py task --task sql --prompts 30 --repeats 1 --draft-vocab 150

tasks: train-tasks bench-tasks

# The 2 x 2 of training recipes on E2E: shared / frozen mode x data / self stream targets (train_task.py --mode, --stream-targets),
# side by side on the test split (quality, name realisation, CR, tokens per call, acceptance, wall speedup).
# `train-tasks` trains the frozen/self recipe; this adds the three others (the base and next-token model are reused).
ablation: $(STAMP)
	$(PY) train_task.py --bases-only --threads $(THREADS)
	$(PY) train_task.py $(E2E) --threads 1
	for recipe in "frozen data" "shared data" "shared self"; do set -- $$recipe; \
		$(PY) train_task.py $(E2E) --method ss --mode $$1 --stream-targets $$2 --threads $(THREADS) || exit 1; done
	$(PY) bench.py ablation --task e2e --prompts 200 --repeats 1

# E2E's recipe with the stream adapter in both sublayers, the setting under which the sweep and the studies
# below chose the learning rate, steps, N_s and rank (checkpoints tagged _both and by their variant).
E2E_BOTH := $(E2E_STEPS) --stream-adapter-in attn+mlp

# Model selection on the E2E dev split (51 held-out MRs, never the test file): the frozen/self recipe with other
# stream-adapter ranks, learning rate and N_s, against the same recipe at its defaults; then, timed with the
# trimmed draft vocabulary, the adapter in both sublayers, in the MLPs only (E2E's default) and N_s = 1.
sweep: $(STAMP)
	$(PY) train_task.py --bases-only --threads $(THREADS)
	$(PY) train_task.py $(E2E_BOTH) --method ss --tag _both --threads 1
	$(PY) train_task.py $(E2E_BOTH) --method ss --stream-adapter-rank 8 --tag _r8 --threads $(THREADS)
	$(PY) train_task.py $(E2E_BOTH) --method ss --stream-adapter-rank 64 --tag _r64 --threads $(THREADS)
	$(PY) train_task.py $(E2E_BOTH) --method ss --drafter-lr 5e-3 --tag _lr5e-3 --threads $(THREADS)
	$(PY) train_task.py $(E2E_BOTH) --method ss --n-msa-layers 3 --tag _ns3 --threads $(THREADS)
	$(PY) bench.py ablation --task e2e --split dev --n-eval 51 --prompts 51 --repeats 1 --recipes \
		ss_frozen_self_both ss_frozen_self_r8 ss_frozen_self_r64 ss_frozen_self_lr5e-3 ss_frozen_self_ns3
	$(PY) train_task.py $(E2E) --method ss --threads 1
	$(PY) train_task.py $(E2E_BOTH) --method ss --n-msa-layers 1 --tag _ns1 --threads 1
	$(PY) bench.py ablation --task e2e --split dev --n-eval 51 --prompts 51 --repeats 3 --draft-vocab 250 \
		--recipes ss_frozen_self_both ss_frozen_self ss_frozen_self_ns1

# How training moves acceptance, on the E2E dev split (no timing, so it may run beside other jobs): the drafter
# stage's steps for SS and Medusa (results/e2e/study_steps.*), N_s, the stream adapter's rank and its placement
# (study_ns, study_rank, study_placement; the placement's values are the adapter's parameters at rank 32).
# The next-token model is the same throughout (train_task.py --drafter-steps changes the drafter stage only).
# SS variants use E2E_BOTH; the placement study compares attention, MLP (E2E's default) and both.
study-e2e: $(STAMP)
	$(PY) train_task.py --bases-only --threads $(THREADS)
	$(PY) train_task.py $(E2E) --threads 1
	$(PY) train_task.py $(E2E_BOTH) --method ss --tag _both --threads 1
	$(PY) train_task.py $(E2E_STEPS) --method ss --stream-adapter-in attn --tag _attn --threads 1
	for s in 150 300 600 2400 4800; do for m in ss medusa; do $(PY) train_task.py $(E2E_BOTH) --method $$m \
		--drafter-steps $$s --tag _s$$s --threads 1 || exit 1; done; done
	for ns in 1 3 4; do $(PY) train_task.py $(E2E_BOTH) --method ss --n-msa-layers $$ns --tag _ns$$ns --threads 1 || exit 1; done
	for r in 8 64 128; do $(PY) train_task.py $(E2E_BOTH) --method ss --stream-adapter-rank $$r --tag _r$$r --threads 1 || exit 1; done
	$(PY) bench.py study --task e2e --name steps --label "drafter training steps" --mark 1327 \
		--mark-label "5 epochs of the 4,245 training rows" \
		--recipes $(foreach s,_s150 _s300 _s600 _both _s2400 _s4800,ss_frozen_self$(s)) \
		medusa_frozen_self_s150 medusa_frozen_self_s300 medusa_frozen_self_s600 medusa_frozen_self \
		medusa_frozen_self_s2400 medusa_frozen_self_s4800 \
		--values 150 300 600 1200 2400 4800 150 300 600 1200 2400 4800
	$(PY) bench.py study --task e2e --name ns --label "N_s, MSA blocks" --recipes ss_frozen_self_ns1 \
		ss_frozen_self_both ss_frozen_self_ns3 ss_frozen_self_ns4 --values 1 2 3 4
	$(PY) bench.py study --task e2e --name rank --label "stream adapter rank" --recipes ss_frozen_self_r8 \
		ss_frozen_self_both ss_frozen_self_r64 ss_frozen_self_r128 --values 8 32 64 128
	$(PY) bench.py study --task e2e --name placement --label "stream adapter parameters: attention, MLP, both" \
		--recipes ss_frozen_self_attn ss_frozen_self ss_frozen_self_both --values 98304 163840 262144

# The same side by side on the toy task: SS (γ=4), Medusa (4 heads) and a draft model on the toy base.
toy-baselines: $(STAMP)
	$(PY) train_toy.py --gamma 4
	$(PY) train_toy.py --method medusa --gamma 4
	$(PY) train_toy.py --method draft
	$(PY) bench.py baselines

# One decode call timed part by part (AR step, SS call, bare forward of the same rows): results/{toy,e2e}/profile.md.
# Needs the toy model (make demo) and the E2E models (make train-tasks); run it on a quiet machine.
profile: $(STAMP)
	$(PY) bench.py profile --toy
	$(PY) bench.py profile --task e2e
	$(PY) bench.py profile --task e2e --draft-vocab 250

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) checkpoints

# The real-task data sets from their public sources (GitHub, at pinned commits; sha256-checked), for machines
# without ../shared/data; the other targets then find them with SPECSTREAM_DATA (e.g. SPECSTREAM_DATA=data make tasks).
DATA ?= data
.PHONY: data
data: $(STAMP)
	$(PY) data.py download --to $(DATA)

# Notebooks are kept as jupytext percent-format sources (notebooks/NN_name.py). This writes each paired .ipynb from
# its .py and executes it in place, cwd notebooks/, with the .venv's python3 kernel (.venv/share/jupyter first in
# JUPYTER_PATH). NB=02 builds only notebook 02.
NB ?= [0-9][0-9]
.PHONY: notebooks
notebooks: $(STAMP)
	$(VENV)/bin/jupytext --to ipynb $(wildcard notebooks/$(NB)_*.py)
	cd notebooks && JUPYTER_PATH=$(abspath $(VENV))/share/jupyter $(abspath $(VENV))/bin/jupyter-execute --inplace \
		--timeout=600 $(notdir $(patsubst %.py,%.ipynb,$(wildcard notebooks/$(NB)_*.py)))

# The exercises' checker: make check EX=3 (one exercise), EX=final (your pieces in the decode loop) or EX=all;
# MODULE=path/to/your_file.py checks another file than exercises/exN_*.py.
EX ?= all
.PHONY: check
check: $(STAMP)
	$(PY) -m exercises check $(EX) $(if $(MODULE),--module $(MODULE))

# The teacher's side (docs/TEACHING.md): make handout OUT=dir (the student copy, without the solutions), make reset
# (the stubs back in exercises/, changed files backed up), make grade SUBMISSIONS=dir (one folder per student).
.PHONY: handout reset grade
handout: $(STAMP)
	$(PY) -m exercises handout $(OUT)

reset: $(STAMP)
	$(PY) -m exercises reset

grade: $(STAMP)
	$(PY) -m exercises grade $(SUBMISSIONS)
