"""Shared fixtures for the test suite (keep this file small: other test files use it too); shared helpers are
in helpers.py."""
import pytest
import torch

from helpers import random_model, train_periodic_model


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test models are tiny: one thread is fastest, and several threads on a busy 2-core machine are 10-50x
    slower (they spin waiting for each other). Restored at the end."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_config():
    """Factory for a tiny GPTConfig: `tiny_config(n_streams=0, lora_rank=4, ...)`.

    Defaults: vocab 64, block 48, 3 layers (the top 2 are MSA blocks), 2 heads, n_embd 16, γ = 3, no dropout.
    Passing n_streams=0 without n_msa_layers also sets n_msa_layers=0.
    """
    from model import GPTConfig

    def make(**overrides):
        cfg = dict(vocab_size=64, block_size=48, n_layer=3, n_head=2, n_embd=16, dropout=0.0, bias=True,
                   n_streams=3, n_msa_layers=2)
        if overrides.get("n_streams") == 0 and "n_msa_layers" not in overrides:
            overrides["n_msa_layers"] = 0
        cfg.update(overrides)
        return GPTConfig(**cfg)

    return make


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """A tiny toy run (a few steps of each stage): base.pt, ss_gamma2.pt, ss_gamma2_pruned.pt."""
    from train_toy import TINY, train_pipeline
    out = tmp_path_factory.mktemp("toy")
    train_pipeline(TINY, str(out), quiet=True)
    return out


@pytest.fixture(scope="module")
def rand_model(_one_thread):
    """Random weights, untrained streams, 3 main-only blocks under 1 MSA block, pruning adapter randomized."""
    return random_model(seed=1)


@pytest.fixture(scope="module")
def trained_model(_one_thread):
    """Trained with the Eq. 5 loss on a periodic sequence (helpers.train_periodic_model), so most drafts are right."""
    return train_periodic_model()
