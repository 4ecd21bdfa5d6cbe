"""Check of exercise 6: early-exit pruning of a draft tree (fixtures/ex6.json)."""
from __future__ import annotations

from types import ModuleType
from typing import Iterator

from exercises.core import CheckFailed, call, fixture, int_list

BOOLS = ("return the INDICES of the surviving nodes (for example [0, 1, 3]), not one keep/drop flag per node: "
         "[i for i, keep in enumerate(flags) if keep]")


def explain(got: list[int], expected: list[int], data: dict, threshold: float) -> str:
    """Why the first wrongly kept or dropped node is wrong."""
    tokens, parents, ancestors, probs = data["tokens"], data["parents"], data["ancestors"], data["probs"]
    if 0 not in got:
        return ("The root (node 0) is never pruned: it is the certain token (the main stream's argmax), and it has no "
                "parent to score it.")
    if len(got) == len(tokens) and threshold > 0:
        return (f"Nothing was pruned. Node i's token has probability early_exit_probs[parents[i], tokens[i]] at its "
                f"parent; a node is dropped when it is below the threshold ({threshold}), with its whole subtree.")
    for i in range(1, len(tokens)):
        p_parent, p_own = float(probs[parents[i], tokens[i]]), float(probs[i, tokens[i]])
        dropped_above = [a for a in ancestors[i] if a not in (0, i) and float(probs[parents[a], tokens[a]]) < threshold]
        if i in got and i not in expected:
            if dropped_above:
                return (f"node {i} hangs under node {dropped_above[0]}, which is pruned: a pruned node takes its "
                        f"whole subtree with it.")
            own = "" if p_own < threshold else (
                f" (Read it in the parent's row, early_exit_probs[{parents[i]}], which predicts the token after the "
                f"parent; row {i} is node {i}'s own prediction of the NEXT token.)")
            return f"node {i} (token {tokens[i]}) has probability {p_parent} < {threshold} at its parent, node " \
                   f"{parents[i]}: drop it.{own}"
        if i in expected and i not in got:
            if p_parent == threshold:
                return (f"node {i} has probability {p_parent}, exactly the threshold, at its parent: only nodes "
                        f"strictly below the threshold are dropped.")
            own = (f" You may be reading node {i}'s own row; the probability of its token is in its parent's row, "
                   f"early_exit_probs[{parents[i]}]." if p_own < threshold else "")
            return f"node {i} (token {tokens[i]}) has probability {p_parent} >= {threshold} at its parent and no " \
                   f"pruned ancestor: keep it.{own}"
    return ""


def check(m: ModuleType) -> Iterator[str]:
    data = fixture(6)
    tokens, parents = data["tokens"], data["parents"]
    for case in data["cases"]:
        threshold, expected = case["threshold"], case["expected"]
        what = (f"prune_tree(tokens={tokens}, parents={parents}, threshold={threshold}) "
                f"[probabilities in ex6_pruning.md]")
        got = int_list(call(m, "prune_tree", list(tokens), list(parents), data["probs"].clone(), threshold),
                       f"prune_tree(..., threshold={threshold})", bools=BOOLS)
        if got == expected:
            yield f"{what}: {got}, right"
            continue
        if sorted(set(got)) == expected:
            raise CheckFailed(f"{what}: return each surviving index once, in increasing order: expected {expected}, "
                              f"got {got}")
        raise CheckFailed(f"{what}: expected {expected}, got {got}. " + explain(got, expected, data, threshold))
