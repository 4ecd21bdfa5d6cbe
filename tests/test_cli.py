"""`python decode.py` (also `python generate.py`): one prompt decoded from a checkpoint (toy and --quick task models), its output equal to
greedy AR, the --show tree with the accepted path marked, and the errors a user can make."""
import dataclasses
import os

import pytest
import torch

import decode
from generate import generate_autoregressive, generate_speculative
from checkpoint import load_model
from helpers import require_task_data, toy_greedy


def line(out: str, label: str) -> str:
    return next(l for l in out.splitlines() if l.startswith(label)).split(":", 1)[1].strip()


def test_toy_prompt_output_equals_greedy(toy_dir, capsys):
    _, data, _, greedy = toy_greedy(toy_dir, "the fox", 12)
    assert decode.main(["--model", str(toy_dir), "--prompt", "the fox", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "ss_gamma2_pruned.pt" in line(out, "model")  # the folder's SS checkpoint
    expected = data.decode([t for t in greedy if t != data.eos_id])
    assert line(out, "output") == expected and line(out, "greedy AR") == expected
    assert line(out, "equal to greedy AR") == "yes"
    assert "tokens per call" in out and "CR" in out


def test_show_marks_the_accepted_path(toy_dir, capsys):
    model, data, prompt, _ = toy_greedy(toy_dir, "the dog runs", 15)
    options = dict(k=2, tree_cap=5, prune_threshold=0.05, stream_pass="accepted")
    trace = generate_speculative(model, prompt, 15, eos_id=data.eos_id, trace=True, **options).trace
    assert decode.main(["--model", str(toy_dir / "ss_gamma2_pruned.pt"), "--prompt", "the dog runs",
                          "--max-new-tokens", "15", "--show", "--k", "2", "--tree-cap", "5", "--prune-threshold",
                          "0.05", "--stream-pass", "accepted"]) == 0
    calls = capsys.readouterr().out.split("\ncall ")[1:]
    assert len(calls) == len(trace)
    for text, step in zip(calls, trace):
        nodes = [l for l in text.splitlines() if "(depth " in l]
        assert len(nodes) == len(step.drafted)  # every drafted node, pruned ones marked "x"
        starred = [l.split("'")[1] for l in nodes if l.lstrip().startswith("*")]
        assert starred == [data.words[t] for t in step.tree.tokens[step.path].tolist()]
        assert sum(l.lstrip().startswith("x") for l in nodes) == len(step.drafted) - len(step.tree)
        assert "\033[" not in text  # no colour when stdout is not a terminal


def test_exit_status_1_when_the_outputs_differ(toy_dir, capsys, monkeypatch):
    real = decode.generate_autoregressive

    def wrong(*args, **kwargs):
        result = real(*args, **kwargs)
        result.tokens = [t + 1 for t in result.tokens]
        return result

    monkeypatch.setattr(decode, "generate_autoregressive", wrong)
    assert decode.main(["--model", str(toy_dir), "--prompt", "the fox", "--max-new-tokens", "8"]) == 1
    assert line(capsys.readouterr().out, "equal to greedy AR").startswith("NO")


@pytest.mark.parametrize("argv, message", [
    (["--model", "{dir}/missing.pt", "--prompt", "the"], "does not exist"),
    (["--model", "{dir}/base.pt", "--prompt", "the"], "without streams"),
    (["--model", "{dir}/ss_gamma2.pt", "--prompt", "the"], "no vocabulary"),
    (["--model", "{dir}", "--prompt", "the zebra"], "unknown word(s) ['zebra']"),
    (["--model", "{dir}", "--mr", "name[Aromi]"], "--mr is for E2E"),
    (["--model", "{dir}", "--prompt", "the", "--max-new-tokens", "500"], "block_size"),
    (["--model", "{dir}", "--prompt", "the fox jumps", "--max-new-tokens", "62"], "block_size=64"),
    (["--model", "{dir}", "--prompt", "the", "--k", "0"], "k=0"),
])
def test_errors_name_the_problem(toy_dir, argv, message):
    with pytest.raises(SystemExit) as e:
        decode.main([a.format(dir=toy_dir) for a in argv])
    assert message in str(e.value)


def test_inconsistent_or_unfinished_checkpoints(toy_dir, tmp_path, capsys):
    """A vocabulary without <eos> or of another size than the model's is refused; an unfinished checkpoint (a run
    interrupted in its stage) decodes with a warning that says so."""
    ckpt = torch.load(toy_dir / "ss_gamma2_pruned.pt", weights_only=True)
    cases = [(dict(vocabulary=["<end>"] + ckpt["vocabulary"][1:]), "has no <eos> word"),
             (dict(vocabulary=ckpt["vocabulary"][:-3]), "tokens but its model has vocab_size=")]
    for change, message in cases:
        torch.save({**ckpt, **change}, tmp_path / "ss_bad_pruned.pt")
        with pytest.raises(SystemExit, match=message):
            decode.main(["--model", str(tmp_path / "ss_bad_pruned.pt"), "--prompt", "the"])
    torch.save({**ckpt, "done": False, "step": 2}, tmp_path / "ss_bad_pruned.pt")
    assert decode.main(["--model", str(tmp_path / "ss_bad_pruned.pt"), "--prompt", "the", "--max-new-tokens", "4"]) == 0
    assert "is an unfinished checkpoint" in capsys.readouterr().err


def test_folder_picks_the_newest_ss_checkpoint(toy_dir, tmp_path, capsys):
    import shutil
    for name, mtime in (("ss_gamma2_pruned.pt", 2_000_000_000), ("ss_old_pruned.pt", 1_000_000_000)):
        shutil.copy(toy_dir / "ss_gamma2_pruned.pt", tmp_path / name)
        os.utime(tmp_path / name, (mtime, mtime))
    shutil.copy(toy_dir / "base.pt", tmp_path / "base.pt")  # not an SS checkpoint: never picked
    assert decode.find_checkpoint(str(tmp_path)) == str(tmp_path / "ss_gamma2_pruned.pt")
    assert "2 SS checkpoints" in capsys.readouterr().out


def test_folder_without_ss_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="holds no Speculative Streaming checkpoint"):
        decode.main(["--model", str(tmp_path), "--prompt", "the"])


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        decode.main(["--help"])
    assert e.value.code == 0 and "--prune-threshold" in capsys.readouterr().out


def test_e2e_quick_model_mr_is_delexicalised_and_output_equals_greedy(tmp_path, capsys):
    require_task_data()
    import data
    import train_task
    out = tmp_path / "tasks"
    recipe = dataclasses.replace(train_task.QUICK, task="e2e", methods=("ss",), stream_targets="data")
    train_task.train_task(recipe, str(out), quiet=True)
    mr = "name[Zanzibar Blue], eatType[pub], near[Quayside Arches]"
    assert decode.main(["--model", str(out), "--mr", mr, "--max-new-tokens", "12", "--k", "2"]) == 0
    printed = capsys.readouterr().out
    path = out / "e2e_ss_frozen_data_pruned.pt"
    assert str(path) in line(printed, "model")
    ckpt = torch.load(path, weights_only=True)
    vocab = data.CompactVocab.from_dict(ckpt["vocabulary"])
    model = load_model(str(path)).eval()
    model.merge_lora()
    ex = data.delexicalise(data.Example(mr, "", []))
    assert "Zanzibar" not in ex.prompt and ex.slots  # the model sees placeholders only
    prompt = data.prompt_ids(vocab, ex, model.config.block_size - 12 + 1)
    greedy = generate_autoregressive(model, prompt, 12, eos_id=data.EOS).tokens
    expected = data.relexicalise(vocab.decode([t for t in greedy if t != data.EOS]), ex.slots).strip()
    assert line(printed, "output") == expected and line(printed, "equal to greedy AR") == "yes"
    assert os.path.basename(str(path)) in line(printed, "model")
    # Input that is changed or not understood gets a warning: a malformed MR, a prompt cut to fit.
    for mr, warning in [("name[Aromi", "'name[Aromi' is not attribute[value]"), ("name[]", "'name[]' has no value"),
                        ("Name[Aromi]", "'Name' is not an E2E attribute"),
                        (", ".join(["food[Italian]"] * 150), "tokens are cut")]:
        assert decode.main(["--model", str(path), "--mr", mr, "--max-new-tokens", "12"]) == 0
        assert any(l.startswith("warning: ") and warning in l for l in capsys.readouterr().err.splitlines())
    assert decode.main(["--model", str(path), "--mr", "name[]", "--max-new-tokens", "12"]) == 0
    assert "X-name" not in line(capsys.readouterr().out, "output")  # no placeholder without a value to put back

