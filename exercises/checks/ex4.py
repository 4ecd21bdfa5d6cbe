"""Check of exercise 4: drafting a k-ary tree, its attention mask and its position ids (fixtures/ex4.json)."""
from __future__ import annotations

from types import ModuleType
from typing import Iterator

import torch

from exercises.core import CheckFailed, as_tensor, call, describe, fixture, int_list


def check_tree(m: ModuleType, case: dict) -> str:
    root, topk = case["root"], case["topk"]
    tokens, parents, depths = case["tokens"], case["parents"], case["depths"]
    what = f"draft_tree(root={root}, topk={topk})"
    got = call(m, "draft_tree", root, [list(row) for row in topk])
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise CheckFailed(f"{what} should return three lists (tokens, parents, depths), got {describe(got)}")
    g_tokens, g_parents, g_depths = (int_list(x, f"{what}'s {name}") for x, name in
                                     zip(got, ("tokens", "parents", "depths")))
    k, G = len(topk[0]), len(topk)
    if not len(g_tokens) == len(g_parents) == len(g_depths) == len(tokens):
        raise CheckFailed(f"{what}: expected {len(tokens)} nodes = 1 + " + " + ".join(
            f"{k}^{d}" for d in range(1, G + 1)) + f", got {len(g_tokens)} tokens, {len(g_parents)} parents, "
            f"{len(g_depths)} depths. Every depth-j candidate hangs under EVERY depth-(j-1) node (paths are "
            f"replicated), so depth j has k^j nodes.")
    for i in range(len(tokens)):
        if (g_tokens[i], g_parents[i], g_depths[i]) != (tokens[i], parents[i], depths[i]):
            raise CheckFailed(
                f"{what}: node {i}: expected token {tokens[i]}, parent {parents[i]}, depth {depths[i]}; got "
                f"token {g_tokens[i]}, parent {g_parents[i]}, depth {g_depths[i]}. Expected order (breadth first): "
                f"tokens {tokens}, parents {parents}. The root has parent -1; within a depth, parent by parent, and "
                f"under one parent the candidates in top-k order.")
    return f"{what}: {len(tokens)} nodes, right"


def entry_rule(i: int, a: int, tree_mask: torch.Tensor) -> str:
    """Why node i must see, or not see, node a. tree_mask: (n, n) the expected tree part (ancestors + self)."""
    if a == i:
        return f"node {i} sees itself"
    ancestors = [b for b in range(tree_mask.size(0)) if tree_mask[i, b] and b != i]
    if a in ancestors:
        return f"node {i} sees its ancestors {ancestors} (parent, grandparent, ..., root)"
    relation = "a descendant" if tree_mask[a, i] else "not an ancestor (a sibling or cousin)"
    return (f"node {a} is {relation} of node {i}: it must be hidden, or node {i} would see a token that is not on "
            f"its own root-to-node path")


def check_mask(m: ModuleType, case: dict) -> str:
    parents, L, expected = case["parents"], case["cache_len"], case["mask"]
    n = len(parents)
    what = f"tree_attention_mask(parents={parents}, cache_len={L})"
    got = as_tensor(call(m, "tree_attention_mask", list(parents), L), what, (n, L + n), torch.bool)
    wrong = (got != expected).nonzero().tolist()
    if wrong:
        i, c = wrong[0]
        if c < L:
            rule = (f"every node sees every committed cache entry (columns 0..{L - 1}): the cache holds the prompt "
                    f"and the accepted tokens before the root")
            key = f"cache entry {c}"
        else:
            rule, key = entry_rule(i, c - L, expected[:, L:]), f"node {c - L} (column {c})"
        raise CheckFailed(f"{what}: {len(wrong)} wrong entries; entry [{i}, {c}] (node {i} -> {key}): expected "
                          f"{bool(expected[i, c])}, got {bool(got[i, c])}. Rule: {rule}.")
    return f"{what}: right"


def check_positions(m: ModuleType, case: dict) -> str:
    depths, L, expected = case["depths"], case["cache_len"], case["expected"]
    n = len(depths)
    what = f"position_ids(depths={depths}, cache_len={L})"
    got = int_list(call(m, "position_ids", list(depths), L), what, n)
    if got != expected:
        hint = "position = cache_len + depth"
        if got == [L + i for i in range(n)]:
            hint = ("you used the node index: nodes of the same depth are alternatives for the SAME next slot of "
                    "the sequence, so they share a position; position = cache_len + depth")
        elif got == depths:
            hint = "the tree sits on top of the cache: add cache_len"
        elif got == [p + 1 for p in expected]:
            hint = f"off by one: the root is the token right after the {L} cached ones, at position cache_len = {L}"
        raise CheckFailed(f"{what}: expected {expected}, got {got}. Hint: {hint}.")
    return f"{what}: right"


def check(m: ModuleType) -> Iterator[str]:
    data = fixture(4)
    for case in data["trees"]:
        yield check_tree(m, case)
    for mask_case, position_case in zip(data["masks"], data["positions"]):
        yield check_mask(m, mask_case)
        yield check_positions(m, position_case)
