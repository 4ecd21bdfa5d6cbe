"""The real-task training recipe: "frozen" mode (the next-token model stays exactly itself, the streams get a
stream-only adapter), self-distilled stream targets (the model's own greedy continuations, cached and resumable),
E2E delexicalisation and the development split. Exactness tests run in float64 on tiny models."""
import json

import pytest
import torch

import train_task
from data import (EOS, SEP, CompactVocab, Example, TaskData, delexicalise, is_e2e_dev_mr, load_task, mr_values,
                  relexicalise)
from benchmarks.params import parameter_counts
from generate import generate_autoregressive, generate_speculative
from helpers import make_model, randomize_fan_in
from model import GPT, GPTConfig, is_stream_param
from train import StageConfig, from_base, train_stage, trainable_for


def ntp_and_frozen(adapter_rank=4, n_msa_layers=2, seed=0, adapter_in="attn+mlp"):
    """A next-token LoRA model and the frozen-mode SS model built from it, as train_task.py builds them."""
    base = dict(vocab_size=40, block_size=64, n_layer=3, n_head=2, n_embd=16, lora_rank=4)
    ntp = make_model(GPTConfig(**base), seed, dtype=torch.float32, vector_std=0.3)  # from_base builds float32
    config = GPTConfig(**base, n_streams=3, n_msa_layers=n_msa_layers, stream_adapter_rank=adapter_rank, prune_rank=4,
                       stream_adapter_in=adapter_in)
    frozen, ntp = from_base(ntp, config, "cpu", seed=seed).double(), ntp.double()
    # the stream side gets random values too (fresh, the adapter would be a no-op)
    randomize_fan_in((p for name, p in frozen.named_parameters()
                      if is_stream_param(name) or name.startswith("prune_adapter.")), seed + 1)
    return ntp, frozen.eval()


@pytest.mark.parametrize("n_msa_layers, adapter_in", [(1, "attn+mlp"), (3, "attn+mlp"), (2, "attn"), (2, "mlp")])
def test_frozen_mode_main_stream_is_the_next_token_model(n_msa_layers, adapter_in):
    ntp, frozen = ntp_and_frozen(n_msa_layers=n_msa_layers, adapter_in=adapter_in)
    idx = torch.randint(0, 40, (3, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = ntp(idx).logits
        out = frozen(idx)
    assert torch.allclose(out.logits, expected, atol=1e-12, rtol=0)
    assert out.stream_logits is not None and not torch.allclose(out.stream_logits[:, :, 0], out.logits)
    prompts = [torch.randint(0, 40, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in range(1, 13)]
    for i, prompt in enumerate(prompts):
        greedy = generate_autoregressive(ntp, prompt, 24).tokens
        assert generate_autoregressive(frozen, prompt, 24).tokens == greedy
        kw = dict(k=1 + i % 3, tree_cap=None if i % 2 else 6, prune_threshold=0.05 if i % 4 == 3 else None,
                  stream_pass=("tree", "accepted")[i % 2])
        assert generate_speculative(frozen, prompt, 24, **kw).tokens == greedy, kw
    frozen.merge_lora()  # the stream adapter is never merged: the main stream stays the next-token model
    ntp.merge_lora()
    with torch.no_grad():
        assert torch.allclose(frozen(idx).logits, ntp(idx).logits, atol=1e-12, rtol=0)


@pytest.mark.parametrize("adapter_in", ["attn+mlp", "attn", "mlp"])
def test_stream_adapter_changes_the_streams_only(adapter_in):
    _, frozen = ntp_and_frozen(adapter_in=adapter_in)
    without = GPT(frozen.config).double().eval()
    sd = frozen.state_dict()
    without.load_state_dict({k: torch.zeros_like(v) if ".stream_B" in k else v for k, v in sd.items()})
    idx = torch.randint(0, 40, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = frozen(idx), without(idx)
    assert torch.equal(a.logits, b.logits)
    assert (a.stream_logits - b.stream_logits).abs().max() > 1e-3
    counts = parameter_counts(frozen)
    d, r, n_s = 16, 4, 2  # per MSA block: c_attn r(d + 3d), attn c_proj r(2d), c_fc r(d + 4d), mlp c_proj r(4d + d)
    per_block = dict(attn=4 * d + 2 * d, mlp=5 * d + 5 * d)
    assert counts["stream_adapter"] == n_s * r * sum(per_block[s] for s in adapter_in.split("+"))
    for sublayer in ("attn", "mlp"):
        carries = any(".stream_" in n for n, _ in getattr(frozen.transformer.h[2], sublayer).named_parameters())
        assert carries == (sublayer in adapter_in)
    assert not any(".stream_" in n for n, _ in frozen.transformer.h[0].named_parameters())  # lower block: none


def test_streams_loss_trains_only_stream_side_parameters(tmp_path):
    _, frozen = ntp_and_frozen()
    frozen = frozen.float()
    trainable = {n for n, p in frozen.named_parameters() if p in set(trainable_for(frozen, "streams"))}
    assert trainable == {n for n, _ in frozen.named_parameters() if is_stream_param(n)}
    assert "transformer.stream_emb" in trainable and any(".stream_B" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in frozen.named_parameters()}
    idx = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(2))
    targets, mask = idx.roll(-1, 1), torch.ones(4, 16, dtype=torch.bool)
    train_stage(frozen, lambda step: (idx, targets, mask), StageConfig("streams", 3, 1e-2, loss="streams", warmup=1),
                str(tmp_path / "s.pt"), quiet=True)
    changed = {n for n, p in frozen.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    shared = {n for n, p in frozen.named_parameters() if p in set(trainable_for(frozen, "eq5"))}
    assert shared == trainable | {n for n in before if "lora_" in n}


def test_stream_adapter_rank_needs_streams():
    with pytest.raises(ValueError, match="stream_adapter_rank"):
        GPTConfig(n_streams=0, stream_adapter_rank=4)
    with pytest.raises(ValueError, match=r"stream_adapter_in='mlp,attn' is invalid: it must be attn\+mlp or attn or"):
        GPTConfig(n_streams=2, n_msa_layers=1, stream_adapter_rank=4, stream_adapter_in="mlp,attn")


# ------------------------------------------------------------------------------------------------------------
# self-distilled stream targets
# ------------------------------------------------------------------------------------------------------------

def test_greedy_continuations_equal_one_prompt_greedy():
    ntp, _ = ntp_and_frozen()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 40, (7,), generator=g).tolist() for _ in range(5)]
    eos = 5
    got = train_task.greedy_continuations(ntp, prompts, 20, eos, batch_size=2)
    assert got == [generate_autoregressive(ntp, p, 20, eos_id=eos).tokens for p in prompts]


class FakeVocab(CompactVocab):
    """Ids are characters' codes minus 94 (printable a..z), so tests need no tokenizer files."""

    def __init__(self):
        self.gpt2_ids = list(range(40))

    def encode(self, text):
        return [ord(c) - 94 for c in text]


def test_self_targets_are_cached_resumed_and_renewed(tmp_path, monkeypatch):
    ntp, _ = ntp_and_frozen()
    ntp = ntp.float()
    recipe = train_task.TaskRecipe(task="e2e")
    examples = [Example(p, "x", ["x"]) for p in ("abc", "abd", "abc", "bcdef", "zz")]  # "abc" twice: one prompt
    calls = []
    real = train_task.greedy_continuations

    def counting(model, prompts, max_new, eos, batch_size=64):
        calls.append(len(prompts))
        return real(model, prompts, max_new, eos, batch_size)

    monkeypatch.setattr(train_task, "greedy_continuations", counting)
    monkeypatch.setattr(train_task, "MAX_NEW_TOKENS", {"e2e": 12})  # the tiny model's block is 64 positions
    monkeypatch.setattr(train_task, "SELF_TARGET_CHUNK", 3)
    path = str(tmp_path / "self.json")
    data = train_task.self_targets(recipe, ntp, FakeVocab(), examples, 10, path, quiet=True)
    assert calls == [3, 1]  # 3 prompts at a time, shortest first ("zz", "abc", "abd"; then "bcdef")
    saved = json.loads(open(path).read())
    assert saved["format"] == 1 and len(saved["prompts"]) == 4 and all(p[-1] == SEP for p in saved["prompts"])
    for prompt, continuation in zip(saved["prompts"], saved["continuations"]):
        assert continuation == generate_autoregressive(ntp, prompt, len(continuation), eos_id=EOS).tokens
    ids, n = data.encoded[0]
    assert ids[n] == SEP and ids[:n + 1] == saved["prompts"][0]
    calls.clear()
    train_task.self_targets(recipe, ntp, FakeVocab(), examples, 10, path, quiet=True)
    assert calls == []  # everything cached
    with open(path, "w") as f:  # an interrupted run: only the first prompt is there
        json.dump(dict(saved, prompts=saved["prompts"][:1], continuations=saved["continuations"][:1]), f)
    train_task.self_targets(recipe, ntp, FakeVocab(), examples, 10, path, quiet=True)
    assert calls == [3]
    calls.clear()
    few = train_task.self_targets(recipe, ntp, FakeVocab(), examples, 2, path, quiet=True)  # a subset: all cached
    assert calls == [] and len(few.encoded) == 2
    with torch.no_grad():  # another model: everything again
        ntp.lm_head.weight.mul_(1.5)
    train_task.self_targets(recipe, ntp, FakeVocab(), examples, 10, path, quiet=True)
    assert calls == [3, 1]


def test_self_target_cache_is_checked_before_it_is_trained_on(tmp_path, monkeypatch, capsys):
    """A cache cut short (not JSON), of another format, with fewer continuations than prompts or with ids outside
    the vocabulary is generated again, with a warning that names the file; targets that still lack a chosen prompt
    are refused, never trained on as they are."""
    ntp, _ = ntp_and_frozen()
    ntp = ntp.float()
    recipe = train_task.TaskRecipe(task="e2e")
    examples = [Example(p, "x", ["x"]) for p in ("abc", "abd", "bcdef", "zz")]
    monkeypatch.setattr(train_task, "MAX_NEW_TOKENS", {"e2e": 12})
    path = tmp_path / "self.json"
    fresh = train_task.self_targets(recipe, ntp, FakeVocab(), examples, 10, str(path), quiet=True)
    text = path.read_text()
    saved = json.loads(text)
    broken = [(text[:len(text) // 2], "is not valid JSON (cut short?"),
              ("[1, 2]", "is not a self-distillation cache of format 1"),
              (json.dumps(dict(saved, continuations=saved["continuations"][:2])), "holds 4 prompts but 2 continuations"),
              (json.dumps(dict(saved, continuations=[[999]] + saved["continuations"][1:])), "continuation 0 is not"),
              (json.dumps(dict(saved, prompts=[[5, 6]] + saved["prompts"][1:])), "prompt 0 is not a list of ids")]
    for content, warning in broken:
        path.write_text(content)
        data = train_task.self_targets(recipe, ntp, FakeVocab(), examples, 10, str(path), quiet=True)
        err = capsys.readouterr().err
        assert err.startswith(f"warning: {path}") and warning in err and "generating" in err
        assert json.loads(path.read_text()) == saved and data.encoded == fresh.encoded
    path.unlink()
    monkeypatch.setattr(train_task, "greedy_continuations", lambda model, prompts, max_new, eos: [])
    with pytest.raises(ValueError, match=r"holds the targets of 0 of the 4 chosen prompts — delete it"):
        train_task.self_targets(recipe, ntp, FakeVocab(), examples, 10, str(path), quiet=True)


def test_task_data_from_sequences_learns_the_completion_only():
    data = TaskData.from_sequences(FakeVocab(), [([5, 6, SEP], [7, 8, EOS]), ([5, SEP], [9] * 20)], block_size=8)
    assert data.skipped == 1
    idx, targets, mask = data.batch(0, 2)
    assert idx[0].tolist() == [5, 6, SEP, 7, 8] and targets[0].tolist() == [6, SEP, 7, 8, EOS]
    assert mask[0].tolist() == [False, False, True, True, True]


# ------------------------------------------------------------------------------------------------------------
# E2E delexicalisation and the development split (real data; skipped without it)
# ------------------------------------------------------------------------------------------------------------

def test_delexicalise_and_relexicalise():
    ex = Example("name[The Eagle], eatType[pub], near[Burger King]",
                 "The Eagle is a pub near Burger King. The Eagle is cheap.", ["r1", "r2"])
    d = delexicalise(ex)
    assert d.prompt == "name[X-name], eatType[pub], near[X-near]"
    assert d.completion == "X-name is a pub near X-near. X-name is cheap."
    assert d.references == ["r1", "r2"] and d.slots == {"X-name": "The Eagle", "X-near": "Burger King"}
    assert relexicalise(d.completion, d.slots) == ex.completion
    assert mr_values("name[A b], customer rating[5 out of 5]") == {"name": "A b", "customer rating": "5 out of 5"}
    no_near = delexicalise(Example("name[Zizzi], food[Thai]", "Zizzi serves Thai.", []))
    assert no_near.slots == {"X-name": "Zizzi"} and no_near.completion == "X-name serves Thai."


def real_data_or_skip():
    try:
        return load_task("e2e", "train"), load_task("e2e", "dev"), load_task("e2e", "test", delexicalised=True)
    except FileNotFoundError as e:
        pytest.skip(f"no real-task data here: {e}")


def test_e2e_dev_split_holds_out_whole_mrs():
    train, dev, test = real_data_or_skip()
    train_mrs, dev_mrs = {ex.prompt for ex in train}, {ex.prompt for ex in dev}
    assert not train_mrs & dev_mrs and len(dev_mrs) == len(dev) == 51 and len(train) + 427 == 4672
    assert all(is_e2e_dev_mr(m) for m in dev_mrs) and not any(is_e2e_dev_mr(m) for m in train_mrs)
    assert sum(len(ex.references) for ex in dev) == 427
    assert all(ex.prompt.startswith("name[X-name]") and "X-name" in ex.slots for ex in test)


def test_realisation_counts_seen_and_unseen_names():
    from benchmarks import report
    examples = [delexicalise(Example(f"name[{n}], near[{m}]", "", [])) for n, m in
                (("Aromi", "Tesco"), ("Zizzi", "Tesco"), ("Zizzi", "Café Rouge"), ("Aromi", "Tesco"))]
    outputs = ["Aromi is near Tesco.", "A place near Tesco.", "Zizzi is near Café Rouge.", "Near Tesco."]
    seen = dict(name={"Aromi"}, near={"Tesco"})
    assert report.realisation(outputs, examples, seen) == {"name seen": 50.0, "name unseen": 50.0,
                                                           "near seen": 100.0, "near unseen": 100.0}
