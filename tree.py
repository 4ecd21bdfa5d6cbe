"""Tree drafting, pruning, tree attention masks and greedy verification (METHOD.md §5).

A tree is stored flat, breadth first: node 0 is the root (depth 0), every parent comes before its children.
Depth-j nodes carry candidates for the token j steps after the root, drafted from stream j.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass
class Tree:
    tokens: torch.Tensor   # (n,) long, the candidate token of each node
    parents: torch.Tensor  # (n,) long, index of the parent node (-1 for the root)
    depths: torch.Tensor   # (n,) long, 0 for the root
    scores: torch.Tensor   # (n,) product of the stream probabilities along the path (1 for the root)
    ancestors: torch.Tensor  # (n, n) bool, ancestors[i, a] = a is i itself or an ancestor of i

    def __len__(self) -> int:
        return len(self.tokens)

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root down to `node`."""
        return self.ancestors[node].nonzero().flatten().tolist()  # breadth-first order = root first

    def __str__(self) -> str:
        lines = []
        for i in range(len(self)):
            d = int(self.depths[i])
            lines.append(f"{'  ' * d}[{i}] token {int(self.tokens[i])}  (depth {d}, p={float(self.scores[i]):.3f})")
        return "\n".join(lines)


@lru_cache(maxsize=64)
def full_tree_shape(depth: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shape of the full k-ary tree of the given depth: 1 + k + ... + k^depth nodes, paths replicated.
    Returns parents (n,), depths (n,), ranks (n,) (which of the top-k a node is; 0 for the root) and the
    (n, n) ancestor-or-self matrix. Cached: the shape never changes for a given (depth, k)."""
    parents, depths, ranks = [-1], [0], [0]
    level = [0]
    for d in range(1, depth + 1):
        next_level = []
        for parent in level:
            for r in range(k):
                next_level.append(len(parents))
                parents.append(parent), depths.append(d), ranks.append(r)
        level = next_level
    n = len(parents)
    ancestors = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        if parents[i] >= 0:
            ancestors[i] = ancestors[parents[i]]
        ancestors[i, i] = True
    return torch.tensor(parents), torch.tensor(depths), torch.tensor(ranks), ancestors


def draft_tree(root: int, topk_tokens: torch.Tensor, topk_probs: torch.Tensor, cap: int | None = None) -> Tree:
    """Draft a tree from the streams' top-k. topk_tokens, topk_probs: (depth, k), row j-1 from stream j.
    Full k-ary tree; with `cap`, keep only the `cap` nodes with the highest path probability (EAGLE-2 style)."""
    depth, k = topk_tokens.shape
    if cap is not None and cap < sum(k ** d for d in range(depth + 1)):
        return best_first_tree(root, topk_tokens, topk_probs, cap)
    parents, depths, ranks, ancestors = full_tree_shape(depth, k)
    device = topk_tokens.device
    # copies, so that editing one tree never touches the cached shape
    parents, depths, ranks, ancestors = (t.to(device, copy=True) for t in (parents, depths, ranks, ancestors))
    table = torch.where(depths > 0, 1 + (depths - 1) * k + ranks, 0)  # index into [root, top-k row-major]
    tokens = torch.cat([torch.tensor([root], device=device), topk_tokens.flatten()])[table]
    p = torch.cat([torch.ones(1, device=device, dtype=topk_probs.dtype), topk_probs.flatten()])[table]
    scores = torch.where(ancestors, p, 1.0).prod(dim=1)  # product of the probabilities along the path
    return Tree(tokens, parents, depths, scores, ancestors)


def best_first_tree(root: int, topk_tokens: torch.Tensor, topk_probs: torch.Tensor, cap: int) -> Tree:
    """The `cap` nodes of the full tree with the highest path probability, without building the full tree.
    A child never beats its parent (probabilities <= 1), so the best nodes of depth j are children of the
    best nodes of depth j-1: expand depth by depth, keeping at most cap-1 candidates each time."""
    depth, k = topk_tokens.shape
    device = topk_tokens.device
    tokens, parents = [torch.tensor([root], device=device)], [torch.tensor([-1], device=device)]
    depths = [torch.zeros(1, dtype=torch.long, device=device)]
    scores = [torch.ones(1, dtype=topk_probs.dtype, device=device)]
    level, n = torch.tensor([0], device=device), 1
    for d in range(depth):
        candidates = (scores[-1][:, None] * topk_probs[d]).flatten()  # (len(level) * k,), parent by parent
        keep = candidates.topk(min(cap - 1, len(candidates))).indices.sort().values  # breadth-first order kept
        tokens.append(topk_tokens[d][keep % k]), parents.append(level[keep // k])
        depths.append(torch.full((len(keep),), d + 1, device=device)), scores.append(candidates[keep])
        level, n = torch.arange(n, n + len(keep), device=device), n + len(keep)
    parents_all = torch.cat(parents)
    ancestors = torch.eye(n, dtype=torch.bool, device=device)
    start = 1
    for level_parents in parents[1:]:  # a parent's row is complete before its children's
        ancestors[start:start + len(level_parents)] |= ancestors[level_parents]
        start += len(level_parents)
    tree = Tree(torch.cat(tokens), parents_all, torch.cat(depths), torch.cat(scores), ancestors)
    # the global best `cap`; a stable sort keeps parents before their children on ties, so they form a tree
    order = torch.sort(tree.scores, descending=True, stable=True).indices[:cap]
    return subtree(tree, order.sort().values)


def subtree(tree: Tree, keep: torch.Tensor) -> Tree:
    """The tree restricted to the nodes `keep` (sorted, ancestor-closed), re-indexed."""
    new_index = torch.full((len(tree),), -1, dtype=torch.long, device=tree.tokens.device)
    new_index[keep] = torch.arange(len(keep), device=keep.device)
    parents = tree.parents[keep]
    parents = torch.where(parents >= 0, new_index[parents.clamp(min=0)], parents)
    return Tree(tree.tokens[keep], parents, tree.depths[keep], tree.scores[keep], tree.ancestors[keep][:, keep])


def tree_attention_mask(tree: Tree, cache_len: int) -> torch.Tensor:
    """(n, cache_len + n) bool: each node sees the whole cache, its ancestors and itself (not METHOD's literal Eq. 4)."""
    seen_cache = torch.ones(len(tree), cache_len, dtype=torch.bool, device=tree.tokens.device)
    return torch.cat([seen_cache, tree.ancestors], dim=1)


def position_ids(tree: Tree, cache_len: int) -> torch.Tensor:
    """Position of a node = cache length + depth."""
    return cache_len + tree.depths


def prune_tree(tree: Tree, early_exit_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the nodes that survive pruning. early_exit_probs: (n, V), node i's early-exit distribution
    over the token after it. A node whose token has probability < threshold at its parent is dropped with
    its whole subtree; the root is never pruned."""
    p_at_parent = early_exit_probs[tree.parents.clamp(min=0), tree.tokens]  # (n,)
    dropped = p_at_parent < threshold
    dropped[0] = False
    survives = ~(tree.ancestors & dropped).any(dim=1)  # no dropped node on the path from the root
    return survives.nonzero().flatten()


def verify_greedy(tree: Tree, main_argmax) -> list[int]:
    """Greedy verification ("hard matching"): a child is accepted iff its token equals the main-stream argmax
    at its parent. Returns the longest accepted path as node indices, root first."""
    argmax = main_argmax.tolist() if isinstance(main_argmax, torch.Tensor) else list(main_argmax)
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    path = [0]
    for node in range(1, len(tokens)):  # breadth first: a node's children always come after it
        # siblings carry distinct tokens, so at most one child of the path's end can match
        if parents[node] == path[-1] and tokens[node] == argmax[path[-1]]:
            path.append(node)
    return path
