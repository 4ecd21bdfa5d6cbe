"""Exercise 1: the multi-stream attention mask (paper Eq. 1-2). See exercises/ex1_msa_mask.md."""
import torch


def msa_mask(T: int, n_streams: int) -> torch.Tensor:
    """The ((1+γ)T, (1+γ)T) boolean attention mask of MSA, True = the query row may attend to the key column.

    Rows and columns are laid out stream by stream: index r = j*T + t holds stream j at position t, with j = 0 the
    main stream, then the T rows of stream 1, ..., then the T rows of stream γ = n_streams.
    - main stream at t: sees the main stream at positions <= t (Eq. 1), nothing else;
    - stream j at t: sees the main stream at positions <= t and streams 1..j of position t, itself included (Eq. 2).
    """
    raise NotImplementedError("not written yet: see ex1_msa_mask.md")
