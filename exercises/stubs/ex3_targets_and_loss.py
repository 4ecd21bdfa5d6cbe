"""Exercise 3: the targets and the loss of Eq. 5. See exercises/ex3_targets_and_loss.md."""
import torch
from torch.nn import functional as F


def eq5_targets(tokens: list[int], n_streams: int, prompt_len: int = 0) -> torch.Tensor:
    """Targets of every position: (T, 1+γ) long tensor for a sequence x_0..x_{T-1} = tokens.
    Column 0 is the main stream's target x[t+1]; column j (1..γ) is stream j's target x[t+1+j].
    A target is -1 (ignored) when it falls past the end of the sequence or on a prompt token (index < prompt_len)."""
    raise NotImplementedError("not written yet: see ex3_targets_and_loss.md")


def eq5_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Eq. 5: L = CE(main) + alpha * sum_j CE(stream j), a scalar tensor.
    logits: (T, 1+γ, V), column 0 from the main stream, column j from stream j; targets: (T, 1+γ) from eq5_targets.
    Each CE is the mean over that column's valid targets (-1 = ignored); a column without valid targets adds 0."""
    raise NotImplementedError("not written yet: see ex3_targets_and_loss.md")
