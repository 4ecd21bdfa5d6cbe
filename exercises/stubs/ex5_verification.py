"""Exercise 5: greedy verification of a tree and KV-cache compaction. See exercises/ex5_verification.md."""
import torch


def verify_greedy(tokens: list[int], parents: list[int], main_argmax: list[int]) -> list[int]:
    """Greedy verification ("hard matching") of a breadth-first tree (parents before children; node 0 = root).
    main_argmax[i]: the main stream's argmax at node i, its prediction of the token AFTER node i.
    A child is accepted iff its token equals the argmax at its parent. Returns the longest accepted path as node
    indices, root first (the root is always accepted)."""
    raise NotImplementedError("not written yet: see ex5_verification.md")


def compact_cache(entries: torch.Tensor, cache_len: int, path: list[int]) -> torch.Tensor:
    """KV-cache compaction after verification. entries: (N, D), one row per cache entry: rows 0..cache_len-1 are
    committed, row cache_len + i holds tree node i (written by the tree forward). Returns the new committed cache,
    (cache_len + len(path), D): the committed rows unchanged, then the rows of the accepted nodes in path order."""
    raise NotImplementedError("not written yet: see ex5_verification.md")
