"""The validation kit (validate.py, the validation package): portable weights, golden traces, trace reading,
compare's causes, the outputs-only mode, ports on specstream_minimal.py and on Hugging Face transformers.
The bug zoo (wrong implementations compare must name) is tests/test_validate_zoo.py."""
import dataclasses
import json
import math
import os
import re

import pytest
import torch

import generate
import validate
from checkpoint import load_hf_gpt2, load_portable, save_checkpoint
from model import GPT
from validation import outputs, traces
from validation.compare import LOGPROB_ATOL, compare_traces
from validation.minimal import minimal_trace
from validation.records import read_prompts, read_trace, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, "reference")
REF_MODEL = os.path.join(REF, "model")


def read(path):
    return [json.loads(line) for line in open(path)]


def calls_of(path):
    return [r for r in read(path) if r["type"] == "call"]


@pytest.fixture(scope="module")
def small_prompts(tmp_path_factory):
    """Two of the reference prompts, with fewer new tokens: fast enough for the slow minimal implementation."""
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    write_jsonl(str(path), [dict(p, max_new_tokens=16) for p in read_prompts(f"{REF}/prompts.jsonl")[:2]])
    return str(path)


@pytest.fixture(scope="module")
def good_trace(small_prompts, tmp_path_factory):
    """The correct trace of the small prompts, k = 2, full tree."""
    return traces.trace(REF_MODEL, small_prompts, str(tmp_path_factory.mktemp("good") / "good.jsonl"), k=2)


def run(argv, capsys) -> tuple[int, str]:
    """validate.main's exit status and printed output."""
    capsys.readouterr()
    status = validate.main(argv)
    return status, capsys.readouterr().out


# ---- export ----

def trained_like(config):
    """A model with every kind of tensor set to random values (LoRA B too, so that merging matters)."""
    torch.manual_seed(0)
    m = GPT(config)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    return m.eval()


@pytest.mark.parametrize("extra", [dict(n_streams=3, n_msa_layers=2, lora_rank=4, prune_rank=2),
                                   dict(n_streams=0, n_msa_layers=1, n_medusa_heads=2, lora_rank=4)])
def test_export_round_trip_is_bit_exact(tiny_config, tmp_path, extra):
    config = tiny_config(**extra)
    m = trained_like(config)
    words = [f"w{i}" for i in range(config.vocab_size)]
    save_checkpoint(str(tmp_path / "ckpt.pt"), m, vocabulary=words)
    validate.export(str(tmp_path / "ckpt.pt"), str(tmp_path / "out"))
    loaded = load_portable(str(tmp_path / "out"))
    assert loaded.config.lora_rank == 0 and loaded.config.n_drafts == config.n_drafts
    m.merge_lora()
    own, back = m.state_dict(), loaded.state_dict()
    assert set(back) == {k for k in own if "lora_" not in k}
    assert all(torch.equal(own[k], back[k]) for k in back)
    idx = torch.randint(config.vocab_size, (2, 9))
    a, b = m(idx), loaded(idx)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.stream_logits, b.stream_logits)
    exported = json.load(open(tmp_path / "out" / "config.json"))["specstream"]
    assert exported == dataclasses.asdict(dataclasses.replace(config, lora_rank=0))
    vocab = json.load(open(tmp_path / "out" / "vocabulary.json"))
    assert vocab["kind"] == "words" and vocab["tokens"] == words


def test_export_base_loads_into_transformers_gpt2(tiny_config, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = tiny_config(n_streams=2, n_msa_layers=1, lora_rank=4, prune_rank=2)
    m = trained_like(config)
    save_checkpoint(str(tmp_path / "ckpt.pt"), m)
    validate.export(str(tmp_path / "ckpt.pt"), str(tmp_path / "out"))
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "out"), attn_implementation="eager").eval()
    m.merge_lora()
    idx = torch.randint(config.vocab_size, (2, 11))
    with torch.no_grad():
        reference, candidate = m.double()(idx).logits, hf.double()(idx).logits
    assert (reference - candidate).abs().max() < 1e-10


def test_export_rejects_a_wrong_vocabulary(tiny_config, tmp_path):
    m = GPT(tiny_config())
    save_checkpoint(str(tmp_path / "ckpt.pt"), m, vocabulary=["a", "b"])
    with pytest.raises(ValueError, match="vocab_size"):
        validate.export(str(tmp_path / "ckpt.pt"), str(tmp_path / "out"))


# ---- the committed reference and its traces ----

def test_reference_is_small_and_loads():
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(REF) for f in files)
    assert size <= 5 * 2 ** 20
    model = load_portable(REF_MODEL)
    assert model.config.n_streams == 4 and model.config.prune_rank > 0
    vocab = json.load(open(f"{REF_MODEL}/vocabulary.json"))
    assert len(vocab["tokens"]) == model.config.vocab_size


@pytest.mark.parametrize("name", sorted(validate.REFERENCE_TRACES))
def test_committed_golden_traces_are_reproduced(name, tmp_path):
    out = traces.trace(REF_MODEL, f"{REF}/prompts.jsonl", str(tmp_path / name), **validate.REFERENCE_TRACES[name])
    divergence, skipped, notes = compare_traces(f"{REF}/{name}", out)
    assert divergence is None and skipped == [] and notes == []
    assert read(f"{REF}/{name}")[0]["model_sha256"] == traces.model_hash(REF_MODEL)


@pytest.mark.parametrize("name", sorted(validate.REFERENCE_TRACES))
def test_the_repeated_prompt_gives_the_same_records(name):
    """p3 is p0 again (VALIDATING.md says why it stays): its records are p0's, call for call."""
    trace = read_trace(f"{REF}/{name}")
    assert trace.prompts["p3"]["prompt_ids"] == trace.prompts["p0"]["prompt_ids"]
    assert [dict(r, prompt="p0") for r in trace.calls["p3"]] == trace.calls["p0"]
    ids = [tuple(r["prompt_ids"]) for r in trace.prompts.values()]
    assert len(ids) - len(set(ids)) == 1  # p3 is the only repeat


def test_trace_is_the_real_run(good_trace, small_prompts):
    """Call 0 is the prefill over the prompt; the committed tokens over all calls are the greedy output."""
    model = traces.load_model(REF_MODEL)
    for p in read_prompts(small_prompts):
        calls = [r for r in calls_of(good_trace) if r["prompt"] == p["id"]]
        P = len(p["prompt_ids"])
        assert calls[0]["cache_len"] == 0 and calls[0]["tree"]["positions"] == list(range(P))
        assert calls[0]["tree"]["tokens"] == p["prompt_ids"] and calls[0]["draft_topk"] is None
        ar = generate.generate_autoregressive(model, p["prompt_ids"], p["max_new_tokens"], p["eos_id"])
        assert sum((r["committed"] for r in calls), []) == ar.tokens
        for prev, r in zip(calls, calls[1:]):
            assert r["tree"]["tokens"][0] == prev["committed"][-1]
            assert r["cache_len"] == prev["cache_len"] + len(prev["path"])


def test_stream_pass_does_not_change_the_trace(good_trace, small_prompts, tmp_path):
    out = traces.trace(REF_MODEL, small_prompts, str(tmp_path / "acc.jsonl"), k=2, stream_pass="accepted")
    divergence, _, notes = compare_traces(good_trace, out)
    assert divergence is None and any("stream_pass" in n for n in notes)


def test_a_float32_run_is_within_the_tolerance(good_trace, small_prompts, tmp_path):
    """The documented tolerance is loose enough for float32 on the reference model (tokens still exact)."""
    out = traces.trace(REF_MODEL, small_prompts, str(tmp_path / "f32.jsonl"), k=2, dtype="float32")
    divergence, _, notes = compare_traces(good_trace, out)
    assert divergence is None and any("float32" in n for n in notes)
    assert compare_traces(good_trace, out, atol=1e-9)[0] is not None  # yet float32 is not float64


def test_reference_command_runs_end_to_end(tmp_path):
    """`python validate.py reference`, with a few training steps: trains, exports, writes prompts and traces."""
    quick = dataclasses.replace(validate.REFERENCE_TRAINING, pretrain_steps=2, ss_steps=2, prune_steps=2, n_stories=40)
    out = str(tmp_path / "ref")
    validate.make_reference(out, str(tmp_path / "work"), n_prompts=2, max_new_tokens=6, recipe=quick)
    assert load_portable(f"{out}/model").config.n_streams == 4
    assert len(read_prompts(f"{out}/prompts.jsonl")) == 2
    for name in validate.REFERENCE_TRACES:
        trace = read_trace(f"{out}/{name}")
        assert trace.header["model_sha256"] == traces.model_hash(f"{out}/model") and set(trace.calls) == {"p0", "p1"}


# ---- other implementations: specstream_minimal.py, Hugging Face transformers ----

def test_minimal_implementation_passes_compare(good_trace, small_prompts, tmp_path):
    out = minimal_trace(REF_MODEL, small_prompts, str(tmp_path / "minimal.jsonl"), k=2)
    divergence, skipped, _ = compare_traces(good_trace, out)
    assert divergence is None, str(divergence)
    assert skipped == []  # it records every field (no pruning in either run)
    assert len(calls_of(out)) == len(calls_of(good_trace))


def test_a_port_on_transformers_passes_compare(good_trace, small_prompts, tmp_path):
    """The guide's second engine: GPT2LMHeadModel from the exported folder (no download), the streams on its
    blocks; its trace agrees with ours, and the code the guide shows is the code tested here."""
    pytest.importorskip("transformers")
    from validation import hf_port
    out = minimal_trace(REF_MODEL, small_prompts, str(tmp_path / "hf.jsonl"), k=2,
                        model=hf_port.HFStreams(REF_MODEL), implementation="validation.hf_port")
    divergence, skipped, _ = compare_traces(good_trace, out)
    assert divergence is None and skipped == [], str(divergence)
    guide = open(os.path.join(ROOT, "VALIDATING.md")).read()
    shown = re.search(r"```python\n(class HFStreams.*?)```", guide, re.S).group(1)
    assert shown.strip() in open(hf_port.__file__).read()


# ---- reading traces: every malformed input is exit status 2, named with its file and line ----

def test_traces_may_be_a_json_array_with_a_bom_and_blank_lines(good_trace, tmp_path, capsys):
    records = read(good_trace)
    (tmp_path / "array.json").write_text(json.dumps(records, indent=1))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n\n".join(json.dumps(r) for r in records).encode()
                                         + b"\n\n")
    for name in ("array.json", "bom.jsonl"):
        assert run(["compare", good_trace, str(tmp_path / name)], capsys)[0] == 0
    records[3]["path"] = "0 1"  # a type error inside the array: the file line where that record starts
    text = json.dumps(records, indent=1)
    (tmp_path / "array.json").write_text(text)
    line = [n for n, item in enumerate(text.split("\n"), 1) if item == " {"][3]  # where the fourth item starts
    status, out = run(["compare", good_trace, str(tmp_path / "array.json")], capsys)
    assert status == 2 and f"array.json, line {line}: path must be a list of integers" in out


def edit_line(n: int, edit):
    """A mutation of a trace file's text: apply `edit` to the JSON record of line n (1-based)."""
    def mutate(lines: list[str]) -> list[str]:
        r = json.loads(lines[n - 1])
        edit(r)
        return lines[:n - 1] + [json.dumps(r)] + lines[n:]
    return mutate


MALFORMED = {  # mutation of the good trace's lines -> what the one-line error must say
    "binary": (lambda lines: None, ["not UTF-8"]),
    "empty": (lambda lines: [], ["the file is empty"]),
    "bad JSON": (lambda lines: lines[:2] + ['{"type": "call", "prompt": "p0",'] + lines[3:], ["line 3, column"]),
    "no header": (lambda lines: lines[1:], ["line 1: the first record must be the header"]),
    "schema": (edit_line(1, lambda r: r.update(schema="specstream-trace-v2")),
               ['line 1: schema "specstream-trace-v2", this tool reads "specstream-trace"']),
    "version": (edit_line(1, lambda r: r.update(version=2)), ["line 1: specstream-trace version 2"]),
    "settings": (edit_line(1, lambda r: r["settings"].update(k="2")), ['line 1: k must be an integer >= 1, got "2"']),
    "path as a string": (edit_line(4, lambda r: r.update(path="0 1 2")),
                         ['line 4: path must be a list of integers, got "0 1 2"']),
    "required field": (edit_line(3, lambda r: r.pop("committed")), ["line 3: the required field committed"]),
    "NaN token": (edit_line(4, lambda r: r["main_argmax"].__setitem__(1, float("nan"))),
                  ["line 4: main_argmax must be a list of integers", "NaN"]),
    "tree as a list": (edit_line(4, lambda r: r.update(tree=[1, 2])), ["line 4: tree must be an object"]),
    "per-node length": (edit_line(4, lambda r: r["main_argmax"].pop()), ["line 4: main_argmax has"]),
    "node index": (edit_line(4, lambda r: r["path"].append(999)), ["line 4: path holds 999"]),
    "record type": (edit_line(4, lambda r: r.update(type="step")), ['line 4: type "step"']),
    "duplicate call": (lambda lines: lines + [lines[3]], ["a second record of prompt p0, call 1 (first at line 4)"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_trace_is_exit_2_with_file_and_line(case, good_trace, tmp_path, capsys):
    mutate, wanted = MALFORMED[case]
    bad = tmp_path / "bad.jsonl"
    lines = mutate(open(good_trace).read().splitlines())
    if lines is None:
        bad.write_bytes(b"\x80\x81PK\x03\x04" + bytes(range(256)))
    else:
        bad.write_text("".join(line + "\n" for line in lines))
    status, out = run(["compare", good_trace, str(bad)], capsys)
    assert status == 2 and out.startswith("error: ") and out.count("\n") == 1, out
    assert str(bad) in out and " — " in out and all(w in out for w in wanted), out


def test_bad_arguments_are_exit_2(good_trace, tmp_path, capsys):
    status, out = run(["compare", good_trace, str(tmp_path / "missing.jsonl")], capsys)
    assert status == 2 and "missing.jsonl: cannot read it" in out
    (tmp_path / "prompts.jsonl").write_text('{"id": "a", "prompt_ids": [1], "max_new_tokens": 4}\n'
                                            '{"id": "a", "prompt_ids": [2], "max_new_tokens": 4}\n')
    status, out = run(["trace", "--model", REF_MODEL, "--prompts", str(tmp_path / "prompts.jsonl"),
                       "--out", str(tmp_path / "t.jsonl")], capsys)
    assert status == 2 and "prompts.jsonl, line 2: prompt id \"a\" again (first at line 1)" in out


# ---- compare: tolerances, optional fields, causes, the report ----

def test_compare_tolerance_and_exit_status(good_trace, tmp_path, capsys):
    assert run(["compare", good_trace, good_trace], capsys)[0] == 0
    records = read(good_trace)
    call = next(r for r in records if r["type"] == "call" and r["call"] == 2)
    call["main_top5"]["logprobs"][0][1] += LOGPROB_ATOL / 2  # inside the tolerance
    write_jsonl(str(tmp_path / "near.jsonl"), records)
    assert run(["compare", good_trace, str(tmp_path / "near.jsonl")], capsys)[0] == 0
    call["main_top5"]["logprobs"][0][1] += 2 * LOGPROB_ATOL  # outside
    write_jsonl(str(tmp_path / "far.jsonl"), records)
    status, report = run(["compare", good_trace, str(tmp_path / "far.jsonl")], capsys)
    assert status == 1 and "call 2 (decode), field main_top5.logprobs, node 0" in report
    assert "cache compaction" in report and "reference line 5, candidate line 5" in report
    assert "reference:" in report and "candidate:" in report
    assert not re.search(r"\b(ours|theirs|our|their)\b", report)


def test_compare_skips_what_the_candidate_omits(good_trace, tmp_path, capsys):
    records = read(good_trace)
    for r in records:
        if r["type"] == "call":
            for key in ("cache_len", "draft_topk", "early_exit", "main_argmax", "main_top5"):
                r.pop(key)
            r["tree"] = dict(tokens=r["tree"]["tokens"], parents=r["tree"]["parents"])
    write_jsonl(str(tmp_path / "minimal_fields.jsonl"), records)
    status, out = run(["compare", good_trace, str(tmp_path / "minimal_fields.jsonl")], capsys)
    assert status == 0 and "skipped" in out and "main_top5" in out and "tree.positions" in out
    call = next(r for r in records if r["type"] == "call" and r["call"] > 0 and len(r["path"]) > 1)
    call["path"] = call["path"][:1]  # a bug in a minimal trace is still caught, with the hint that says so
    write_jsonl(str(tmp_path / "minimal_bad.jsonl"), records)
    divergence, skipped, _ = compare_traces(good_trace, str(tmp_path / "minimal_bad.jsonl"))
    assert divergence.field == "path" and "did not record main_argmax" in divergence.cause
    assert "draft_topk" in skipped  # the whole field is absent


def test_compare_refuses_other_settings(good_trace, small_prompts, tmp_path):
    other = traces.trace(REF_MODEL, small_prompts, str(tmp_path / "k1.jsonl"), k=1)
    divergence, _, _ = compare_traces(good_trace, other)
    assert divergence.field == "settings.k" and divergence.prompt is None


def test_compare_needs_the_prefill_record(good_trace, tmp_path):
    records = [r for r in read(good_trace) if not (r["type"] == "call" and r["call"] == 0)]
    write_jsonl(str(tmp_path / "no_prefill.jsonl"), records)
    divergence, _, _ = compare_traces(good_trace, str(tmp_path / "no_prefill.jsonl"))
    assert (divergence.call, divergence.field) == (0, "call") and "prefill" in divergence.cause


@pytest.mark.parametrize("field,value,where", [("main_top5.logprobs", float("nan"), "node 1"),
                                               ("draft_topk.logprobs", float("inf"), "depth 2"),
                                               ("early_exit.probs", float("-inf"), "node 1")])
def test_nan_and_infinities_are_named(field, value, where, good_trace, small_prompts, tmp_path):
    """A non-finite number is reported as such, with its field, wherever it is."""
    base = good_trace
    if field.startswith("early_exit"):
        base = traces.trace(REF_MODEL, small_prompts, str(tmp_path / "pruned.jsonl"), k=3, tree_cap=10,
                            prune_threshold=0.05)
    records = read(base)
    call = next(r for r in records if r["type"] == "call" and r["call"] == 2)
    outer, inner = field.split(".")
    row = call[outer][inner][1]
    if isinstance(row, list):
        row[0] = value
    else:
        call[outer][inner][1] = value
    write_jsonl(str(tmp_path / "bad.jsonl"), records)
    divergence, _, _ = compare_traces(base, str(tmp_path / "bad.jsonl"))
    what = "NaN" if value != value else "+inf" if value > 0 else "-inf"
    assert divergence.call == 2 and divergence.field == f"{field} ({what})", str(divergence)
    assert f"holds {what} at {where}" in divergence.cause


def test_another_prompt_without_prompt_records(good_trace, small_prompts, tmp_path):
    """No prompt records: call 0's tree is the prompt, and a different one is named as such."""
    prompts = read_prompts(small_prompts)
    prompts[0]["prompt_ids"] = prompts[0]["prompt_ids"][:-1] + [prompts[0]["prompt_ids"][-1] + 1]
    write_jsonl(str(tmp_path / "other.jsonl"), prompts)
    out = traces.trace(REF_MODEL, str(tmp_path / "other.jsonl"), str(tmp_path / "t.jsonl"), k=2)
    write_jsonl(out, [r for r in read(out) if r["type"] != "prompt"])
    divergence, _, _ = compare_traces(good_trace, out)
    assert (divergence.prompt, divergence.call, divergence.field) == ("p0", 0, "tree.tokens")
    assert "ran another prompt" in divergence.cause
    records = read(good_trace)  # with prompt records: the field that differs is named
    next(r for r in records if r["type"] == "prompt")["eos_id"] = None
    write_jsonl(str(tmp_path / "eos.jsonl"), records)
    divergence, _, _ = compare_traces(good_trace, str(tmp_path / "eos.jsonl"))
    assert (divergence.prompt, divergence.field) == ("p0", "eos_id") and "prompts file" in divergence.cause


def test_main_top5_in_another_order_is_an_order_problem(good_trace, tmp_path):
    records = read(good_trace)
    call = next(r for r in records if r["type"] == "call" and r["call"] == 1)
    for key in ("tokens", "logprobs"):
        call["main_top5"][key][2].reverse()
    write_jsonl(str(tmp_path / "bad.jsonl"), records)
    divergence, _, _ = compare_traces(good_trace, str(tmp_path / "bad.jsonl"))
    assert (divergence.call, divergence.field, divergence.node) == (1, "main_top5.tokens", 2)
    assert "the same tokens in another order" in divergence.cause


# ---- outputs-only mode ----

K2 = dict(gamma=4, k=2, tree_cap=None, prune_threshold=None, stream_pass="tree")


def answers_file(path, prompts_path, settings=K2, edit=None, header=True, dtype="float64") -> str:
    """An answers file of this project's own run with `settings`; edit(list of records) may change them."""
    model = traces.load_model(REF_MODEL, dtype)
    records = []
    for p in read_prompts(prompts_path):
        r = generate.generate_speculative(model, p["prompt_ids"], p["max_new_tokens"], settings["gamma"],
                                          settings["k"], settings["tree_cap"], settings["prune_threshold"],
                                          p["eos_id"])
        records.append(dict(prompt_id=p["id"], output_ids=r.tokens, accept_lengths=r.accepted_lengths,
                            forward_calls=r.forward_calls))
    if edit:
        records = edit(records)
    write_jsonl(str(path), ([outputs.answers_header(settings, "test")] if header else []) + records)
    return str(path)


def check(path, prompts_path, capsys) -> tuple[int, str]:
    return run(["outputs", "--model", REF_MODEL, "--answers", path, "--prompts", prompts_path], capsys)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_outputs_passes_an_exact_run(dtype, tmp_path, capsys):
    """Our own run passes, in float32 too, with identical drafting (the guide's tolerance is for other ports)."""
    prompts = f"{REF}/prompts.jsonl"
    for settings in (K2, dict(K2, k=3, tree_cap=10, prune_threshold=0.05)):
        status, out = check(answers_file(tmp_path / "a.jsonl", prompts, settings, dtype=dtype), prompts, capsys)
        assert status == 0 and out.endswith("OK\n") and "every decode call commits as many tokens" in out, out
        assert "p0: output == reference" in out and "p1: output == reference" in out


def drop(pid):
    return lambda records: [r for r in records if r["prompt_id"] != pid]


@pytest.mark.parametrize("case,edit,wanted", [
    ("missing", drop("p1"), "no answer for p1"),
    ("extra", lambda rs: rs + [dict(rs[0], prompt_id="p9")], "answers for prompts that"),
    ("duplicate", lambda rs: rs + [rs[0]], "p0: 2 answers (lines 2, 4)"),
    ("header only", lambda rs: [], "holds no answers: every prompt of"),
])
def test_outputs_fails_an_incomplete_file(case, edit, wanted, small_prompts, tmp_path, capsys):
    status, out = check(answers_file(tmp_path / "a.jsonl", small_prompts, edit=edit), small_prompts, capsys)
    assert status == 1 and out.endswith("FAILED\n") and wanted in out, out
    (tmp_path / "empty.jsonl").write_text("")
    status, out = check(str(tmp_path / "empty.jsonl"), small_prompts, capsys)
    assert status == 1 and "holds no answers" in out and "(p0, p1)" in out


def test_outputs_fails_a_slow_but_exact_port(small_prompts, tmp_path, capsys):
    """Verifying each node against its own argmax: exact outputs, one token per call (CR 1.00)."""
    def one_token_per_call(records):
        return [dict(r, accept_lengths=[1] * (len(r["output_ids"]) - 1), forward_calls=len(r["output_ids"]))
                for r in records]
    status, out = check(answers_file(tmp_path / "a.jsonl", small_prompts, edit=one_token_per_call), small_prompts,
                        capsys)
    assert status == 1 and "p0: output == reference" in out and out.endswith("FAILED\n")
    assert "FAILED: lossless but drafting differs: the candidate needs 32 forward calls, the reference 11" in out
    assert "no draft was ever accepted (CR 1.00)" in out and "candidate: CR 1.00" in out


def test_outputs_tolerates_a_small_drafting_difference(small_prompts, tmp_path, capsys):
    def split_one_call(records, times=1):
        r = records[0]
        lengths = list(r["accept_lengths"])
        for _ in range(times):  # a long call becomes two shorter ones
            i = max(range(len(lengths)), key=lambda i: lengths[i])
            lengths[i:i + 1] = [lengths[i] - 1, 1]
        return [dict(r, accept_lengths=lengths, forward_calls=1 + len(lengths))] + records[1:]
    status, out = check(answers_file(tmp_path / "a.jsonl", small_prompts, edit=split_one_call), small_prompts,
                        capsys)
    assert status == 0 and "drafting: within the tolerance (12 forward calls, reference 11, ± 1 allowed)" in out
    assert "differ most at prompt p0" in out
    path = answers_file(tmp_path / "a.jsonl", small_prompts, edit=lambda records: split_one_call(records, times=2))
    status, out = check(path, small_prompts, capsys)
    assert status == 1 and "lossless but drafting differs" in out


def test_outputs_fails_a_wrong_output_or_accounting(small_prompts, tmp_path, capsys):
    def wrong_token(records):
        return [dict(r, output_ids=r["output_ids"][:3] + [r["output_ids"][3] + 1] + r["output_ids"][4:])
                for r in records]
    status, out = check(answers_file(tmp_path / "a.jsonl", small_prompts, edit=wrong_token), small_prompts, capsys)
    assert status == 1 and "p0: FAILED: the output differs from the reference at token 3" in out
    assert not re.search(r"\b(ours|theirs)\b", out)
    path = answers_file(tmp_path / "a.jsonl", small_prompts,
                        edit=lambda records: [dict(r, forward_calls=r["forward_calls"] + 1) for r in records])
    status, out = check(path, small_prompts, capsys)
    assert status == 1 and "p0: FAILED: forward_calls is" in out
    path = answers_file(tmp_path / "a.jsonl", small_prompts,
                        edit=lambda records: [dict(r, accept_lengths=[n + 1 for n in r["accept_lengths"]])
                                              for r in records])
    status, out = check(path, small_prompts, capsys)
    assert status == 1 and "bonus token counted twice" in out


@pytest.mark.parametrize("case,wanted", [
    ("no header", "line 1: the first record must be the header"),
    ("no stream_pass", "line 1: settings.stream_pass is missing"),
    ("a string for a list", 'line 2: accept_lengths must be a list of integers (tokens committed by each decode call), '
                            'got "3 4"'),
    ("no forward_calls", "line 3: the required field forward_calls is missing"),
    ("gamma too large", "the reference model cannot decode with these settings"),
])
def test_outputs_bad_input_is_exit_2(case, wanted, small_prompts, tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    answers_file(path, small_prompts, header=case != "no header")
    records = read(path)
    if case == "no stream_pass":
        records[0]["settings"].pop("stream_pass")
    elif case == "a string for a list":
        records[1]["accept_lengths"] = "3 4"
    elif case == "no forward_calls":
        records[2].pop("forward_calls")
    elif case == "gamma too large":
        records[0]["settings"]["gamma"] = 9
    write_jsonl(str(path), records)
    status, out = check(str(path), small_prompts, capsys)
    assert status == 2 and out.startswith(f"error: {path}") and wanted in out and " — " in out, out


def test_minimal_answers_pass_the_outputs_mode(small_prompts, tmp_path, capsys):
    minimal_trace(REF_MODEL, small_prompts, str(tmp_path / "m.jsonl"), k=2, answers=str(tmp_path / "a.jsonl"))
    status, out = check(str(tmp_path / "a.jsonl"), small_prompts, capsys)
    assert status == 0, out


def test_accounting_recognises_the_usual_mistakes():
    out, gamma = list(range(10)), 4  # 10 tokens: the prefill's first one, then 9 from decode calls
    assert outputs.accounting(out, [3, 5, 1], gamma) == ([3, 5, 1], None)
    lengths, problem = outputs.accounting(out, [1, 3, 5, 1], gamma)
    assert lengths == [3, 5, 1] and "prefill" in problem
    lengths, problem = outputs.accounting(out, [4, 6, 2], gamma)
    assert lengths == [3, 5, 1] and "counted twice" in problem
    lengths, problem = outputs.accounting(out, [2, 4, 0], gamma)
    assert lengths == [3, 5, 1] and "not counted" in problem
    assert outputs.accounting(out, [6, 2, 1], gamma)[0] is None  # 6 > γ + 1
    assert outputs.accounting(out, [3, 3], gamma)[0] is None     # adds up to nothing recognisable
    m = outputs.metrics([3, 5, 1], len(out), gamma, max_new_tokens=10)
    assert m["calls"] == 4 and m["cr"] == 10 / 4 and m["tokens_per_call"] == 3
    # drafted depths min(γ, 10 - len(output) - 1): 4 (2 accepted: depths 1-3 attempted), 4 (4 accepted), 0
    assert m["attempted"] == [2, 2, 2, 1] and m["accepted"] == [2, 2, 1, 1]


# ---- the guide ----

def test_the_guide_points_inside_the_repository():
    guide = open(os.path.join(ROOT, "VALIDATING.md")).read()
    for target in re.findall(r"\]\(([^)#]+)", guide):
        if not target.startswith("http"):
            assert os.path.exists(os.path.join(ROOT, target)), target

# ---- Hugging Face GPT-2 checkpoints (no downloads: a small random GPT-2 saved locally) ----

@pytest.fixture(scope="module")
def hf_gpt2_dirs(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=0, eos_token_id=0)
    assert cfg.activation_function == "gelu_new"
    hf = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # larger random weights so that argmaxes are decisive
        for name, p in hf.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.dim() == 2:
                p.copy_(torch.randn_like(p) * 0.5 / math.sqrt(32))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    hf.eval()
    st = tmp_path_factory.mktemp("hf_st")
    hf.save_pretrained(st)
    assert (st / "model.safetensors").exists()
    binary = tmp_path_factory.mktemp("hf_bin")
    hf.save_pretrained(binary, safe_serialization=False)
    if (binary / "model.safetensors").exists():  # recent transformers always write safetensors
        (binary / "model.safetensors").unlink()
        torch.save(hf.state_dict(), binary / "pytorch_model.bin")
    assert (binary / "pytorch_model.bin").exists()
    return hf, st, binary


def greedy(logits_fn, prompt, n):
    seq = prompt
    for _ in range(n):
        seq = torch.cat([seq, logits_fn(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, prompt.size(1):]


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("n_streams,n_msa_layers", [(0, 0), (3, 1), (2, 2)])
def test_from_hf_gpt2_matches_transformers(hf_gpt2_dirs, fmt, n_streams, n_msa_layers):
    hf, st, binary = hf_gpt2_dirs
    model = load_hf_gpt2(str(st if fmt == "safetensors" else binary), n_streams=n_streams,
                                      n_msa_layers=n_msa_layers).eval()
    assert model.config.n_streams == n_streams and model.config.n_layer == 2 and model.config.block_size == 64
    idx = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(idx).logits, hf(idx).logits, atol=1e-5, rtol=0)
        model64, hf64 = model.double(), hf.double()
        try:
            out = model64(idx)
            torch.testing.assert_close(out.logits, hf64(idx).logits, atol=1e-10, rtol=0)
            ours = greedy(lambda s: model64(s).logits, idx[:1, :6], 10)
            theirs = greedy(lambda s: hf64(s).logits, idx[:1, :6], 10)
        finally:
            hf.float()
    assert torch.equal(ours, theirs)
    if n_streams:
        assert out.stream_logits.shape == (2, 20, n_streams, 100)
        assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)


def test_from_hf_gpt2_missing_weights(hf_gpt2_dirs, tmp_path):
    _, st, _ = hf_gpt2_dirs
    (tmp_path / "config.json").write_text((st / "config.json").read_text())
    with pytest.raises(FileNotFoundError):
        load_hf_gpt2(str(tmp_path))


def test_from_hf_gpt2_refuses_configs_it_cannot_represent(hf_gpt2_dirs, tmp_path):
    import shutil
    _, st, _ = hf_gpt2_dirs
    for change in (dict(activation_function="relu"), dict(layer_norm_epsilon=1e-6), dict(n_inner=7)):
        folder = tmp_path / next(iter(change))
        shutil.copytree(st, folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(change)
        (folder / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match="gelu_new"):
            load_hf_gpt2(str(folder))
