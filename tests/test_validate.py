"""validate.py: portable weights, golden traces, compare (and the bugs it must catch), outputs-only mode."""
import dataclasses
import json
import math
import os
from typing import Callable, NamedTuple

import pytest
import torch
from torch.nn import functional as F

import generate
import model as model_module
import validate
from checkpoint import load_hf_gpt2, load_portable, save_checkpoint
from model import GPT

REF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reference")
REF_MODEL = os.path.join(REF, "model")


def read(path):
    return [json.loads(line) for line in open(path)]


def calls_of(path):
    return [r for r in read(path) if r["type"] == "call"]


@pytest.fixture(scope="module")
def small_prompts(tmp_path_factory):
    """Two of the reference prompts, with fewer new tokens: fast enough for the slow minimal implementation."""
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    prompts = validate.read_prompts(f"{REF}/prompts.jsonl")[:2]
    validate.write_jsonl(str(path), [dict(p, max_new_tokens=16) for p in prompts])
    return str(path)


@pytest.fixture(scope="module")
def good_trace(small_prompts, tmp_path_factory):
    """The correct trace of the small prompts, k = 2, full tree."""
    out = str(tmp_path_factory.mktemp("good") / "good.jsonl")
    return validate.trace(REF_MODEL, small_prompts, out, k=2)


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
        ours, theirs = m.double()(idx).logits, hf.double()(idx).logits
    assert (ours - theirs).abs().max() < 1e-10


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
    out = validate.trace(REF_MODEL, f"{REF}/prompts.jsonl", str(tmp_path / name), **validate.REFERENCE_TRACES[name])
    divergence, skipped, notes = validate.compare_traces(f"{REF}/{name}", out)
    assert divergence is None and skipped == [] and notes == []
    assert read(f"{REF}/{name}")[0]["model_sha256"] == validate.model_hash(REF_MODEL)


def test_trace_is_the_real_run(good_trace, small_prompts):
    """Call 0 is the prefill over the prompt; committed tokens over all calls are the greedy output."""
    model = validate.load_model(REF_MODEL)
    for p in validate.read_prompts(small_prompts):
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
    out = validate.trace(REF_MODEL, small_prompts, str(tmp_path / "acc.jsonl"), k=2, stream_pass="accepted")
    divergence, _, notes = validate.compare_traces(good_trace, out)
    assert divergence is None and any("stream_pass" in n for n in notes)


# ---- specstream_minimal.py as the other implementation ----

def test_minimal_implementation_passes_compare(good_trace, small_prompts, tmp_path):
    out = validate.minimal_trace(REF_MODEL, small_prompts, str(tmp_path / "minimal.jsonl"), k=2)
    divergence, skipped, _ = validate.compare_traces(good_trace, out)
    assert divergence is None, str(divergence)
    assert skipped == []  # it records every field (no pruning in either run)
    assert len(calls_of(out)) == len(calls_of(good_trace))


# ---- the bug zoo: wrong implementations compare must stop at the right place ----

def stream_attention_sees_all_streams(self, qs, ks, vs, km, vm, mask):
    """Bug: stream j attends to every stream of its node (Eq. 2 allows streams 1..j only)."""
    scale = 1.0 / math.sqrt(qs.size(-1))
    att_main = (qs.transpose(2, 3) @ km.unsqueeze(2).transpose(-2, -1)) * scale  # (B, nh, γ, T', L+T)
    att_main = att_main.masked_fill(~mask, float("-inf"))
    att_self = ((qs @ ks.transpose(-2, -1)) * scale).transpose(2, 3)  # (B, nh, γ, T', γ): no stream mask
    att = F.softmax(torch.cat([att_main, att_self], dim=-1), dim=-1)
    att_main, att_self = att.split([km.size(2), qs.size(3)], dim=-1)
    return (att_main @ vm.unsqueeze(2)).transpose(2, 3) + att_self.transpose(2, 3) @ vs


def positions_off_by_one(tree, cache_len):
    """Bug: the root is placed one position after the cache's end."""
    return cache_len + tree.depths + 1


def commit_without_compaction(self, keep=None):
    """Bug: counts the accepted entries but leaves the tree's entries where the forward wrote them."""
    self.length += self.pending if keep is None else len(keep)
    self.pending = 0


def verify_with_own_argmax(tree, main_argmax):
    """Bug: accepts a child whose token equals the main argmax at the child itself (not at its parent)."""
    tokens, parents, path = tree.tokens.tolist(), tree.parents.tolist(), [0]
    for node in range(1, len(tokens)):
        if parents[node] == path[-1] and tokens[node] == main_argmax[node]:
            path.append(node)
    return path


def commit_tokens_without_bonus(result, new, max_new_tokens, eos_id):
    """Bug: a decode call that accepted drafts commits them but drops the bonus token (the new root)."""
    dropped = new[:-1] if result.step_tokens and len(new) > 1 else new
    return REAL_COMMIT(result, dropped, max_new_tokens, eos_id)


REAL_COMMIT = generate.commit_tokens


def first_call(calls, predicate):
    return next(r["call"] for r in calls if r["call"] > 0 and predicate(r))


def own_argmax_path(r):
    path = [0]
    for node in range(1, len(r["tree"]["tokens"])):
        if r["tree"]["parents"][node] == path[-1] and r["tree"]["tokens"][node] == r["main_argmax"][node]:
            path.append(node)
    return path


def select_pending_keeps_pruned_entries(self, keep, layers):
    """Bug: pruning leaves the pruned nodes' lower-layer keys/values in the cache (compaction still works)."""
    if len(layers) == len(self.k):
        REAL_SELECT_PENDING(self, keep, layers)


REAL_SELECT_PENDING = model_module.KVCache.select_pending


def path_moved_by_pruning(r):
    """The accepted path holds a node whose lower-layer entry pruning had to move (a node before it was pruned)."""
    survivors = r["early_exit"]["survivors"] if r["early_exit"] else []
    return any(survivors.index(node) != node for node in r["path"] if survivors)


class Bug(NamedTuple):
    owner: object          # where the wrong version goes
    attribute: str
    wrong: Callable
    field: str             # compare must name a field starting with this
    cause: str             # ... and a likely cause containing these words
    expected_call: Callable  # the correct trace's call records of prompt p0 -> the call where the bug first shows
    pruned: bool = False   # run with the pruned settings (k = 3, cap 10, threshold 0.05) instead of k = 2


BUGS = {
    "stream sees later streams": Bug(model_module.CausalSelfAttention, "stream_attention",
                                     stream_attention_sees_all_streams, "draft_topk", "streams 1..j", lambda c: 1),
    "positions off by one": Bug(generate, "position_ids", positions_off_by_one, "tree.positions",
                                "position = cache length + depth", lambda c: 1),
    "cache not compacted": Bug(model_module.KVCache, "commit", commit_without_compaction, "main_", "cache compaction",
                               lambda c: 1 + first_call(c, lambda r: r["path"] != list(range(len(r["path"]))))),
    "verification at the child": Bug(generate, "verify_greedy", verify_with_own_argmax, "path", "argmax at its parent",
                                     lambda c: first_call(c, lambda r: own_argmax_path(r) != r["path"])),
    "bonus token dropped": Bug(generate, "commit_tokens", commit_tokens_without_bonus, "committed", "bonus token",
                               lambda c: first_call(c, lambda r: len(r["path"]) > 1)),
    "pruned entries kept": Bug(model_module.KVCache, "select_pending", select_pending_keeps_pruned_entries,
                               "early_exit.probs", "pruned nodes' lower-layer",
                               lambda c: 1 + first_call(c, path_moved_by_pruning), pruned=True),
}
PRUNED = dict(k=3, tree_cap=10, prune_threshold=0.05)


@pytest.fixture(scope="module")
def pruned_trace(small_prompts, tmp_path_factory):
    """The correct trace of the small prompts with pruning."""
    return validate.trace(REF_MODEL, small_prompts, str(tmp_path_factory.mktemp("pruned") / "good.jsonl"), **PRUNED)


@pytest.mark.parametrize("name", sorted(BUGS))
def test_compare_catches_the_bug(name, good_trace, pruned_trace, small_prompts, tmp_path, monkeypatch):
    bug = BUGS[name]
    good, settings = (pruned_trace, PRUNED) if bug.pruned else (good_trace, dict(k=2))
    monkeypatch.setattr(bug.owner, bug.attribute, bug.wrong)
    bad = validate.trace(REF_MODEL, small_prompts, str(tmp_path / "bad.jsonl"), **settings)
    divergence, _, _ = validate.compare_traces(good, bad)
    expected_call = bug.expected_call([r for r in calls_of(good) if r["prompt"] == "p0"])
    assert (divergence.prompt, divergence.call) == ("p0", expected_call), str(divergence)
    assert divergence.field.startswith(bug.field) and bug.cause in divergence.cause, str(divergence)
    # a trace with the required fields only still catches it, at that call or later (maybe in a later prompt)
    validate.write_jsonl(str(tmp_path / "required.jsonl"), [required_fields_only(r) for r in read(bad)])
    late, skipped, _ = validate.compare_traces(good, str(tmp_path / "required.jsonl"))
    assert late is not None and (late.prompt != "p0" or late.call >= expected_call) and "main_top5" in skipped


def required_fields_only(record: dict) -> dict:
    if record["type"] != "call":
        return record
    tree = dict(tokens=record["tree"]["tokens"], parents=record["tree"]["parents"])
    return dict(type="call", prompt=record["prompt"], call=record["call"], tree=tree, path=record["path"],
                committed=record["committed"])


# ---- compare: tolerances, optional fields, exit status ----

def test_compare_tolerance_and_exit_status(good_trace, tmp_path, capsys):
    assert validate.main(["compare", good_trace, good_trace]) == 0
    records = read(good_trace)
    call = next(r for r in records if r["type"] == "call" and r["call"] == 2)
    call["main_top5"]["logprobs"][0][1] += validate.LOGPROB_ATOL / 2  # inside the tolerance
    validate.write_jsonl(str(tmp_path / "near.jsonl"), records)
    assert validate.main(["compare", good_trace, str(tmp_path / "near.jsonl")]) == 0
    call["main_top5"]["logprobs"][0][1] += 2 * validate.LOGPROB_ATOL  # outside
    validate.write_jsonl(str(tmp_path / "far.jsonl"), records)
    capsys.readouterr()
    assert validate.main(["compare", good_trace, str(tmp_path / "far.jsonl")]) == 1
    report = capsys.readouterr().out
    assert "call 2 (decode), field main_top5.logprobs, node 0" in report and "cache compaction" in report
    (tmp_path / "broken.jsonl").write_text('{"type": "call"}\n')
    assert validate.main(["compare", good_trace, str(tmp_path / "broken.jsonl")]) == 2


def test_compare_skips_what_the_candidate_omits(good_trace, tmp_path, capsys):
    records = read(good_trace)
    for r in records:
        if r["type"] == "call":
            for key in ("cache_len", "draft_topk", "early_exit", "main_argmax", "main_top5"):
                r.pop(key)
            r["tree"] = dict(tokens=r["tree"]["tokens"], parents=r["tree"]["parents"])
    validate.write_jsonl(str(tmp_path / "minimal_fields.jsonl"), records)
    assert validate.main(["compare", good_trace, str(tmp_path / "minimal_fields.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "main_top5" in out and "tree.positions" in out
    call = next(r for r in records if r["type"] == "call" and r["call"] > 0 and len(r["path"]) > 1)
    call["path"] = call["path"][:1]  # a bug in a minimal trace is still caught, with the hint that says so
    validate.write_jsonl(str(tmp_path / "minimal_bad.jsonl"), records)
    divergence, skipped, _ = validate.compare_traces(good_trace, str(tmp_path / "minimal_bad.jsonl"))
    assert divergence.field == "path" and "did not record main_argmax" in divergence.cause
    assert "draft_topk" in skipped  # the whole field is absent


def test_compare_refuses_other_settings(good_trace, small_prompts, tmp_path):
    other = validate.trace(REF_MODEL, small_prompts, str(tmp_path / "k1.jsonl"), k=1)
    divergence, _, _ = validate.compare_traces(good_trace, other)
    assert divergence.field == "settings.k" and divergence.prompt is None


# ---- outputs-only mode ----

def test_outputs_mode_checks_outputs_and_accounting(small_prompts, tmp_path):
    model = validate.load_model(REF_MODEL)
    answers = []
    for p in validate.read_prompts(small_prompts):
        r = generate.generate_speculative(model, p["prompt_ids"], p["max_new_tokens"], k=2, eos_id=p["eos_id"])
        answers.append(dict(prompt_id=p["id"], output_ids=r.tokens, accept_lengths=r.accepted_lengths))
    path = str(tmp_path / "answers.jsonl")
    validate.write_jsonl(path, answers)
    ok, lines = validate.check_outputs(REF_MODEL, path, small_prompts)
    assert ok, lines
    tokens = len(answers[0]["output_ids"])
    assert f"CR {tokens / (1 + len(answers[0]['accept_lengths'])):.2f}" in lines[0]

    validate.write_jsonl(path, [dict(a, accept_lengths=[n + 1 for n in a["accept_lengths"]]) for a in answers])
    ok, lines = validate.check_outputs(REF_MODEL, path, small_prompts)
    assert not ok and "bonus token counted twice" in lines[0]
    assert f"CR {tokens / (1 + len(answers[0]['accept_lengths'])):.2f}" in lines[1]  # recomputed after the fix

    validate.write_jsonl(path, [dict(a, output_ids=a["output_ids"][:3] + [a["output_ids"][3] + 1]) for a in answers])
    ok, lines = validate.check_outputs(REF_MODEL, path, small_prompts)
    assert not ok and "differs from greedy at token 3" in lines[0]


def test_a_float32_run_is_within_the_tolerance(good_trace, small_prompts, tmp_path):
    """The documented tolerance is loose enough for float32 on the reference model (tokens still exact)."""
    out = validate.trace(REF_MODEL, small_prompts, str(tmp_path / "f32.jsonl"), k=2, dtype="float32")
    divergence, _, notes = validate.compare_traces(good_trace, out)
    assert divergence is None and any("float32" in n for n in notes)
    assert validate.compare_traces(good_trace, out, atol=1e-9)[0] is not None  # yet float32 is not float64


def test_accounting_recognises_the_usual_mistakes():
    out, gamma = list(range(10)), 4  # 10 tokens: the prefill's first one, then 9 from decode calls
    assert validate.accounting(out, [3, 5, 1], gamma) == ([3, 5, 1], None)
    lengths, problem = validate.accounting(out, [1, 3, 5, 1], gamma)
    assert lengths == [3, 5, 1] and "prefill" in problem
    lengths, problem = validate.accounting(out, [4, 6, 2], gamma)
    assert lengths == [3, 5, 1] and "counted twice" in problem
    lengths, problem = validate.accounting(out, [2, 4, 0], gamma)
    assert lengths == [3, 5, 1] and "not counted" in problem
    assert validate.accounting(out, [6, 2, 1], gamma)[0] is None  # 6 > γ + 1
    assert validate.accounting(out, [3, 3], gamma)[0] is None     # adds up to nothing recognisable
    m = validate.metrics([3, 5, 1], len(out), gamma, max_new_tokens=10)
    assert m["calls"] == 4 and m["cr"] == 10 / 4 and m["tokens_per_call"] == 3
    # drafted depths min(γ, 10 - committed - 1): 4 (2 accepted: depths 1-3 attempted), 4 (4 accepted), 0
    assert m["attempted"] == [2, 2, 2, 1] and m["accepted"] == [2, 2, 1, 1]


def test_reference_command_runs_end_to_end(tmp_path, monkeypatch):
    """`python validate.py reference`, with a few training steps: trains, exports, writes prompts and traces."""
    quick = ["--pretrain-steps", "2", "--ss-steps", "2", "--prune-steps", "2", "--n-stories", "40"]
    monkeypatch.setattr(validate, "REFERENCE_TRAINING", validate.REFERENCE_TRAINING + quick)
    out = str(tmp_path / "ref")
    validate.make_reference(out, str(tmp_path / "work"), n_prompts=2, max_new_tokens=6)
    assert load_portable(f"{out}/model").config.n_streams == 4
    assert len(validate.read_prompts(f"{out}/prompts.jsonl")) == 2
    for name in validate.REFERENCE_TRACES:
        head, prompts, calls = validate.read_trace(f"{out}/{name}")
        assert head["model_sha256"] == validate.model_hash(f"{out}/model") and set(calls) == {"p0", "p1"}


def test_compare_needs_the_prefill_record(good_trace, tmp_path):
    records = [r for r in read(good_trace) if not (r["type"] == "call" and r["call"] == 0)]
    validate.write_jsonl(str(tmp_path / "no_prefill.jsonl"), records)
    divergence, _, _ = validate.compare_traces(good_trace, str(tmp_path / "no_prefill.jsonl"))
    assert (divergence.call, divergence.field) == (0, "call") and "prefill" in divergence.cause


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
