"""specstream_minimal.py: the readable one-file version must agree with the optimised project code.

- same weights -> same main/stream logits and the same Eq. 5 loss as model.GPT (float64);
- its speculative decoder commits, step by step, exactly what generate.generate_speculative commits,
  and its output is plain greedy decoding;
- it imports nothing but torch and the standard library; its demo runs.
"""
import ast
import random
import sys
from pathlib import Path

import pytest
import torch

import specstream_minimal as sm
from helpers import perturb_
from model import GPT, GPTConfig

MINIMAL_FILE = Path(__file__).resolve().parents[1] / "specstream_minimal.py"

SHAPES = [  # (MiniConfig fields); model.GPT gets the same plus lora_rank=0, prune_rank=0
    dict(vocab_size=23, block_size=24, n_layer=3, n_head=2, n_embd=16, bias=True, n_streams=3, n_msa_layers=2),
    dict(vocab_size=17, block_size=16, n_layer=2, n_head=4, n_embd=16, bias=False, n_streams=2, n_msa_layers=2),
    dict(vocab_size=11, block_size=16, n_layer=2, n_head=1, n_embd=8, bias=True, n_streams=1, n_msa_layers=1),
]


def make_pair(fields: dict, seed: int = 0):
    torch.manual_seed(seed)
    mini = sm.MiniGPT(sm.MiniConfig(**fields)).double().eval()
    gpt = GPT(GPTConfig(**fields, lora_rank=0, prune_rank=0)).double().eval()
    return mini, gpt


def assert_same_outputs(mini, gpt, idx):
    with torch.no_grad():
        main, streams = mini(idx)
        out = gpt(idx)
    assert main.shape == out.logits.shape and streams.shape == out.stream_logits.shape
    torch.testing.assert_close(main, out.logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(streams, out.stream_logits, rtol=0, atol=1e-10)


def test_msa_mask_follows_eq_1_and_2():
    # rows: main t=0,1 | stream 1 at t=0,1 | stream 2 at t=0,1
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],  # main 0: main <= 0
        [1, 1, 0, 0, 0, 0],  # main 1: main <= 1
        [1, 0, 1, 0, 0, 0],  # stream 1 at 0: main <= 0, stream 1 at 0
        [1, 1, 0, 1, 0, 0],  # stream 1 at 1: main <= 1, stream 1 at 1
        [1, 0, 1, 0, 1, 0],  # stream 2 at 0: main <= 0, streams 1..2 at 0
        [1, 1, 0, 1, 0, 1],  # stream 2 at 1: main <= 1, streams 1..2 at 1
    ], dtype=torch.bool)
    assert torch.equal(sm.msa_mask(2, 2), expected)
    assert torch.equal(sm.msa_mask(4, 0), torch.ones(4, 4, dtype=torch.bool).tril())


@pytest.mark.parametrize("fields", SHAPES)
def test_same_parameters_and_logits_both_directions(fields):
    mini, gpt = make_pair(fields)
    assert {k: v.shape for k, v in mini.state_dict().items()} == {k: v.shape for k, v in gpt.state_dict().items()}
    idx = torch.randint(fields["vocab_size"], (3, fields["block_size"]))
    perturb_(mini, 1)
    gpt.load_state_dict(mini.state_dict())  # minimal -> model.GPT
    assert_same_outputs(mini, gpt, idx)
    perturb_(gpt, 2)
    mini.load_state_dict(gpt.state_dict())  # model.GPT -> minimal
    assert_same_outputs(mini, gpt, idx)
    assert_same_outputs(mini, gpt, idx[:1, :5])  # a short sequence: masks are built per length


@pytest.mark.parametrize("fields", SHAPES[:2])
def test_same_logits_and_loss_after_training(fields):
    mini, gpt = make_pair(fields)
    optimizer = torch.optim.AdamW(mini.parameters(), lr=1e-2)
    for _ in range(20):
        idx = torch.randint(fields["vocab_size"], (4, fields["block_size"]))
        loss = mini.loss(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mini.eval()
    gpt.load_state_dict(mini.state_dict())
    idx = torch.randint(fields["vocab_size"], (3, fields["block_size"]))
    assert_same_outputs(mini, gpt, idx)
    targets = torch.cat([idx[:, 1:], torch.full((3, 1), -1)], dim=1)  # targets[:, t] = x[t+1], last ignored
    targets[0, 3] = -1  # an ignored position in the middle
    with torch.no_grad():
        expected = gpt(idx, targets=targets).loss
        torch.testing.assert_close(mini.loss(idx, targets), expected, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- decoding

DECODE_FIELDS = dict(vocab_size=12, block_size=40, n_layer=2, n_head=2, n_embd=32, bias=True,
                     n_streams=3, n_msa_layers=1)
EOS = 0


def word_corpus(n_words: int, seed: int) -> list[int]:
    """Random sequence of a few fixed 'words': predictable inside a word, a free choice between words."""
    rng = random.Random(seed)
    words = [[1, 2, 3, 4], [5, 6, 7], [1, 8, 9, 10, 11], [5, 2, 9], [EOS]]
    return [t for _ in range(n_words) for t in rng.choice(words)]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    untrained = sm.MiniGPT(sm.MiniConfig(**DECODE_FIELDS)).double().eval()
    torch.manual_seed(0)
    trained = sm.MiniGPT(sm.MiniConfig(**DECODE_FIELDS)).double()
    data = torch.tensor(word_corpus(2000, seed=0))
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-2)
    for _ in range(150):
        start = torch.randint(len(data) - 33, (8,)).tolist()
        loss = trained.loss(torch.stack([data[i:i + 32] for i in start]),
                            torch.stack([data[i + 1:i + 33] for i in start]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return dict(untrained=untrained, trained=trained.eval())


def cases(n: int = 20):
    """(prompt, max_new_tokens, eos_id): prompts from the corpus, every length of output up to 16."""
    rng = random.Random(1)
    corpus = word_corpus(200, seed=1)
    out = []
    for i in range(n):
        start = rng.randrange(len(corpus) - 10)
        prompt = corpus[start:start + rng.randint(1, 8)]
        out.append((prompt, rng.randint(1, 16), EOS if i % 2 else None))
    return out


@pytest.fixture(scope="module")
def greedy_outputs(models):
    return {name: [sm.greedy_decode(m, p, n, eos) for p, n, eos in cases()] for name, m in models.items()}


@pytest.mark.parametrize("name", ["untrained", "trained"])
@pytest.mark.parametrize("gamma", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 2])
def test_minimal_speculative_equals_greedy(models, greedy_outputs, name, gamma, k):
    committed = steps_taken = 0
    for (prompt, max_new, eos), reference in zip(cases(), greedy_outputs[name]):
        tokens, steps = sm.speculative_decode(models[name], prompt, max_new, gamma, k, eos_id=eos)
        assert tokens == reference
        assert sum(steps, []) == tokens and steps[0] == tokens[:1]
        assert all(1 <= len(s) <= gamma + 1 for s in steps)
        assert len(tokens) == max_new or (eos is not None and tokens[-1] == eos)
        assert eos is None or eos not in tokens[:-1]
        committed, steps_taken = committed + len(tokens) - 1, steps_taken + len(steps) - 1
    if name == "trained":  # the streams have learned something: drafts do get accepted
        assert committed / steps_taken > 1.5


@pytest.mark.parametrize("name", ["untrained", "trained"])
@pytest.mark.parametrize("gamma", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 2])
def test_same_steps_as_generate(models, greedy_outputs, name, gamma, k):
    generate = pytest.importorskip("generate")
    gpt = GPT(GPTConfig(**DECODE_FIELDS, lora_rank=0, prune_rank=0)).double().eval()
    gpt.load_state_dict(models[name].state_dict())
    for (prompt, max_new, eos), reference in zip(cases(), greedy_outputs[name]):
        tokens, steps = sm.speculative_decode(models[name], prompt, max_new, gamma, k, eos_id=eos)
        result = generate.generate_speculative(gpt, list(prompt), max_new, gamma=gamma, k=k, eos_id=eos)
        assert result.step_tokens == steps, f"prompt {prompt}, γ={gamma}, k={k}"
        assert result.tokens == tokens
        if gamma == 1 and k == 1:
            assert generate.generate_autoregressive(gpt, list(prompt), max_new, eos_id=eos).tokens == reference


def test_decode_edge_cases(models):
    model = models["trained"]
    assert sm.speculative_decode(model, [1, 2], 0, 3, 2) == ([], [])
    assert sm.greedy_decode(model, [1, 2], 0) == []
    tokens, steps = sm.speculative_decode(model, [1, 2], 1, 3, 2)
    assert len(tokens) == 1 and steps == [tokens]
    tree = sm.draft_tree(7, [[1, 2], [3, 4]])  # breadth first, then by rank
    assert tree == [[7], [7, 1], [7, 2], [7, 1, 3], [7, 1, 4], [7, 2, 3], [7, 2, 4]]
    assert sm.draft_tree(7, []) == [[7]]


# ----------------------------------------------------------------------------- the file itself

def test_imports_only_torch_and_the_standard_library():
    tree = ast.parse(MINIMAL_FILE.read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in specstream_minimal.py"
            imported.append(node.module)
    top = {name.split(".")[0] for name in imported}
    assert not top & {"model", "tree", "generate", "data", "bench", "specstream"}
    assert not [t for t in top if t.startswith("train_")]
    bad = sorted(t for t in top if t != "torch" and t not in sys.stdlib_module_names)
    assert not bad, f"specstream_minimal.py must import only torch and the standard library, not {bad}"


def test_demo_runs(capsys):
    sm.main(["--steps", "5", "--gamma", "2", "--k", "2", "--max-new-tokens", "6"])
    out = capsys.readouterr().out
    assert "identical to greedy: True" in out and "all outputs identical to greedy" in out
    with pytest.raises(SystemExit) as exit_info:
        sm.main(["--help"])
    assert exit_info.value.code == 0 and "--gamma" in capsys.readouterr().out
