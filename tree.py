"""Tree drafting, pruning, tree attention masks and greedy verification (docs/CONVENTIONS.md).

A tree is stored flat, breadth first: node 0 is the root (depth 0), every parent comes before its children.
Depth-j nodes carry candidates for the token j steps after the root, drafted from stream j.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.nn import functional as F


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


@lru_cache(maxsize=64)
def full_tree_index(depth: int, k: int) -> torch.Tensor:
    """(n,) for each node of the full tree, the index of its candidate in [root, top-k row-major]. Cached."""
    _, depths, ranks, _ = full_tree_shape(depth, k)
    return torch.where(depths > 0, 1 + (depths - 1) * k + ranks, 0)


FULL_TREE_MAX_NODES = 2048  # larger capped trees are built best first, without the full tree


def draft_tree(root: int, topk_tokens: torch.Tensor, topk_probs: torch.Tensor, cap: int | None = None) -> Tree:
    """Draft a tree from the streams' top-k. topk_tokens, topk_probs: (depth, k), row j-1 from stream j.
    Full k-ary tree; with `cap`, keep only the `cap` nodes with the highest path probability (EAGLE-2 style):
    the first `cap` of a stable sort by score, so a parent (never less probable than its child) comes first."""
    depth, k = topk_tokens.shape
    n = sum(k ** d for d in range(depth + 1))
    if cap is not None and cap < n and n > FULL_TREE_MAX_NODES:
        return best_first_tree(root, topk_tokens, topk_probs, cap)
    device = topk_tokens.device
    # the cached shape is shared by every tree drafted with this (depth, k): trees are never edited in place
    parents, depths, _, ancestors = (t.to(device) for t in full_tree_shape(depth, k))
    tokens = F.pad(topk_tokens.flatten(), (1, 0), value=root)[full_tree_index(depth, k).to(device)]
    level = torch.ones(1, device=device, dtype=topk_probs.dtype)
    scores = [level]
    for d in range(depth):  # path probabilities depth by depth, parent by parent: the full tree's node order
        level = (level[:, None] * topk_probs[d]).flatten()
        scores.append(level)
    tree = Tree(tokens, parents, depths, torch.cat(scores), ancestors)
    if cap is not None and cap < n:
        return subtree(tree, tree.scores.sort(descending=True, stable=True).indices[:cap].sort().values)
    return tree


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
    parents = tree.parents[keep]
    parents = torch.where(parents >= 0, torch.searchsorted(keep, parents), -1)  # a kept parent's rank in keep
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


# ------------------------------------------------------------------------------------------------------------
# sampling (T > 0): sampled drafting and recursive rejection verification (docs/CONVENTIONS.md)
# ------------------------------------------------------------------------------------------------------------

ACCEPTANCE_RULES = ("recursive", "per_path_lossy", "typical_lossy")
TYPICAL_EPSILON, TYPICAL_DELTA = 0.09, 0.3  # Medusa's typical acceptance: hard threshold ε and entropy factor δ


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """The distribution plain sampling draws from, (..., V) logits -> (..., V) float64 probabilities:
    softmax(logits / T), restricted to the top_k largest logits (ties at the k-th kept), then to the smallest
    set of most probable tokens whose mass reaches top_p, renormalised. Target and drafts both go through it."""
    logits = logits.double() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # the mass before this token already reaches top_p
        probs = probs.masked_fill(outside.scatter(-1, order, outside), 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def draw_without_replacement(probs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k draws without replacement from each row of probs (rows, V), in draw order: (rows, k) long.
    Gumbel-top-k: the k largest of log q + Gumbel noise are distributed as sequential draws, the i-th from q
    with the first i-1 removed and renormalised. k must not exceed any row's number of non-zero entries."""
    u = torch.rand(probs.shape, dtype=torch.float64, generator=generator).clamp(min=1e-300)
    return (probs.log() - (-u.log()).log()).topk(k, dim=-1).indices


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """One token drawn from probs (V,) (Gumbel-max: a single draw of `draw_without_replacement`)."""
    return int(draw_without_replacement(probs[None], 1, generator))


def sibling_draft_probs(q: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
    """(k, V): row r is the distribution the r-th of the draws `drawn` (k,) came from: q (V,) with drawn[:r]
    removed and renormalised. This, not q, is the draft probability of the r-th sibling in the rejection test."""
    rows = q.repeat(len(drawn), 1)
    for r in range(1, len(drawn)):
        rows[r:, drawn[r - 1]] = 0.0
    return rows / rows.sum(-1, keepdim=True)


def residual_probs(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(p - q, 0)): the target left over after rejecting a draft from q. It has mass whenever a
    rejection is possible; if rounding makes it empty (p == q, rejection has probability ~0) p is kept."""
    r = (p - q).clamp(min=0.0)
    s = r.sum()
    return r / s if s > 0 else p


def draft_tree_sampled(root: int, draft_probs: torch.Tensor, k: int, generator: torch.Generator | None = None,
                       cap: int | None = None, device=None) -> tuple[Tree, torch.Tensor, torch.Tensor]:
    """Sampled draft tree. draft_probs (depth, V): row j-1 is stream j's (transformed) distribution. The depth-j
    children of every depth-(j-1) node are the same k draws without replacement from row j-1, in draw order
    (as the greedy tree repeats the top-k). k is lowered to the smallest support if needed. Returns the tree
    (on `device`), the draws and the rank probabilities (each (depth, k), on draft_probs' device).

    With `cap`, the kept shape is the greedy best-first shape of the k largest probabilities of each row, and
    the draws fill it rank by rank: the shape depends on q only, never on which tokens were drawn, so every
    kept child is still distributed as its draw (q without the earlier draws) and verification stays lossless.
    (Keeping the most probable *drawn* nodes would not be: a child kept because it is probable is no longer a
    draw from q.) Node scores are those rank probabilities."""
    k = min([k] + (draft_probs > 0).sum(-1).tolist())
    drawn = draw_without_replacement(draft_probs, k, generator)
    rank_probs = draft_probs.topk(k, dim=-1).values
    return draft_tree(root, drawn.to(device), rank_probs.to(device), cap=cap), drawn, rank_probs


def verify_sampled(tree: Tree, target_probs: torch.Tensor, draft_probs: torch.Tensor, drawn: torch.Tensor,
                   generator: torch.Generator | None = None, acceptance: str = "recursive",
                   allowed: torch.Tensor | None = None) -> tuple[list[int], int]:
    """Verify a sampled tree. target_probs (n, V): the transformed main-stream distribution at each node (of the
    token after it); draft_probs (depth, V) and drawn (depth, k) as from `draft_tree_sampled`. Returns the
    accepted path (node indices, root first) and the next token (the new root / bonus token).

    acceptance="recursive" (lossless, SpecInfer / Recursive Speculative Decoding): from the root, at node v
    with target p = target_probs[v], try v's children in draw order; child x with draft probability q (its
    draw's distribution, see `sibling_draft_probs`) is accepted with probability min(1, p(x)/q(x)), and then
    the walk continues at x; on rejection p <- norm(max(p - q, 0)). When every child is rejected (or v has
    none) the next token is drawn from the remaining p.

    Proof sketch (the committed token after v has distribution p exactly). One child x ~ q: P(x = y, accepted)
    = q(y) min(1, p(y)/q(y)) = min(p(y), q(y)); P(rejected) = 1 - sum min(p, q) = sum max(p - q, 0); so if the
    rest of the procedure yields a token ~ norm(max(p - q, 0)), the total is min(p, q) + max(p - q, 0) = p.
    Several children: given the earlier draws and the rejections (the coins are independent of the draws),
    the next child is distributed as q without the earlier draws, which is the q used for it; by induction
    from the last child (whose rest is a plain draw from the residual) every stage yields its current p. The
    draws of depth j are independent of everything decided at depths < j, so at the accepted child the same
    argument holds with its own target distribution: each committed token has the target's conditional
    distribution given the tokens before it, i.e. the sequence has the distribution of plain sampling.

    Pruning: allowed (n, V) bool, the tokens a node's children may carry (those that pruning keeps: early-exit
    probability >= threshold at the node). A pruned draw is known but never tried; the next kept child is then
    distributed as q without the earlier draws *restricted to allowed[v]*, renormalised, which is the q used
    for it, so the proof above holds unchanged. (Any rule that keeps a child depending on its own token is
    lossless only if q is conditioned on that rule in this way.)

    acceptance="per_path_lossy": the later paper's rule, LOSSY: every node is accepted with probability
    min(1, p(x)/q(x)) under its accepted parent, q the stream's distribution (siblings ignored); the longest
    accepted path wins, then a token from norm(max(p - q, 0)) at its end (from p at a leaf). Several siblings
    each get a chance, which inflates the probability of drafted tokens.
    acceptance="typical_lossy": Medusa's typical acceptance, LOSSY: a child is accepted iff
    p(x) > min(ε, δ exp(-H(p))) (ε = 0.09, δ = 0.3); the longest accepted path wins, then a token from p."""
    if acceptance not in ACCEPTANCE_RULES:
        raise ValueError(f"acceptance={acceptance!r} must be one of {ACCEPTANCE_RULES}")
    tokens, parents, depths = tree.tokens.tolist(), tree.parents.tolist(), tree.depths.tolist()
    children = [[] for _ in tokens]
    for node in range(1, len(tokens)):  # breadth first, and a node's children in draw order
        children[parents[node]].append(node)
    if acceptance != "recursive":
        return verify_longest(tree, children, target_probs, draft_probs, generator, acceptance)
    path, p = [0], target_probs[0]
    while children[path[-1]]:
        depth = depths[path[-1]] + 1
        row = drawn[depth - 1].tolist()
        q_siblings = sibling_draft_probs(draft_probs[depth - 1], drawn[depth - 1])  # (k, V)
        if allowed is not None:  # kept children are draws conditioned on surviving pruning
            q_siblings = q_siblings * allowed[path[-1]]
            q_siblings = q_siblings / q_siblings.sum(-1, keepdim=True)
        for child in children[path[-1]]:
            x = tokens[child]
            q = q_siblings[row.index(x)]
            if float(torch.rand((), dtype=torch.float64, generator=generator)) * q[x] < p[x]:  # u < p(x)/q(x)
                path.append(child)
                p = target_probs[child]
                break
            p = residual_probs(p, q)
        else:
            break  # every child rejected: the next token comes from the residual
    return path, sample(p, generator)


def verify_longest(tree: Tree, children: list[list[int]], target_probs: torch.Tensor, draft_probs: torch.Tensor,
                   generator: torch.Generator | None, acceptance: str) -> tuple[list[int], int]:
    """The two LOSSY rules of `verify_sampled`: accept nodes independently under accepted parents, keep the
    longest accepted path (the first one in breadth-first order on ties)."""
    tokens, parents, depths = tree.tokens.tolist(), tree.parents.tolist(), tree.depths.tolist()
    accepted, best = [True] + [False] * (len(tokens) - 1), 0
    for node in range(1, len(tokens)):
        v, x = parents[node], tokens[node]
        if not accepted[v]:
            continue
        p = target_probs[v]
        if acceptance == "per_path_lossy":
            q = draft_probs[depths[node] - 1]
            accepted[node] = bool(torch.rand((), dtype=torch.float64, generator=generator) * q[x] < p[x])
        else:  # typical_lossy
            entropy = -(p * p.clamp(min=1e-300).log()).sum()
            accepted[node] = bool(p[x] > min(TYPICAL_EPSILON, TYPICAL_DELTA * float(torch.exp(-entropy))))
        if accepted[node] and depths[node] > depths[best]:
            best = node
    p = target_probs[best]
    if acceptance == "per_path_lossy" and children[best]:  # the end of the path had drafts, all rejected
        p = residual_probs(p, draft_probs[depths[best]])
    return tree.path_to(best), sample(p, generator)
