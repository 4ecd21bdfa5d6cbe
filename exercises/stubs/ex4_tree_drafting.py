"""Exercise 4: drafting a k-ary tree, its attention mask and its position ids. See exercises/ex4_tree_drafting.md."""
import torch


def draft_tree(root: int, topk: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """The full k-ary draft tree, flattened breadth first. root: the token at depth 0; topk[j-1]: the k candidate
    tokens of stream j (best first). Every depth-j candidate is a child of every depth-(j-1) node:
    1 + k + ... + k^γ nodes. Order: the root, then depth by depth; within a depth, parent by parent (in node
    order) and, under one parent, the candidates in top-k order.
    Returns (tokens, parents, depths), one entry per node; the root's parent is -1."""
    raise NotImplementedError("not written yet: see ex4_tree_drafting.md")


def tree_attention_mask(parents: list[int], cache_len: int) -> torch.Tensor:
    """(n, cache_len + n) bool, True = may attend: node i (row i) sees all cache_len committed cache entries
    (columns 0..cache_len-1) and, among the tree nodes (column cache_len + a for node a), its ancestors and itself."""
    raise NotImplementedError("not written yet: see ex4_tree_drafting.md")


def position_ids(depths: list[int], cache_len: int) -> list[int]:
    """Position of each node on top of a cache of cache_len tokens: cache_len + depth."""
    raise NotImplementedError("not written yet: see ex4_tree_drafting.md")
