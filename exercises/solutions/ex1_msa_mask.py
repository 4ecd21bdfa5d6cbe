"""Exercise 1: the multi-stream attention mask (paper Eq. 1-2). See exercises/ex1_msa_mask.md."""
import torch


def msa_mask(T: int, n_streams: int) -> torch.Tensor:
    """The ((1+γ)T, (1+γ)T) boolean attention mask of MSA, True = the query row may attend to the key column.

    Rows and columns are laid out stream by stream: index r = j*T + t holds stream j at position t, with j = 0 the
    main stream, then the T rows of stream 1, ..., then the T rows of stream γ = n_streams.
    - main stream at t: sees the main stream at positions <= t (Eq. 1), nothing else;
    - stream j at t: sees the main stream at positions <= t and streams 1..j of position t, itself included (Eq. 2).
    """
    size = (1 + n_streams) * T
    mask = torch.zeros(size, size, dtype=torch.bool)
    for j in range(n_streams + 1):
        for t in range(T):
            row = j * T + t
            mask[row, :t + 1] = True  # main keys 0..t (Eq. 1, Eq. 2)
            for i in range(1, j + 1):
                mask[row, i * T + t] = True  # streams 1..j of the same position (Eq. 2)
    return mask
