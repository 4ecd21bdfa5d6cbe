"""Exercise 4: drafting a k-ary tree, its attention mask and its position ids. See exercises/ex4_tree_drafting.md."""
import torch


def draft_tree(root: int, topk: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """The full k-ary draft tree, flattened breadth first. root: the token at depth 0; topk[j-1]: the k candidate
    tokens of stream j (best first). Every depth-j candidate is a child of every depth-(j-1) node:
    1 + k + ... + k^γ nodes. Order: the root, then depth by depth; within a depth, parent by parent (in node
    order) and, under one parent, the candidates in top-k order.
    Returns (tokens, parents, depths), one entry per node; the root's parent is -1."""
    tokens, parents, depths = [root], [-1], [0]
    level = [0]
    for depth, candidates in enumerate(topk, start=1):
        next_level = []
        for parent in level:
            for token in candidates:
                next_level.append(len(tokens))
                tokens.append(token), parents.append(parent), depths.append(depth)
        level = next_level
    return tokens, parents, depths


def tree_attention_mask(parents: list[int], cache_len: int) -> torch.Tensor:
    """(n, cache_len + n) bool, True = may attend: node i (row i) sees all cache_len committed cache entries
    (columns 0..cache_len-1) and, among the tree nodes (column cache_len + a for node a), its ancestors and itself."""
    n = len(parents)
    mask = torch.zeros(n, cache_len + n, dtype=torch.bool)
    mask[:, :cache_len] = True
    for i in range(n):
        a = i
        while a >= 0:  # itself, its parent, ..., the root
            mask[i, cache_len + a] = True
            a = parents[a]
    return mask


def position_ids(depths: list[int], cache_len: int) -> list[int]:
    """Position of each node on top of a cache of cache_len tokens: cache_len + depth."""
    return [cache_len + d for d in depths]
