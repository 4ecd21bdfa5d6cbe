"""Check of exercise 7: the decode step after verification (fixtures/ex7.json). Each wrong field of the returned
Commit is explained on its own; a hint about the cause is given when the answers on every case match a typical
mistake."""
from __future__ import annotations

from types import ModuleType
from typing import Iterator

from exercises.core import CheckFailed, as_bool, as_int, call, describe, fixture, int_list, matching_mistake

DEPTH_HINTS = {
    "no_bonus_room": "the bonus token always comes on top of the accepted drafts, so at most max_new_tokens - "
                     "generated - 1 drafts can still be used: drafting deeper computes nodes that can never be "
                     "committed",
    "ignores_budget": "the depth ignores the token budget: near the end of the output, a deep tree computes nodes "
                      "that can never be committed (at most max_new_tokens - generated - 1 drafts can still be used)",
}
COMMIT_HINTS = {
    "no_bonus": "the bonus token is missing: after the accepted drafts, the call also commits the main stream's "
                "argmax at the last accepted node (the model's own next token, so it is always right)",
    "root_included": "node 0 (the root) was committed again: it is already in the output, as the previous call's "
                     "bonus token; only path[1:] and the new bonus token are new",
    "cache_plus_bonus": "the cache length counts the bonus token, but the bonus token has no cache entry yet: it is "
                        "the next tree's root, and the next forward writes its entry",
    "cache_drafts_only": "the cache length misses the root's entry: this call's forward wrote the root (node 0) "
                         "too, and it stays with the accepted nodes: cache_len + len(path)",
    "cache_from_output": "the cache length follows the committed output tokens, but the cache holds one entry per "
                         "accepted NODE (root included, bonus token excluded), whatever EOS or the budget cut: "
                         "cache_len + len(path)",
    "eos_dropped": "the end token was dropped: cut the output AFTER the first eos_id, keeping it",
    "eos_ignored": "eos_id was ignored: cut the new tokens after the first eos_id (kept) and say the output is done",
    "budget_ignores_generated": "the budget ignores the tokens already generated: at most max_new_tokens - "
                                "generated tokens may still be added",
    "no_budget": "the token budget was ignored: at most max_new_tokens - generated tokens may still be added",
    "root_token": "the next root is the token OF the last accepted node; it is the argmax AT that node, i.e. the "
                  "token after it (the bonus token)",
    "root_from_root": "the bonus token is the argmax at the last accepted node, not at the root",
    "drafter_root": "the next tree is drafted from the streams of the LAST accepted node (path[-1]), not from node 0",
    "drafter_token": "drafter is a node index (path[-1]), not a token",
}
FIELDS = ("tokens", "root", "drafter", "cache_len", "done")
FIELD_RULES = {
    "tokens": "the accepted drafts (tokens of path[1:]), then the bonus token main_argmax[path[-1]], cut after the "
              "first eos_id (kept) and to max_new_tokens - generated tokens",
    "root": "the next root is the bonus token, main_argmax[path[-1]]",
    "drafter": "the next tree is drafted from the streams of the last accepted node, path[-1]",
    "cache_len": "the cache keeps one entry per accepted node, root included: cache_len + len(path)",
    "done": "done when the output reaches max_new_tokens tokens or the end token was committed",
}


def check_depth(m: ModuleType) -> Iterator[str]:
    data = fixture(7)
    cases, outputs = data["depth"], []
    run = lambda c: as_int(call(m, "draft_depth", *c["args"]), f"draft_depth{tuple(c['args'])}")
    for i, case in enumerate(cases):
        gamma, generated, budget = case["args"]
        what = f"draft_depth(gamma={gamma}, generated={generated}, max_new_tokens={budget})"
        got = run(case)
        outputs.append(got)
        if got == case["expected"]:
            yield f"{what}: {got}, right"
            continue
        outputs += [run(c) for c in cases[i + 1:]]
        hint = matching_mistake(outputs, data["depth_variants"], DEPTH_HINTS)
        raise CheckFailed(f"{what}: expected {case['expected']}, got {got}. "
                          + (f"Hint: {hint}." if hint else "The depth is gamma, but at most max_new_tokens - "
                             "generated - 1 (the drafts that can still be committed besides the bonus token)."))


def commit_fields(m: ModuleType, args: list, what: str) -> list:
    """The student's commit_step(*args) as [tokens, root, drafter, cache_len, done], each checked."""
    got = call(m, "commit_step", *[list(a) if isinstance(a, list) else a for a in args])
    if not isinstance(got, (tuple, list)) or len(got) != 5:
        raise CheckFailed(f"{what} should return Commit(tokens, root, drafter, cache_len, done) (or a tuple of these "
                          f"five), got {describe(got)}")
    return [int_list(got[0], f"{what}.tokens"), as_int(got[1], f"{what}.root"), as_int(got[2], f"{what}.drafter"),
            as_int(got[3], f"{what}.cache_len"), as_bool(got[4], f"{what}.done")]


def check_commit(m: ModuleType) -> Iterator[str]:
    data = fixture(7)
    cases, outputs = data["commit"], []
    label = lambda c: (f"commit_step(path={c['args'][1]}, cache_len={c['args'][3]}, generated={c['args'][4]}, "
                       f"max_new_tokens={c['args'][5]}, eos_id={c['args'][6]})")
    tree = data["commit"][0]["args"]
    shown_tree = f"(tree tokens {tree[0]}, main_argmax {tree[2]})"
    for i, case in enumerate(cases):
        what = label(case)
        got, expected = commit_fields(m, case["args"], what), case["expected"]
        outputs.append(got)
        if got == expected:
            yield f"{what} [{case['label']}]: right"
            continue
        outputs += [commit_fields(m, c["args"], label(c)) for c in cases[i + 1:]]
        hint = matching_mistake(outputs, data["commit_variants"], COMMIT_HINTS)
        field = next(f for f, g, e in zip(FIELDS, got, expected) if g != e)
        e, g = expected[FIELDS.index(field)], got[FIELDS.index(field)]
        raise CheckFailed(f"{what} [{case['label']}] {shown_tree}: {field} expected {e}, got {g}. "
                          + (f"Hint: {hint}." if hint else f"Rule: {FIELD_RULES[field]}."))


def check(m: ModuleType) -> Iterator[str]:
    yield from check_depth(m)
    yield from check_commit(m)
