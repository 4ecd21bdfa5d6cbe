"""Exercise 8: lossless speculative sampling on a tree: the accept/reject rule and the residual distribution.
See exercises/ex8_sampling.md."""
import torch


def accept_probability(p_x: float, q_x: float) -> float:
    """Probability of accepting a draft token x that was drawn from the draft distribution q, when the target
    distribution gives it p(x): p_x = p(x), q_x = q(x) > 0."""
    raise NotImplementedError("not written yet: see ex8_sampling.md")


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(V,) The target left over after a draft drawn from q was rejected: max(p - q, 0), renormalised to sum 1.
    (When nothing is left, p == q and a rejection never happens: return p.)"""
    raise NotImplementedError("not written yet: see ex8_sampling.md")


def sibling_distributions(q: torch.Tensor, drawn: list[int]) -> torch.Tensor:
    """(k, V) Row i is the distribution the i-th sibling was drawn from: siblings are k draws WITHOUT replacement
    from q (V,), so row i is q with drawn[0..i-1] removed (set to 0) and renormalised."""
    raise NotImplementedError("not written yet: see ex8_sampling.md")


def verify_children(p: torch.Tensor, children: list[int], qs: torch.Tensor,
                    coins: list[float]) -> tuple[int, torch.Tensor]:
    """Recursive rejection sampling at one node. p: (V,) the target distribution at the node (of the token after
    it); children: the children's tokens in draw order; qs: (k, V) row i = the distribution child i was drawn from;
    coins: one uniform number in [0, 1) per child. Try the children in order: child i (token x) is accepted iff
    coins[i] < accept_probability(p[x], qs[i, x]); a rejection replaces p by residual(p, qs[i]).
    Returns (i, p) for the first accepted child i, or (-1, p) when all are rejected: the token after the node is
    then drawn from this p (the bonus token)."""
    raise NotImplementedError("not written yet: see ex8_sampling.md")
