"""A run killed in any stage and run again ends with the weights of a run that was never interrupted, bit for bit
(one thread); bases trained first, then a task, give the models of one run doing both; a checkpoint is reused
only when the inputs it records match the run's, else refused by name, or retrained with overwrite."""
import dataclasses
import json
import os

import pytest
import torch

import train
import train_task
import train_toy
from train_toy import TINY, train_pipeline
from helpers import require_task_data


class Killed(Exception):
    """What the patched training raises: the process dying at that point."""


def killing(kills: dict[str, int]):
    """A train_stage that saves every 2 steps and dies when it asks for the batch of step kills[prefix] in the stage
    whose name starts with prefix (save_every changes no result)."""
    def train_stage(model, get_batch, stage, *args, **kwargs):
        at = next((step for prefix, step in kills.items() if stage.name.startswith(prefix)), None)

        def batches(step):
            if step == at:
                raise Killed(f"{stage.name} at step {step}")
            return get_batch(step)
        return train.train_stage(model, batches, dataclasses.replace(stage, save_every=2), *args, **kwargs)
    return train_stage


def weights(folder) -> dict[str, dict[str, torch.Tensor]]:
    """Every checkpoint's weights, and whether it is done, by file name."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".pt"):
            ckpt = torch.load(os.path.join(folder, name), weights_only=True)
            out[name] = dict(done=ckpt["done"], **ckpt["model"])
    return out


def assert_same_checkpoints(a, b):
    wa, wb = weights(a), weights(b)
    assert list(wa) == list(wb)
    for name in wa:
        assert wa[name]["done"] is wb[name]["done"] is True, name
        for key, t in wa[name].items():
            if key != "done":
                assert torch.equal(t, wb[name][key]), f"{name}: {key}"


def test_toy_run_killed_in_every_stage_resumes_to_the_straight_run(tmp_path, monkeypatch):
    """Killed before the first periodic save and after one, in each of the three stages: the stage's model
    (LoRA, streams, pruning adapter) is initialised from its own seed, so a stage started after the previous one
    was loaded from its checkpoint starts from the same weights as in one straight run."""
    straight, _, _ = train_pipeline(TINY, str(tmp_path / "straight"), quiet=True)
    for kills in ({"pretrain": 1}, {"pretrain": 3}, {"streams": 1}, {"streams": 3}, {"pruning": 1}, {"pruning": 2}):
        monkeypatch.setattr(train_toy, "train_stage", killing(kills))
        with pytest.raises(Killed):
            train_pipeline(TINY, str(tmp_path / "killed"), quiet=True)
    monkeypatch.undo()
    resumed, _, _ = train_pipeline(TINY, str(tmp_path / "killed"), quiet=True)
    assert_same_checkpoints(tmp_path / "straight", tmp_path / "killed")
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))


@pytest.fixture
def fast_tasks(monkeypatch):
    """The task pipeline with its vocabulary built once per test and self-distillation in chunks of 4 prompts."""
    require_task_data()
    vocab = train_task.build_vocab(None)
    monkeypatch.setattr(train_task, "build_vocab", lambda data_dir: vocab)
    monkeypatch.setattr(train_task, "SELF_TARGET_CHUNK", 4)


def test_quick_task_run_killed_in_every_stage_resumes_to_the_straight_run(tmp_path, monkeypatch, fast_tasks):
    """--quick E2E, SS with self-distilled targets: killed in the next-token stage after a periodic save, while
    generating the self-distillation targets (after the first chunk), in the drafter stage before and after a
    periodic save, and in the pruning stage; every checkpoint and the targets equal the straight run's."""
    recipe = dataclasses.replace(train_task.QUICK, task="e2e", methods=("ss",))
    train_task.train_task(recipe, str(tmp_path / "straight"), quiet=True)
    real = train_task.greedy_continuations
    calls = []

    def dies_on_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed("self-distillation")
        return real(*args, **kwargs)

    for kills in ({"e2e: next-token": 3}, {}, {"e2e: ss_frozen_self (": 1}, {"e2e: ss_frozen_self (": 3},
                  {"e2e: ss_frozen_self pruning": 1}):
        monkeypatch.setattr(train_task, "train_stage", killing(kills))
        monkeypatch.setattr(train_task, "greedy_continuations", dies_on_second_chunk if not kills else real)
        with pytest.raises(Killed):
            train_task.train_task(recipe, str(tmp_path / "killed"), quiet=True)
    monkeypatch.setattr(train_task, "train_stage", train.train_stage)
    train_task.train_task(recipe, str(tmp_path / "killed"), quiet=True)
    assert_same_checkpoints(tmp_path / "straight", tmp_path / "killed")
    targets = [json.loads((tmp_path / d / "e2e_self_targets.json").read_text()) for d in ("straight", "killed")]
    assert targets[0] == targets[1]


def test_bases_first_then_task_equals_one_run(tmp_path, fast_tasks):
    """`train_task.py --bases-only` then `--task` (make train-tasks) trains the models of one run doing both: the
    draft base, trained after the next-token model in one run, starts from its own seed either way."""
    recipe = dataclasses.replace(train_task.QUICK, task="e2e", methods=("draft",))
    train_task.train_task(recipe, str(tmp_path / "one"), quiet=True)
    train_task.train_task(dataclasses.replace(recipe, bases_only=True), str(tmp_path / "two"), quiet=True)
    train_task.train_task(recipe, str(tmp_path / "two"), quiet=True)
    assert_same_checkpoints(tmp_path / "one", tmp_path / "two")


def test_checkpoints_are_reused_only_for_the_same_inputs(tmp_path, capsys):
    """A rerun with the same recipe writes nothing; other settings are refused by name before anything is written;
    overwrite=True retrains exactly the stages whose inputs changed (and those after them: their parent changed),
    to the models of a fresh run; a checkpoint of an earlier version (no record) is reused with a warning."""
    folder = tmp_path / "toy"
    train_pipeline(TINY, str(folder), quiet=True)
    written = lambda: {name: (folder / name).stat().st_mtime_ns for name in sorted(os.listdir(folder))}
    before = written()
    train_pipeline(TINY, str(folder), quiet=True)
    assert written() == before
    cases = [(dict(pretrain_steps=8), "base.pt was trained with other inputs (steps 6 → 8) — use another --out-dir, "
                                      "or --overwrite to retrain the stages whose inputs changed"),
             (dict(n_embd=32), "base.pt was trained with other inputs (n_embd 16 → 32)"),
             (dict(seed=1), "base.pt was trained with other inputs (seed 0 → 1, the training data changed)"),
             (dict(batch_size=5), "base.pt was trained with other inputs (batch_size 4 → 5)"),
             (dict(ss_lr=0.01), "ss_gamma2.pt was trained with other inputs (lr 0.005 → 0.01)"),
             (dict(prune_steps=4), "ss_gamma2_pruned.pt was trained with other inputs (steps 3 → 4)")]
    for change, message in cases:
        with pytest.raises(ValueError) as e:
            train_pipeline(dataclasses.replace(TINY, **change), str(folder), quiet=True)
        assert message in str(e.value)
    assert written() == before
    for change, retrained in ((dict(prune_steps=4), {"ss_gamma2_pruned.pt"}),
                              (dict(prune_steps=4, lr=1e-3), {"base.pt", "ss_gamma2.pt", "ss_gamma2_pruned.pt"})):
        recipe = dataclasses.replace(TINY, **change)
        train_pipeline(recipe, str(folder), quiet=True, overwrite=True)
        after = written()
        assert {name for name in after if after[name] != before[name]} == retrained
        assert all(l.startswith("warning: retraining ") for l in capsys.readouterr().err.splitlines())
        train_pipeline(recipe, str(tmp_path / f"fresh{len(retrained)}"), quiet=True)
        assert_same_checkpoints(folder, tmp_path / f"fresh{len(retrained)}")
        before = after
    ckpt = torch.load(folder / "base.pt", weights_only=True)
    del ckpt["inputs"]
    torch.save(ckpt, folder / "base.pt")
    train_pipeline(recipe, str(folder), quiet=True)
    assert "base.pt records no training inputs (an earlier version wrote it): reused unchecked" in capsys.readouterr().err
    assert written() == {**before, "base.pt": (folder / "base.pt").stat().st_mtime_ns}


def test_a_record_without_a_later_config_field_counts_as_its_default():
    """A checkpoint written before a model-config field existed (here the stream adapter's placement) matches a run
    at that field's default and no other: the model it holds is the default one."""
    record = dict(name="streams", steps=5, n_embd=16, stream_adapter_rank=4, stream_adapter_in="attn+mlp")
    older = {k: v for k, v in record.items() if k != "stream_adapter_in"}
    assert train.differences(older, record) == []
    assert train.differences(older, {**record, "stream_adapter_in": "mlp"}) == ["stream_adapter_in 'attn+mlp' → 'mlp'"]
    assert train.differences({**older, "unknown": 1}, record) == ["unknown 1 → 'unset'"]
