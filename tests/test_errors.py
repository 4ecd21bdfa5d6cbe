"""Bad input and faults, each given to a command as a user would: every case ends with one line, `error: <what> —
<how to fix>`, and a non-zero exit status (never a traceback), or, where the input is changed but usable, runs
with a `warning:` line first. The table below is the list of cases; each row is one command line, run in-process
through the script's main(argv), and the first line it prints. Tiny models are made once for the whole table."""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import bench
import data
import decode
import train_task
import train_toy
import validate
from train_toy import TINY, train_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RETRAIN = "use another --out-dir, or --overwrite to retrain the stages whose inputs changed"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A tiny toy run (toy/), its export (exp/) and an empty folder for each case's files (tmp/)."""
    root = tmp_path_factory.mktemp("errors")
    train_pipeline(TINY, str(root / "toy"), quiet=True)
    validate.export(str(root / "toy" / "ss_gamma2_pruned.pt"), str(root / "exp"))
    return dict(toy=str(root / "toy"), exp=str(root / "exp"), tmp=str(root / "tmp"), root=str(root))


def tiny_flags(**changes) -> list[str]:
    """train_toy.py's flags for the TINY recipe with `changes`."""
    recipe = dataclasses.replace(TINY, **changes)
    return [arg for f in dataclasses.fields(recipe)
            for arg in ("--" + f.name.replace("_", "-"), str(getattr(recipe, f.name)))]


# ---- what a case writes before its command runs (f: the module's files) ----

def edited_checkpoint(f, name: str, edit) -> None:
    """tmp/NAME: the toy SS checkpoint, changed by edit(ckpt)."""
    ckpt = torch.load(os.path.join(f["toy"], "ss_gamma2_pruned.pt"), weights_only=True)
    edit(ckpt)
    torch.save(ckpt, os.path.join(f["tmp"], name))


def edited_export(f, name: str, file: str, edit) -> None:
    """tmp/NAME: a copy of the export whose FILE's bytes are replaced by edit(bytes)."""
    shutil.copytree(f["exp"], os.path.join(f["tmp"], name))
    path = os.path.join(f["tmp"], name, file)
    with open(path, "rb") as fh:
        raw = fh.read()
    with open(path, "wb") as fh:
        fh.write(edit(raw))


def nan_safetensors(f) -> None:
    from safetensors.torch import load_file, save_file
    shutil.copytree(f["exp"], os.path.join(f["tmp"], "nan"))
    path = os.path.join(f["tmp"], "nan", "model.safetensors")
    weights = load_file(path)
    weights["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")
    save_file(weights, path, metadata={"format": "pt"})


def nan_weight(ckpt):
    ckpt["model"]["transformer.h.1.attn.c_proj.weight"][0, 0] = float("nan")


def edited_trace(f, name: str, edit) -> None:
    """tmp/NAME: the committed reference trace with edit(records) applied."""
    with open(os.path.join(ROOT, "reference", "trace_k2.jsonl")) as fh:
        records = [json.loads(line) for line in fh]
    edit(records)
    with open(os.path.join(f["tmp"], name), "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)


def first_call(records) -> int:
    return next(i for i, r in enumerate(records) if r.get("type") == "call")


def data_folder(f, content) -> None:
    """tmp/data/e2e/devset.csv: the published file changed by content(bytes)."""
    os.makedirs(os.path.join(f["tmp"], "data", "e2e"), exist_ok=True)
    with open(data.resolve_data_dir() / "e2e" / "devset.csv", "rb") as fh:
        raw = fh.read()
    with open(os.path.join(f["tmp"], "data", "e2e", "devset.csv"), "wb") as fh:
        fh.write(content(raw))


def needs_task_data():
    try:
        data.resolve_data_dir()
    except FileNotFoundError as e:
        pytest.skip(f"no real-task data here: {e}")


SETUPS = {
    "noeos": lambda f: edited_checkpoint(f, "noeos.pt", lambda c: c["vocabulary"].__setitem__(0, "<end>")),
    "short": lambda f: edited_checkpoint(f, "short.pt", lambda c: c.__setitem__("vocabulary", c["vocabulary"][:-3])),
    "noembd": lambda f: edited_checkpoint(f, "noembd.pt", lambda c: c["config"].pop("n_embd")),
    "nan_pt": lambda f: edited_checkpoint(f, "nan.pt", nan_weight),
    "unfinished": lambda f: edited_checkpoint(f, "ss_x_pruned.pt", lambda c: c.update(done=False, step=2)),
    "cut": lambda f: edited_export(f, "cut", "model.safetensors", lambda raw: raw[:len(raw) // 2]),
    "garbage": lambda f: edited_export(f, "garbage", "model.safetensors", lambda raw: b"\x00garbage" * 50),
    "config": lambda f: edited_export(f, "config", "config.json", lambda raw: raw[:-20]),
    "nan_st": nan_safetensors,
    "a_file": lambda f: open(os.path.join(f["tmp"], "a_file"), "w").close(),
    "call_str": lambda f: edited_trace(f, "call_str.jsonl", lambda r: r[first_call(r)].__setitem__("call", "0")),
    "list": lambda f: edited_trace(f, "list.jsonl", lambda r: r.__setitem__(first_call(r), ["call", 0])),
    "no_settings": lambda f: edited_trace(f, "no_settings.jsonl", lambda r: r[0].pop("settings")),
    "dup_ids": lambda f: open(os.path.join(f["tmp"], "dup.jsonl"), "w").write(
        '{"id": "a", "prompt_ids": [0, 4], "max_new_tokens": 5, "eos_id": 0}\n' * 2),
    "truncated_csv": lambda f: (needs_task_data(), data_folder(f, lambda raw: raw[:len(raw) // 2])),
    "binary_csv": lambda f: (needs_task_data(), data_folder(f, lambda raw: b"\xff\xfe\x00" + raw[3:])),
}

DECODE = ["--model", "{toy}", "--prompt", "the"]
CASES = [  # (id, command, argv, what is written first (SETUPS), the first line: "..." stands for any text)
    # decoding one prompt: decode.py (python generate.py forwards to it)
    ("max_new_tokens_0", decode.main, DECODE + ["--max-new-tokens", "0"], None,
     "error: argument --max-new-tokens: '0' must be an integer >= 1 — see decode.py --help"),
    ("threads_0", decode.main, DECODE + ["--threads", "0"], None,
     "error: argument --threads: '0' must be an integer >= 1 — see decode.py --help"),
    ("threads_-1", decode.main, DECODE + ["--threads=-1"], None,
     "error: argument --threads: '-1' must be an integer >= 1 — see decode.py --help"),
    ("missing_checkpoint", decode.main, ["--model", "{tmp}/none.pt", "--prompt", "the"], None,
     "error: checkpoint {tmp}/none.pt does not exist — train one first (python train_toy.py, or python "
     "train_task.py --task e2e) or give the path of a .pt file"),
    ("vocabulary_without_eos", decode.main, ["--model", "{tmp}/noeos.pt", "--prompt", "the"], "noeos",
     "error: the vocabulary of {tmp}/noeos.pt has no <eos> word: it is not a toy vocabulary of train_toy.py — train "
     "the model again"),
    ("vocabulary_too_short", decode.main, ["--model", "{tmp}/short.pt", "--prompt", "the"], "short",
     "error: the vocabulary of {tmp}/short.pt has 78 tokens but its model has vocab_size=81: the checkpoint is "
     "inconsistent — train the model again"),
    ("config_without_n_embd", decode.main, ["--model", "{tmp}/noembd.pt", "--prompt", "the"], "noembd",
     "error: {tmp}/noembd.pt: the config lacks ['n_embd'] — write it again with this version"),
    ("nan_in_checkpoint", decode.main, ["--model", "{tmp}/nan.pt", "--prompt", "the"], "nan_pt",
     "error: {tmp}/nan.pt: tensor transformer.h.1.attn.c_proj.weight holds 1 NaN or inf value(s): the weights are "
     "broken — train again or restore the file"),
    ("unfinished_checkpoint", decode.main, ["--model", "{tmp}/ss_x_pruned.pt", "--prompt", "the",
                                            "--max-new-tokens", "4"], "unfinished",
     "warning: {tmp}/ss_x_pruned.pt is an unfinished checkpoint (stage 'pruning adapter' stopped at step 2): its "
     "run was interrupted — run the training command again to finish it"),
    # the validation kit: validate.py
    ("safetensors_cut", validate.main, ["trace", "--model", "{tmp}/cut", "--prompts", "reference/prompts.jsonl",
                                        "--out", "{tmp}/t.jsonl"], "cut",
     "error: {tmp}/cut/model.safetensors is not a readable safetensors file (...) — export it again"),
    ("safetensors_garbage", validate.main, ["trace", "--model", "{tmp}/garbage", "--prompts",
                                            "reference/prompts.jsonl", "--out", "{tmp}/t.jsonl"], "garbage",
     "error: {tmp}/garbage/model.safetensors is not a readable safetensors file (...) — export it again"),
    ("config_json_invalid", validate.main, ["trace", "--model", "{tmp}/config", "--prompts",
                                            "reference/prompts.jsonl", "--out", "{tmp}/t.jsonl"], "config",
     "error: {tmp}/config/config.json: line ...: not valid JSON (...) — write it again with validate.py export"),
    ("nan_in_safetensors", validate.main, ["trace", "--model", "{tmp}/nan", "--prompts", "reference/prompts.jsonl",
                                           "--out", "{tmp}/t.jsonl"], "nan_st",
     "error: {tmp}/nan: tensor transformer.h.0.mlp.c_fc.weight holds 1 NaN or inf value(s): the weights are broken "
     "— train again or restore the file"),
    ("duplicate_prompt_ids", validate.main, ["trace", "--model", "{exp}", "--prompts", "{tmp}/dup.jsonl",
                                             "--out", "{tmp}/t.jsonl"], "dup_ids",
     'error: {tmp}/dup.jsonl, line 2: prompt id "a" again (first at line 1) — give every prompt its own id'),
    ("minimal_k_0", validate.main, ["minimal", "--model", "{exp}", "--prompts", "reference/prompts.jsonl",
                                    "--out", "{tmp}/m.jsonl", "--k", "0"], None,
     "error: argument --k: '0' must be an integer >= 1 — see validate.py minimal --help"),
    ("export_into_a_file", validate.main, ["export", "{toy}/ss_gamma2_pruned.pt", "{tmp}/a_file"], "a_file",
     "error: {tmp}/a_file is a file, not a folder — give the folder to export into"),
    ("trace_call_a_string", validate.main, ["compare", "reference/trace_k2.jsonl", "{tmp}/call_str.jsonl"],
     "call_str", 'error: {tmp}/call_str.jsonl, line 3: call must be an integer >= 0 (0 = the prefill), got "0" — '
     'see the trace format in VALIDATING.md §3'),
    ("trace_record_a_list", validate.main, ["compare", "reference/trace_k2.jsonl", "{tmp}/list.jsonl"], "list",
     'error: {tmp}/list.jsonl, line 3: a JSON list where an object was expected: ["call", 0] — write one JSON '
     'object per line'),
    ("trace_header_without_settings", validate.main, ["compare", "reference/trace_k2.jsonl",
                                                      "{tmp}/no_settings.jsonl"], "no_settings",
     "error: {tmp}/no_settings.jsonl, line 1: the header needs its decoding settings, an object — see the trace "
     "format in VALIDATING.md §3"),
    ("compare_atol_-1", validate.main, ["compare", "reference/trace_k2.jsonl", "reference/trace_k2.jsonl",
                                        "--atol=-1"], None,
     "error: argument --atol: '-1' must be a number >= 0 — see validate.py compare --help"),
    # data
    ("download_to_a_file", data.main, ["download", "--to", "{tmp}/a_file"], "a_file",
     "error: {tmp}/a_file is a file, not a folder — give --to the folder to download into"),
    ("devset_cut_in_half", train_task.main, ["--task", "e2e", "--quick", "--data-dir", "{tmp}/data", "--out-dir",
                                             "{tmp}/tasks"], "truncated_csv",
     "error: {tmp}/data/e2e/devset.csv has 580,652 bytes, not 1,161,305 (truncated or edited?) — run `make data` "
     "(python data.py download --to DIR) for the published data sets, or pass --unverified-data to use your own"),
    ("binary_csv", train_task.main, ["--task", "e2e", "--quick", "--data-dir", "{tmp}/data", "--out-dir",
                                     "{tmp}/tasks", "--unverified-data"], "binary_csv",
     "error: {tmp}/data/e2e/devset.csv: not UTF-8 text (invalid start byte at byte 0) — give the data set's text "
     "file (make data fetches the published ones)"),
    # training: train_toy.py
    ("toy_gamma_0", train_toy.main, ["--gamma", "0"], None,
     "error: --gamma=0 must be >= 1 — give --gamma a value >= 1"),
    ("toy_pretrain_steps_0", train_toy.main, ["--pretrain-steps", "0"], None,
     "error: --pretrain-steps=0 must be >= 1 — give --pretrain-steps a value >= 1"),
    ("toy_batch_size_0", train_toy.main, ["--batch-size", "0"], None,
     "error: --batch-size=0 must be >= 1 — give --batch-size a value >= 1"),
    ("toy_n_stories_0", train_toy.main, ["--n-stories", "0"], None,
     "error: --n-stories=0 must be >= 1 — give --n-stories a value >= 1"),
    ("toy_n_stories_1", train_toy.main, tiny_flags(n_stories=1, train_block=60) + ["--out-dir", "{tmp}/toy1"],
     None, "error: --n-stories=1 give 37 tokens, too few for training windows of --train-block=60 — use more "
     "stories"),
    ("toy_ss_steps_-5", train_toy.main, ["--ss-steps=-5", "--out-dir", "{tmp}/toy2"], None,
     "error: --ss-steps=-5 must be >= 1 — give --ss-steps a value >= 1"),
    ("toy_unknown_flag", train_toy.main, ["--gama", "2"], None,
     "error: unrecognized arguments: --gama 2 — see train_toy.py --help"),
    ("toy_rerun_other_steps", train_toy.main, tiny_flags(pretrain_steps=8) + ["--out-dir", "{toy}"], None,
     "error: {toy}/base.pt was trained with other inputs (steps 6 → 8) — " + RETRAIN),
    ("toy_rerun_other_n_embd", train_toy.main, tiny_flags(n_embd=32) + ["--out-dir", "{toy}"], None,
     "error: {toy}/base.pt was trained with other inputs (n_embd 16 → 32) — " + RETRAIN),
    ("toy_rerun_other_lr", train_toy.main, tiny_flags(ss_lr=0.01) + ["--out-dir", "{toy}"], None,
     "error: {toy}/ss_gamma2.pt was trained with other inputs (lr 0.005 → 0.01) — " + RETRAIN),
    ("toy_rerun_other_seed", train_toy.main, tiny_flags(seed=1) + ["--out-dir", "{toy}"], None,
     "error: {toy}/base.pt was trained with other inputs (seed 0 → 1, the training data changed) — " + RETRAIN),
    # training: train_task.py
    ("task_gamma_0", train_task.main, ["--task", "e2e", "--quick", "--gamma", "0"], None,
     "error: --gamma=0 must be >= 1 — give --gamma a value >= 1"),
    ("task_self_target_prompts_-3", train_task.main, ["--task", "e2e", "--self-target-prompts=-3"], None,
     "error: --self-target-prompts=-3 must be >= 0 — give --self-target-prompts a value >= 0"),
    ("task_without_task", train_task.main, ["--quick"], None,
     "error: --task is required (or --bases-only, to pretrain the shared bases) — see train_task.py --help"),
    ("quick_overrides_ft_steps", train_task.main, ["--task", "e2e", "--quick", "--ft-steps", "9", "--out-dir",
                                                   "{tmp}/quick"], None,
     "warning: --quick sets --ft-steps=4, not the given 9 — leave out --quick to train with 9"),
    # benchmarks: bench.py
    ("bench_prompts_0", bench.main, ["speed", "--toy-dir", "{toy}", "--prompts", "0"], None,
     "error: argument --prompts: '0' must be an integer >= 1 — see bench.py speed --help"),
    ("bench_repeats_0", bench.main, ["speed", "--toy-dir", "{toy}", "--repeats", "0"], None,
     "error: argument --repeats: '0' must be an integer >= 1 — see bench.py speed --help"),
    ("bench_draftcost_without_checkpoints", bench.main, ["draftcost", "--task-dir", "{tmp}/nothing"], None,
     "error: {tmp}/nothing/e2e_ss_frozen_self_pruned.pt not found — train the task's SS and Medusa models first: "
     "`python train_task.py --task e2e --method ss medusa --mode frozen --stream-targets self --out-dir "
     "{tmp}/nothing`"),
    ("bench_without_toy_checkpoint", bench.main, ["speed", "--toy-dir", "{tmp}/nothing"], None,
     "error: {tmp}/nothing/ss_gamma6_pruned.pt not found — run `python train_toy.py --out-dir {tmp}/nothing` first "
     "(or make demo)"),
]
NO_GPU = "error: --device cuda: this machine has no CUDA GPU (or torch was built without CUDA) — use --device cpu"
GPU_CASES = [  # only where there is no GPU
    ("toy_device_cuda", train_toy.main, ["--device", "cuda", "--out-dir", "{tmp}/toy3"], None, NO_GPU),
    ("task_device_cuda", train_task.main, ["--task", "e2e", "--quick", "--device", "cuda"], None, NO_GPU),
    ("bench_device_cuda", bench.main, ["speed", "--toy-dir", "{toy}", "--device", "cuda"], None, NO_GPU),
]


def run(main, argv: list[str], capsys) -> tuple[list[str], int]:
    """The lines a command prints (stderr first: warnings and most errors go there) and its exit status."""
    try:
        status = main(argv) or 0
    except SystemExit as e:  # SystemExit("error: ...") prints its message on stderr and exits with status 1
        status = e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    out = capsys.readouterr()
    return [line for line in out.err.splitlines() + out.out.splitlines() if line.strip()], status


@pytest.mark.parametrize("case", CASES + (GPU_CASES if not torch.cuda.is_available() else []),
                         ids=lambda case: case[0])
def test_bad_input_gets_one_line(case, files, capsys, monkeypatch):
    name, main, argv, setup, expected = case
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(data, "ALLOW_UNVERIFIED", False)  # --unverified-data sets it for the process
    monkeypatch.setattr(data, "_UNVERIFIED", set())
    if name == "quick_overrides_ft_steps":  # the warning is the case: no need to train
        monkeypatch.setattr(train_task, "train_task", lambda *args, **kwargs: {})
    os.makedirs(files["tmp"], exist_ok=True)
    if setup:
        SETUPS[setup](files)
    lines, status = run(main, [a.format(**files) for a in argv], capsys)
    line, expected = (lines or [""])[0], expected.format(**files)
    assert re.fullmatch(".*".join(re.escape(part) for part in expected.split("...")), line), line
    if expected.startswith("warning:"):
        assert status == 0
    else:
        assert status != 0 and len(lines) == 1, lines  # the error line alone: no traceback
        if "--out-dir" in argv and argv[argv.index("--out-dir") + 1].startswith("{tmp}"):
            assert not os.path.exists(argv[argv.index("--out-dir") + 1].format(**files))  # nothing written


@pytest.mark.parametrize("argv", [["train_toy.py", "--gamma", "0"], ["generate.py", "--model", "x", "--prompt", "the",
                                                                    "--threads", "0"]])
def test_scripts_print_one_line_and_exit_non_zero(argv):
    """The same as a script (`python train_toy.py ...`; `python generate.py` is decode.py): one line on stderr."""
    out = subprocess.run([sys.executable] + argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode != 0 and out.stdout == "" and len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: ") and " — " in out.stderr
