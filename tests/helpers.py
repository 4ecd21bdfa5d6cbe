"""Helpers shared by the tests: models with non-trivial random weights, random tokens and prompts, the periodic
sequence the trained decoding model learns and the greedy output of the tiny toy run (their fixtures are in
conftest.py), and expected accepted lengths."""
import math
from collections.abc import Iterable

import pytest
import torch

from checkpoint import load_model
from generate import frequent_tokens, generate_autoregressive
from model import GPT, GPTConfig
from train_toy import ToyData

ATOL = 1e-10  # float64 comparisons between different computation orders


def require_task_data():
    """Skip the calling test unless the real-task data and the GPT-2 tokenizer files are on this machine (tests
    never download)."""
    import data
    try:
        data.resolve_data_dir()
        data.gpt2_encoding()
    except (FileNotFoundError, RuntimeError) as e:
        pytest.skip(f"no real-task data or tokenizer here: {e}")


# ------------------------------------------------------------------------------------------------------------
# random weights
# ------------------------------------------------------------------------------------------------------------

def randomize(model: GPT, seed: int = 0, noise_dtype: torch.dtype = torch.float64, gain: float = 1.0,
              vector_std: float = 0.1, stds: dict[str, float] | None = None, lora_b: bool = True) -> GPT:
    """Give every parameter a non-trivial random value: the default init (std 0.02) makes every greedy output one
    repeated token and hides effects in noise. LayerNorm weights 1 + 0.2 z, the parameters named in `stds` std * z
    (default: the stream embeddings, 0.5), other matrices gain * z / sqrt(fan-in), other vectors vector_std * z,
    with z ~ N(0, 1) drawn in noise_dtype from `seed`, parameter by parameter. lora_b=False leaves LoRA B at zero.
    Tests keep the noise dtype and scales their numbers were set with: the values depend on them."""
    stds = {"transformer.stream_emb": 0.5} if stds is None else stds
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g, dtype=noise_dtype).to(p.dtype)
            if name.endswith("lora_B") and not lora_b:
                continue
            if "ln_" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * z)
            elif name in stds:
                p.copy_(stds[name] * z)
            elif p.dim() == 2:
                p.copy_(gain * z / math.sqrt(p.shape[-1]))
            else:
                p.copy_(vector_std * z)
    return model


def make_model(cfg: GPTConfig, seed: int = 0, dtype: torch.dtype = torch.float64, **options) -> GPT:
    """GPT(cfg) randomized from `seed` (options: see randomize), in `dtype`, in eval mode."""
    torch.manual_seed(seed)
    return randomize(GPT(cfg), seed, **options).to(dtype).eval()


def random_model(seed: int = 0, vocab_size: int = 50, n_layer: int = 4, n_msa_layers: int = 1, n_embd: int = 16,
                 n_streams: int = 4, prune_rank: int = 4, block_size: int = 64) -> GPT:
    """The random float64 model of the decoding tests (float32 noise)."""
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=n_embd,
                    n_streams=n_streams, n_msa_layers=n_msa_layers, prune_rank=prune_rank)
    return make_model(cfg, seed, noise_dtype=torch.float32)


def perturb_(model: torch.nn.Module, seed: int, std: float = 0.1) -> torch.nn.Module:
    """Move every parameter (biases, LayerNorms and stream embeddings included) away from its value by std * z,
    z ~ N(0, 1) in its own dtype; returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def randomize_fan_in(params: Iterable[torch.Tensor], seed: int) -> None:
    """Set each of `params`, in this order, to z / sqrt(its last dimension), z ~ N(0, 1) in its own dtype."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(p.shape[-1]))


# ------------------------------------------------------------------------------------------------------------
# tokens and prompts
# ------------------------------------------------------------------------------------------------------------

def tokens(cfg: GPTConfig, B: int, T: int, seed: int = 0) -> torch.Tensor:
    """(B, T) random token ids of cfg's vocabulary."""
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def random_prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    """n random prompts of lengths 1..20 (cycling)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1 + i % 20,), generator=g).tolist() for i in range(n)]


TRAIN_VOCAB, PERIOD = 40, 17  # the trained decoding model's vocabulary and the period of its sequence
RAND_THRESHOLD = 0.02          # pruning thresholds of the decoding tests (random and trained model)
TRAINED_THRESHOLD = 0.02


def periodic_sequence(length: int) -> torch.Tensor:
    """A fixed sequence of PERIOD distinct tokens, repeated: one token fixes the phase."""
    g = torch.Generator().manual_seed(123)
    period = torch.randperm(TRAIN_VOCAB, generator=g)[:PERIOD]
    return period.repeat(length // PERIOD + 1)[:length]


def periodic_prompts(n: int, seed: int) -> list[list[int]]:
    """Windows of the training sequence (length 1..20); every 5th one has a corrupted token."""
    g = torch.Generator().manual_seed(seed)
    seq = periodic_sequence(200)
    prompts = []
    for i in range(n):
        length = 1 + i % 20
        start = int(torch.randint(0, 150, (1,), generator=g))
        p = seq[start:start + length].tolist()
        if i % 5 == 4:
            p[int(torch.randint(0, length, (1,), generator=g))] = int(torch.randint(0, TRAIN_VOCAB, (1,), generator=g))
        prompts.append(p)
    return prompts


def train_periodic_model() -> GPT:
    """A float64 model trained with the Eq. 5 loss on the periodic sequence, so most drafts are right; its pruning
    adapter is randomized (an untrained one is the identity)."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=TRAIN_VOCAB, block_size=64, n_layer=3, n_head=2, n_embd=24, n_streams=4,
                    n_msa_layers=2, prune_rank=4)
    model = GPT(cfg)
    seq = periodic_sequence(400)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        starts = torch.randint(0, len(seq) - 33, (8,), generator=g)
        x = torch.stack([seq[s:s + 32] for s in starts])
        y = torch.stack([seq[s + 1:s + 33] for s in starts])
        loss = model(x, targets=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2, f"toy training did not converge: loss {loss.item()}"
    with torch.no_grad():
        model.prune_adapter.up.weight.copy_(torch.randn(model.prune_adapter.up.weight.shape, generator=g) * 0.5)
    return model.double().eval()


def shuffled_ids(vocab_size: int, n: int, seed: int = 0) -> torch.Tensor:
    """n distinct token ids of the vocabulary, in a shuffled order: a random model's trimmed draft vocabulary."""
    return torch.randperm(vocab_size, generator=torch.Generator().manual_seed(seed))[:n]


def periodic_draft_vocab(n: int = 14) -> torch.Tensor:
    """The trained decoding model's draft vocabulary: the n most frequent tokens of its training sequence, which
    holds PERIOD = 17 distinct tokens (n = 14 leaves three of them out)."""
    return frequent_tokens([periodic_sequence(400).tolist()], n, TRAIN_VOCAB)


def toy_greedy(toy_dir, words: str, max_new: int) -> tuple[GPT, ToyData, list[int], list[int]]:
    """From a tiny toy run (the toy_dir fixture): its pruned SS model, the toy vocabulary, the prompt ids of
    `words` and their greedy AR output, computed without the command line."""
    model = load_model(str(toy_dir / "ss_gamma2_pruned.pt")).eval()
    model.merge_lora()
    data = ToyData(10)
    prompt = [data.eos_id] + data.encode(words.split())
    return model, data, prompt, generate_autoregressive(model, prompt, max_new, eos_id=data.eos_id).tokens


def full_acceptance_lengths(m: int, gamma: int) -> list[int]:
    """Committed tokens per decode call when every draft is accepted: γ+1, except at the end."""
    lengths, left = [], m - 1
    while left > 0:
        lengths.append(min(gamma + 1, left))
        left -= lengths[-1]
    return lengths
