"""Training: the toy language, deterministic batches, resumable and atomic stage checkpoints, the recipes and
their command lines, the scripts' --help."""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from checkpoint import load_model
from model import GPT, GPTConfig, stream_targets
from train import StageConfig, from_base, stream_accuracy, train_stage
from train_toy import TINY, ToyData, ToyRecipe, parse, story, train_pipeline, vocabulary
from helpers import require_task_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_toy_language_is_deterministic_and_in_vocabulary():
    import random
    a, b = ToyData(50, seed=3), ToyData(50, seed=3)
    assert torch.equal(a.stream, b.stream)
    assert not torch.equal(a.stream, ToyData(50, seed=4).stream)
    words = set(vocabulary())
    rng = random.Random(0)
    for _ in range(200):
        s = story(rng)
        assert set(s) <= words and s[-1] == "<eos>" and s.count("<eos>") == 1
    x1, y1, m1 = a.batch(7, 4, 16)
    x2, y2, _ = a.batch(7, 4, 16)
    assert torch.equal(x1, x2) and torch.equal(x1[:, 1:], y1[:, :-1]) and m1.all()
    assert a.decode(a.encode(["the", "fox", "."])) == "the fox ."


def test_stream_accuracy_counts_the_right_targets():
    targets = torch.tensor([[1, 2, 3, 4]])
    logits = torch.full((1, 4, 2, 5), -10.0)
    for t in range(4):  # stream 1 at t is right (targets[t+1]); stream 2 always predicts 0 (wrong)
        if t + 1 < 4:
            logits[0, t, 0, targets[0, t + 1]] = 10.0
        logits[0, t, 1, 0] = 10.0
    assert stream_accuracy(logits, stream_targets(targets, 2)) == [1.0, 0.0]
    partly = stream_targets(targets, 2)
    partly[0, 0, 1] = -1  # an ignored target is not counted
    logits[0, 1, 1, 4] = 20.0  # stream 2 at t=1 now right (x[t+1+2] = targets[0, 3] = 4)
    assert stream_accuracy(logits, partly) == [1.0, 1.0]


def tiny_stage_setup(tmp_path):
    data = ToyData(200, seed=0)
    cfg = GPTConfig(vocab_size=len(data.words), block_size=32, n_layer=2, n_head=2, n_embd=16, n_streams=2,
                    n_msa_layers=1, dropout=0.1)
    return data, cfg, lambda step: data.batch(step, 4, 16, seed=1)


def test_interrupted_stage_resumes_to_the_same_weights(tmp_path):
    data, cfg, batches = tiny_stage_setup(tmp_path)
    stage = StageConfig("demo", steps=30, lr=1e-2, save_every=10, seed=5)

    torch.manual_seed(0)
    straight = GPT(cfg)
    train_stage(straight, batches, stage, str(tmp_path / "straight.pt"), quiet=True)

    def crashing(step):
        if step == 25:
            raise KeyboardInterrupt
        return batches(step)

    torch.manual_seed(0)
    interrupted = GPT(cfg)
    with pytest.raises(KeyboardInterrupt):
        train_stage(interrupted, crashing, stage, str(tmp_path / "resumed.pt"), quiet=True)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []  # atomic saves leave no temp files
    torch.manual_seed(123)  # a different fresh init: everything must come from the checkpoint
    resumed = GPT(cfg)
    history = train_stage(resumed, batches, stage, str(tmp_path / "resumed.pt"), quiet=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name  # bit for bit: weights, AdamW moments and schedule restored, batches re-drawn
    assert history["step"][-1] == 30
    # a finished stage is loaded, not trained again; a checkpoint of another stage is refused
    again = GPT(cfg)
    train_stage(again, batches, stage, str(tmp_path / "resumed.pt"), quiet=True)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="stage"):
        train_stage(GPT(cfg), batches, StageConfig("other", steps=5, lr=1e-2), str(tmp_path / "resumed.pt"), quiet=True)


def test_lora_stage_trains_only_lora_and_streams(tmp_path):
    data, cfg, batches = tiny_stage_setup(tmp_path)
    cfg.lora_rank, cfg.prune_rank = 4, 4
    model = GPT(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_stage(model, batches, StageConfig("ss", steps=5, lr=1e-2), quiet=True)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k or k == "transformer.stream_emb" for k in changed), changed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_stage(model, batches, StageConfig("prune", steps=5, lr=1e-2, loss="early_exit"), quiet=True)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"prune_adapter.down.weight", "prune_adapter.up.weight"}


def test_frozen_mode_stage_runs_the_model_without_dropout(tmp_path):
    """A "streams" stage trains drafters on a frozen model: it runs as at decode time (no dropout), so the stage
    does not depend on the dropout seed; "eq5" (shared mode) keeps dropout, so the seed changes its weights."""
    data, cfg, batches = tiny_stage_setup(tmp_path)
    cfg.dropout, cfg.stream_adapter_rank = 0.5, 4
    for loss, same in (("streams", True), ("eq5", False)):
        weights = []
        for seed in (1, 2):  # the seed draws the stream rows and the dropout masks: all rows, so only dropout
            torch.manual_seed(0)
            model = GPT(cfg)
            train_stage(model, batches, StageConfig(loss, steps=3, lr=1e-2, loss=loss, seed=seed), quiet=True)
            weights.append(model.transformer.stream_emb.detach().clone())
        assert torch.equal(*weights) == same, loss


def test_toy_pipeline_tiny_run_is_deterministic(tmp_path):
    m1, data, hist = train_pipeline(TINY, str(tmp_path / "a"), quiet=True)
    m2, _, _ = train_pipeline(TINY, str(tmp_path / "b"), quiet=True)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert sorted(os.listdir(tmp_path / "a")) == ["base.pt", "ss_gamma2.pt", "ss_gamma2_pruned.pt"]
    assert len(hist["streams"]["stream_acc"][-1]) == 2
    loaded = load_model(str(tmp_path / "a" / "ss_gamma2_pruned.pt"))
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), loaded.state_dict().values()))
    # without a folder the same model is trained in memory, and nothing is written
    in_memory, _, hist2 = train_pipeline(TINY, quiet=True)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), in_memory.state_dict().values()))
    assert hist2 == hist and sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_toy_command_line_builds_the_recipe():
    """Every flag of train_toy.py sets the ToyRecipe field of the same name; no flag gives ToyRecipe()."""
    assert parse([]) == (ToyRecipe(), "checkpoints/toy", False)
    changed = dict(seed=3, n_stories=7, n_layer=1, n_head=1, n_embd=8, block_size=32, train_block=8, batch_size=2,
                   ss_batch_size=3, method="medusa", gamma=2, n_msa_layers=1, lora_rank=4, draft_layers=2,
                   draft_heads=1, draft_embd=8, pretrain_steps=5, ss_steps=6, prune_steps=7, lr=0.5, ss_lr=0.25,
                   prune_lr=0.125, threads=1, device="meta")
    assert set(changed) == {f.name for f in dataclasses.fields(ToyRecipe)}
    argv = [a for name, value in changed.items() for a in ("--" + name.replace("_", "-"), str(value))]
    assert parse(argv + ["--out-dir", "x", "--overwrite"]) == (ToyRecipe(**changed), "x", True)


def test_from_base_copies_every_base_tensor_and_keeps_the_new_parts_fresh():
    """The one base-to-drafter copy (toy and task pipelines): base tensors copied, LoRA B and the pruning adapter
    at zero, Medusa's LM heads equal to the base LM head."""
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16))
    for extra in (dict(n_streams=2, n_msa_layers=1), dict(n_medusa_heads=2)):
        model = from_base(base, dataclasses.replace(base.config, lora_rank=2, prune_rank=2, **extra), seed=1)
        own = model.state_dict()
        assert all(torch.equal(own[name], t) for name, t in base.state_dict().items())
        assert all(not t.any() for name, t in own.items() if "lora_B" in name or name == "prune_adapter.up.weight")
        for name, t in own.items():
            if name.startswith("medusa.lm_heads."):
                assert torch.equal(t, base.lm_head.weight), name


def test_toy_baselines_quick(tmp_path):
    """SS (γ=4), Medusa (4 heads) and the draft model on a tiny toy run, then `bench.py baselines` on them."""
    import bench
    for method in ("ss", "medusa", "draft"):
        train_pipeline(dataclasses.replace(TINY, gamma=4, draft_embd=8, method=method), str(tmp_path / "toy"),
                       quiet=True)
    assert sorted(os.listdir(tmp_path / "toy")) == ["base.pt", "draft.pt", "medusa_gamma4.pt", "medusa_gamma4_pruned.pt",
                                                    "ss_gamma4.pt", "ss_gamma4_pruned.pt"]
    medusa = load_model(str(tmp_path / "toy" / "medusa_gamma4_pruned.pt"))
    assert medusa.config.n_medusa_heads == 4 and medusa.config.n_streams == 0
    bench.main(["baselines", "--toy-dir", str(tmp_path / "toy"), "--n-stories", "100", "--prompts", "2", "--repeats",
                "1", "--max-new-tokens", "12", "--results-dir", str(tmp_path / "res")])
    import json
    results = json.loads((tmp_path / "res" / "toy_baselines" / "results.json").read_text())
    methods = {r["method"] for r in results["rows"]}
    assert methods == {"autoregressive", "ss", "medusa", "two-model", "prompt lookup"}
    assert all(r["speedup"] > 0 for r in results["rows"] if r["method"] != "autoregressive")
    assert any(r["draft_calls"] > 0 for r in results["rows"] if r["method"] == "two-model")
    md = (tmp_path / "res" / "toy_baselines" / "results.md").read_text()
    assert "Table 1" in md and "Table 2" in md
    assert (tmp_path / "res" / "toy_baselines" / "speedup_vs_k.png").exists()


@pytest.mark.parametrize("script", ["train_toy.py", "train_task.py", "bench.py", "specstream_minimal.py", "decode.py",
                                    "generate.py", "validate.py", "data.py"])
def test_scripts_have_help(script):
    out = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0 and "usage" in out.stdout.lower()


def test_bench_without_checkpoint_says_what_to_do(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "speed", "--toy-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode != 0 and "train_toy.py" in (out.stdout + out.stderr)


def test_train_task_quick_and_bench_task(tmp_path):
    """The real-task pipeline end to end on a tiny model: base, NTP LoRA, SS LoRA, pruning adapter, evaluation."""
    require_task_data()
    import bench
    import train_task
    out = tmp_path / "ckpt"
    paths = train_task.train_task(dataclasses.replace(train_task.QUICK, task="e2e"), str(out), quiet=True)
    assert sorted(os.listdir(out)) == ["base.pt", "draft_base.pt", "e2e_draft.pt", "e2e_medusa_frozen_self.pt",
                                       "e2e_medusa_frozen_self_pruned.pt", "e2e_ntp.pt", "e2e_self_targets.json",
                                       "e2e_ss_frozen_self.pt", "e2e_ss_frozen_self_pruned.pt"]
    assert load_model(paths["ss_frozen_self_pruned"]).config.n_streams == 4
    assert load_model(paths["medusa_frozen_self_pruned"]).config.n_medusa_heads == 4
    assert load_model(paths["draft"]).config.n_layer == 1
    bench.main(["task", "--task", "e2e", "--task-dir", str(out), "--results-dir", str(tmp_path / "res"),
                "--n-eval", "3", "--prompts", "2", "--repeats", "1"])
    import json
    results = json.loads((tmp_path / "res" / "e2e" / "results.json").read_text())
    assert set(results["quality"]) == {"target", "ss", "medusa"}
    assert set(results["quality"]["target"]) == {"bleu", "rougeL", "name seen", "name unseen", "near seen",
                                                 "near unseen"}
    assert {r["method"] for r in results["rows"]} == {"autoregressive", "ss", "medusa", "two-model", "prompt lookup"}
    assert (tmp_path / "res" / "e2e" / "results.md").exists()
    bench.main(["ablation", "--task", "e2e", "--task-dir", str(out), "--results-dir", str(tmp_path / "res"),
                "--recipes", "ss_frozen_self", "--mr-values", "seen", "--n-eval", "2", "--prompts", "1",
                "--repeats", "1"])
    assert "whose values all occur in training" in (tmp_path / "res" / "e2e" / "ablation_seen_values.md").read_text()
    bench.main(["study", "--task", "e2e", "--task-dir", str(out), "--results-dir", str(tmp_path / "res"),
                "--recipes", "ss_frozen_self", "medusa_frozen_self", "ss_frozen_self", "--values", "4", "4", "4",
                "--label", "steps", "--name", "steps", "--prompts", "2", "--draft-vocabs", "0", "0", "30"])
    study = json.loads((tmp_path / "res" / "e2e" / "study_steps.json").read_text())
    assert [(r["method"], r["k"], r["draft_vocab"]) for r in study["rows"]] == [
        (m, k, n) for m, n in (("ss", 0), ("medusa", 0), ("ss", 30)) for k in (1, 2, 3, 4)]
    assert all(r["same"] == 2 and r["cr"] >= 1 for r in study["rows"])  # frozen mode: the next-token model's output
    assert all(r["cr"] <= study["perfect_drafter_cr"]["4"] for r in study["rows"])  # γ = 4: no drafter does better
    assert "--draft-vocabs 0 0 30" in study["command"]
    assert (tmp_path / "res" / "e2e" / "study_steps.png").exists()
    # the SS-only path (DialogSum in `make tasks`)
    recipe = ["--mode", "shared", "--stream-targets", "data"]  # (the paper's v1 recipe; and no slow self-targets)
    train_task.train_task(dataclasses.replace(train_task.QUICK, task="dialogsum", methods=("ss",), mode="shared",
                                              stream_targets="data"), str(out), quiet=True)
    bench.main(["task", "--task", "dialogsum", "--task-dir", str(out), "--results-dir", str(tmp_path / "res"),
                "--n-eval", "2", "--prompts", "1", "--repeats", "1", "--methods", "ss"] + recipe)
    results = json.loads((tmp_path / "res" / "dialogsum" / "results.json").read_text())
    assert {r["method"] for r in results["rows"]} == {"autoregressive", "ss"}
    assert set(results["quality"]["ss"]) == {"rouge1", "rouge2", "rougeL"}


def test_bases_only_pretrains_the_shared_bases_that_tasks_then_reuse(tmp_path):
    """`train_task.py --bases-only` (the first step of `make train-tasks`) writes base and draft_base and nothing
    else; a task run afterwards finds them and does not train them again; no --task without it is an error."""
    require_task_data()
    import train_task
    out = tmp_path / "ckpt"
    paths = train_task.train_task(dataclasses.replace(train_task.QUICK, bases_only=True), str(out), quiet=True)
    assert sorted(os.listdir(out)) == ["base.pt", "draft_base.pt"] and set(paths) == {"base", "draft_base"}
    before = {name: (out / name).stat().st_mtime_ns for name in ("base.pt", "draft_base.pt")}
    train_task.train_task(dataclasses.replace(train_task.QUICK, task="sql", methods=("draft",)), str(out), quiet=True)
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before
    assert (out / "sql_draft.pt").exists()
    with pytest.raises(SystemExit):
        train_task.parse(["--quick"])


def test_task_command_line_builds_the_recipe(capsys):
    """Every flag of train_task.py but --out-dir, --overwrite, --unverified-data and --quick sets a TaskRecipe
    field; --quick replaces the model size and steps (over any given flag, with a warning that names it) and moves
    the default folder to checkpoints/tasks_quick."""
    import train_task
    from train_task import QUICK, TaskRecipe, parse
    assert parse(["--task", "e2e"]) == (TaskRecipe(task="e2e"), "checkpoints/tasks", False)
    assert capsys.readouterr().err == ""
    assert parse(["--task", "sql", "--quick", "--ft-steps", "9", "--method", "ss", "draft"]) == \
        (dataclasses.replace(QUICK, task="sql", methods=("ss", "draft")), "checkpoints/tasks_quick", False)
    assert capsys.readouterr().err == ("warning: --quick sets --ft-steps=4, not the given 9 — leave out --quick to "
                                       "train with 9\n")
    assert parse(["--bases-only", "--quick", "--out-dir", "x", "--overwrite"]) == \
        (dataclasses.replace(QUICK, bases_only=True), "x", True)
    flags = {a.dest for a in train_task.parser()._actions} - {"help", "out_dir", "quick", "method", "overwrite",
                                                             "unverified_data"} | {"methods"}
    assert flags == {f.name for f in dataclasses.fields(TaskRecipe)}
    with pytest.raises(ValueError, match="stream-fraction"):
        parse(["--task", "e2e", "--stream-fraction", "0"])


def test_e2e_test_mrs_split_by_values_seen_in_training():
    """`bench.py ablation --mr-values seen|unseen`: the two subsets partition the test MRs; "seen" keeps exactly the
    MRs whose every attribute value occurs in a training MR (the training file has coffee shops only: no pub)."""
    require_task_data()
    import argparse
    from benchmarks.tasks import by_training_values
    from data import load_task, mr_values
    test = load_task("e2e", "test", None, delexicalised=True)
    known = {kv for ex in load_task("e2e", "train", None, True) for kv in mr_values(ex.prompt).items()}
    args, ids = argparse.Namespace(task="e2e", data_dir=None), list(range(len(test)))
    seen, seen_ids = by_training_values(args, test, ids, seen=True)
    unseen, unseen_ids = by_training_values(args, test, ids, seen=False)
    assert sorted(seen_ids + unseen_ids) == ids and seen and unseen
    assert all(set(mr_values(ex.prompt).items()) <= known for ex in seen)
    assert all(not set(mr_values(ex.prompt).items()) <= known for ex in unseen)
    assert any(mr_values(ex.prompt).get("eatType") == "pub" for ex in unseen)
    with pytest.raises(SystemExit, match="E2E"):
        by_training_values(argparse.Namespace(task="sql", data_dir=None), test, ids, seen=True)


def test_quality_metrics():
    from benchmarks import report
    refs = [["the cat sat on the mat", "a cat sat on a mat"], ["select * from t"]]
    assert report.quality("sql", ["SELECT *  from T", "x"], [["select * from t"], ["y"]]) == dict(exact_match=50.0)
    perfect = report.quality("e2e", ["the cat sat on the mat"], refs[:1])
    assert perfect["bleu"] > 99 and perfect["rougeL"] > 99
    assert report.quality("e2e", ["dogs run"], refs[:1])["rougeL"] == 0
    d = report.quality("dialogsum", ["a cat sat on a mat"], refs[:1])
    assert set(d) == {"rouge1", "rouge2", "rougeL"} and d["rouge1"] > 99  # best over the references


def test_sample_stream_rows_picks_a_share_of_the_positions_with_stream_targets():
    from train import sample_stream_rows
    targets = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [5, 6, 7, 8, 9, 10, -1, -1]])
    loss_mask = torch.zeros(2, 8, dtype=torch.bool)
    loss_mask[:, 4:] = True  # completions: targets[:, 4:]; stream j at t aims at targets[:, t + j]
    assert sample_stream_rows(targets, loss_mask, 2, 1.0) is None
    assert sample_stream_rows(targets, loss_mask, 0, 0.5) is None
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        rows = sample_stream_rows(targets, loss_mask, 2, 0.5)
        assert rows.tolist() == sorted(rows.tolist()) and len(rows) == 3  # ceil(0.5 * 5 candidates)
        seen |= set(rows.tolist())
    assert seen == {2, 3, 4, 5, 6}, seen  # t + j in 4..7 for j in 1..2: t in 2..6


def test_bench_draftcost_on_quick_models(tmp_path, capsys):
    require_task_data()
    import bench
    import train_task
    out = tmp_path / "ckpt"
    recipe = ["--stream-targets", "data"]  # self-targets of 4,347 SQL questions would take minutes here
    train_task.train_task(dataclasses.replace(train_task.QUICK, task="sql", methods=("ss", "medusa"),
                                              stream_targets="data"), str(out), quiet=True)
    bench.main(["draftcost", "--task", "sql", "--task-dir", str(out)] + recipe)
    assert "Medusa heads" in capsys.readouterr().out


def test_drafter_steps_change_the_drafter_stage_only(tmp_path):
    """--drafter-steps trains the SS stage for its own number of steps; the next-token model is the same."""
    require_task_data()
    import train_task
    recipe = dataclasses.replace(train_task.QUICK, task="e2e", methods=("ss",), stream_targets="data")
    a = train_task.train_task(recipe, str(tmp_path / "a"), quiet=True)
    b = train_task.train_task(dataclasses.replace(recipe, drafter_steps=7), str(tmp_path / "b"), quiet=True)
    ntp_a, ntp_b = (torch.load(p["ntp"], weights_only=True) for p in (a, b))
    assert all(torch.equal(ntp_a["model"][k], ntp_b["model"][k]) for k in ntp_a["model"])
    steps = [torch.load(p["ss_frozen_data"], weights_only=True)["step"] for p in (a, b)]
    assert steps == [recipe.ft_steps, 7]
