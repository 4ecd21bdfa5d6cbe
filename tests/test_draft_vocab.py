"""A trimmed draft vocabulary (GPT.trim_draft_vocab): the drafters (streams, or every Medusa head) score only N given
token ids while verification keeps every token, so decoding stays lossless. That is proven where the exactness tests
are, each run with and without trimming (the `trim` fixture: test_generate, test_batch, the Medusa test of
test_baselines, the sampling test of test_sampling). Here: what the trimmed drafters compute, that training never
sees the setting, the frequency ranking, the benchmarks' flag, and bad input."""
import pytest
import torch

import bench
from generate import draft_sampled, draft_topk, frequent_tokens, generate_speculative
from helpers import make_model, shuffled_ids
from model import GPTConfig
from tree import sampling_probs

V = 40


def model_of(kind: str, seed: int = 0):
    """A random float64 model with 3 drafters: streams or Medusa heads."""
    heads = dict(n_streams=3, n_msa_layers=1) if kind == "streams" else dict(n_medusa_heads=3, n_msa_layers=1)
    cfg = GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, lora_rank=2, **heads)
    return make_model(cfg, seed)


def drafter_states(model, kind: str) -> torch.Tensor:
    """What the drafters read at 4 nodes: stream states (4, 3, C), or final main states (4, C) for Medusa."""
    g = torch.Generator().manual_seed(5)
    return torch.randn((4, 3, 16) if kind == "streams" else (4, 16), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["streams", "medusa"])
def test_trimmed_drafts_are_the_top_k_of_the_draft_vocabulary(kind):
    """Trimmed logits are the full logits' columns `ids`; top-k runs over them and maps back to token ids."""
    model, ids = model_of(kind), shuffled_ids(V, 12)
    states = drafter_states(model, kind)
    full = model.draft_logits(states)  # (4, 3, V)
    streams, main = (states, None) if kind == "streams" else (None, states)
    model.trim_draft_vocab(ids)
    torch.testing.assert_close(model.draft_logits(states, trimmed=True), full[..., ids])
    torch.testing.assert_close(model.draft_logits(states), full)  # untrimmed unless asked
    tokens, probs = draft_topk(model, main, streams, 2, 4)  # (4, 2, 4) each
    expected = torch.softmax(full[..., :2, ids].float(), dim=-1).topk(4, dim=-1)
    assert torch.equal(tokens, ids[expected.indices])
    torch.testing.assert_close(probs, expected.values)
    model.trim_draft_vocab(None)
    assert torch.equal(draft_topk(model, main, streams, 2, 4)[0], full[..., :2, :].topk(4, dim=-1).indices)


def test_sampled_drafts_come_from_the_draft_vocabulary():
    """q is the transformed distribution over the N tokens, zero elsewhere; every drawn node is one of them."""
    model, ids = model_of("streams"), shuffled_ids(V, 12)
    states = drafter_states(model, "streams")[0]  # (3, C)
    full = model.draft_logits(states)  # (3, V)
    model.trim_draft_vocab(ids)
    tree, _, q = draft_sampled(model, states[0], states, 7, 3, 4, None, 0.8, 6, None, torch.Generator().manual_seed(0))
    assert q.shape == (3, V)
    torch.testing.assert_close(q[:, ids], sampling_probs(full[:, ids].detach(), 0.8, 6))
    outside = torch.ones(V, dtype=torch.bool)
    outside[ids] = False
    assert (q[:, outside] == 0).all() and torch.allclose(q.sum(-1), torch.ones(3, dtype=torch.float64))
    assert set(tree.tokens[1:].tolist()) <= set(ids.tolist())


@pytest.mark.parametrize("kind", ["streams", "medusa"])
def test_training_never_sees_the_trimmed_vocabulary(kind):
    """GPT.forward (the Eq. 5 loss and its gradients, and logits without targets) is that of the untrimmed model."""
    x = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    runs = []
    for ids in (None, shuffled_ids(V, 8)):
        model = model_of(kind).train()
        model.trim_draft_vocab(ids)
        out = model(x[:, :-1], x[:, 1:])
        out.loss.backward()
        runs.append((out, model.lm_head.weight.grad.clone(), model(x[:, :-1]).stream_logits))
    (plain, grad, logits), (trimmed, trimmed_grad, trimmed_logits) = runs
    assert trimmed.stream_logits.shape[-1] == V and trimmed_logits.shape[-1] == V
    torch.testing.assert_close(trimmed.loss, plain.loss)
    torch.testing.assert_close(trimmed.stream_losses, plain.stream_losses)
    torch.testing.assert_close(trimmed_grad, grad)
    torch.testing.assert_close(trimmed_logits, logits)


def test_trimming_is_an_inference_setting_only():
    """Checkpoints never hold it; the trimmed rows follow the model's dtype and are a contiguous transposed copy;
    None takes it back."""
    model = model_of("streams")
    keys = set(model.state_dict())
    model.trim_draft_vocab(shuffled_ids(V, 10))
    assert set(model.state_dict()) == keys
    assert model.draft_weight_t.shape == (1, 16, 10) and model.draft_weight_t.is_contiguous()
    assert model.float().draft_weight_t.dtype == torch.float32 and model.draft_ids.dtype == torch.long
    model.trim_draft_vocab(None)
    assert model.draft_ids is None and model.draft_weight_t is None


def test_bad_draft_vocabularies_are_refused():
    model = model_of("streams")
    for bad in (torch.tensor([1, 2, 1]), torch.tensor([0, V]), torch.tensor([-1, 3]), torch.tensor([], dtype=torch.long),
                torch.tensor([[1, 2]])):
        with pytest.raises(ValueError, match="distinct token ids in"):
            model.trim_draft_vocab(bad)
    model.trim_draft_vocab(torch.tensor([3, 5]))
    with pytest.raises(ValueError, match=r"k=3 must be an integer in 1\.\.2 \(the model's trimmed draft vocabulary\)"):
        generate_speculative(model, [1, 2], 5, k=3)


def test_frequent_tokens_ranks_by_count_then_by_id():
    assert frequent_tokens([[3, 1, 3], [2, 3, 1]], 4, 5).tolist() == [3, 1, 2, 0]
    assert frequent_tokens([[4, 2]], 5, 5).tolist() == [2, 4, 0, 1, 3]  # ties by id; unseen ids last
    assert frequent_tokens([], 2, 5).tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"n=0 must be an integer in 1\.\.5"):
        frequent_tokens([[1]], 0, 5)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\)"):
        frequent_tokens([[1, 7]], 2, 5)


def test_bench_profile_with_a_draft_vocabulary_and_a_dtype(toy_dir, tmp_path):
    """`bench.py profile --toy --draft-vocab N --dtype bfloat16` writes its profile beside the default one, naming
    the settings and the machine."""
    bench.main(["profile", "--toy", "--toy-dir", str(toy_dir), "--toy-gamma", "2", "--n-stories", "100",
                "--max-new-tokens", "12", "--profile-calls", "10", "--results-dir", str(tmp_path),
                "--draft-vocab", "10", "--dtype", "bfloat16"])
    table = (tmp_path / "toy" / "profile_bfloat16_draftvocab10.md").read_text()
    assert "the drafters score 10 of the 81 tokens (the most frequent in the training text)" in table
    assert "decoding in bfloat16" in table
    assert "Machine: CPU" in table and "BLAS" in table and "| drafting LM head + top-k |" in table
    with pytest.raises(SystemExit, match=r"error: --draft-vocab -1 is no token count — give 0 \(every token\) or 1\.\.81"):
        bench.main(["profile", "--toy", "--toy-dir", str(toy_dir), "--toy-gamma", "2", "--n-stories", "100",
                    "--draft-vocab", "-1"])
