"""Check of exercise 5: greedy verification of a tree and KV-cache compaction (fixtures/ex5.json)."""
from __future__ import annotations

from types import ModuleType
from typing import Iterator

import torch

from exercises.core import CheckFailed, as_tensor, call, fixture, int_list, matching_mistake

HINTS = {
    "own_argmax": "you compared each node with its OWN argmax, which predicts the token AFTER that node: a child is "
                  "accepted iff its token equals the argmax at its PARENT",
    "ignores_parents": "a node was accepted without being a child of the path's last node: a path goes from a node "
                       "to one of its children (check parents[node] == path[-1])",
    "first_child_only": "only the first child of the last accepted node was tried: siblings carry different tokens, "
                        "so try every child (at most one can match)",
}


def explain_path(got: list[int], expected: list[int], tokens, parents, argmax) -> str:
    """What is wrong with a path, step by step, without guessing the cause."""
    if not got or got[0] != 0:
        return ("the path starts at the root, node 0: it is always accepted (it is the main stream's argmax from "
                "the previous call)")
    if got[:-1] == expected and parents[got[-1]] == expected[-1]:
        c, end = got[-1], expected[-1]
        return (f"your path goes one node too far: node {c} (token {tokens[c]}) is a child of node {end}, but the "
                f"argmax at node {end} is {argmax[end]}, so it is rejected. The path stops at the last accepted node; "
                f"the argmax there ({argmax[end]}) is the bonus token the decode step adds, not a node of the path.")
    for a, b in zip(got, got[1:]):
        if parents[b] != a:
            return (f"node {b} follows node {a} in your path, but its parent is node {parents[b]}: a path goes from "
                    f"a node to one of its children")
        if tokens[b] != argmax[a]:
            return (f"node {b} (token {tokens[b]}) is accepted, but the main argmax at its parent, node {a}, is "
                    f"{argmax[a]}: a child is accepted iff its token equals the argmax at its PARENT.")
    end = got[-1]
    children = [c for c in range(len(tokens)) if parents[c] == end]
    for c in children:
        if tokens[c] == argmax[end]:
            return (f"your path stops at node {end}, but its child node {c} (token {tokens[c]}) equals the argmax at "
                    f"node {end} ({argmax[end]}): it is accepted, and the walk goes on from it.")
    return f"expected the path {expected}"


def check_verify(m: ModuleType) -> Iterator[str]:
    data = fixture(5)
    cases, outputs = data["verify"], []
    run = lambda c: int_list(call(m, "verify_greedy", list(c["tokens"]), list(c["parents"]), list(c["argmax"])),
                             f"verify_greedy(..., main_argmax={c['argmax']})")
    for i, case in enumerate(cases):
        tokens, parents, argmax, expected = case["tokens"], case["parents"], case["argmax"], case["expected"]
        what = f"verify_greedy(tokens={tokens}, parents={parents}, main_argmax={argmax}) [{case['label']}]"
        got = run(case)
        outputs.append(got)
        if got == expected:
            yield f"{what}: {got}, right"
            continue
        outputs += [run(c) for c in cases[i + 1:]]
        hint = matching_mistake(outputs, data["verify_variants"], HINTS)
        why = explain_path(got, expected, tokens, parents, argmax)
        raise CheckFailed(f"{what}: expected {expected}, got {got}. "
                          + (f"Hint: {hint}." if hint else why[0].upper() + why[1:]))


def check_compact(m: ModuleType) -> Iterator[str]:
    for case in fixture(5)["compact"]:
        entries, L, path, expected = case["entries"], case["cache_len"], case["path"], case["expected"]
        n = entries.size(0) - L - 2
        label = lambda r: f"committed entry {r}" if r < L else f"node {r - L}'s entry (row {r})"
        what = f"compact_cache(cache_len={L}, path={path}) on {L} committed + {n} tree rows (+2 unused)"
        got = as_tensor(call(m, "compact_cache", entries.clone(), L, list(path)), what, expected.shape)
        if torch.equal(got, expected):
            yield f"{what}: right"
            continue
        rows = got[:, 0].round().long().tolist()
        r = next(i for i in range(len(rows)) if rows[i] != int(expected[i, 0]))
        msg = (f"{what}: row {r} holds {label(rows[r])}, expected {label(int(expected[r, 0]))}. After verification, "
               f"rows 0..{L - 1} stay, and row {L} + i holds the entry of path[i].")
        if rows == list(range(len(rows))):
            msg += (" The cache was not compacted: you kept the first len(path) tree rows, which are the accepted "
                    "nodes only when the path is 0, 1, 2, ... Gather the rows cache_len + node for each node of the "
                    "path.")
        elif r < L:
            msg += " The committed rows must not change."
        raise CheckFailed(msg)


def check(m: ModuleType) -> Iterator[str]:
    yield from check_verify(m)
    yield from check_compact(m)
