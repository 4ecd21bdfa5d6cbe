"""Writes exercises/fixtures/exN.json: the checker's cases, their expected values computed by the solutions in this
folder, and what typical wrong versions return on them (each wrong version is a solution with a line or two
changed, listed in VARIANTS). The checker only compares with these values, so it holds no answer itself.

    python exercises/solutions/make_fixtures.py      # after changing a solution or a case

tests/test_exercises.py rebuilds every fixture and checks that the committed files are current. This file quotes
the solutions, so it is not in the student handout.
"""
from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
from exercises.checks import ex8 as check8  # noqa: E402
from exercises.core import EXERCISES, FIXTURES, CheckFailed, encode  # noqa: E402

VARIANTS = {  # exercise -> {name: [(text of the solution, what a typical wrong version has instead), ...]}
    2: {"unscaled": [("/ math.sqrt(hs)", "")],
        "scaled_by_hs": [("/ math.sqrt(hs)", "/ hs")],
        "two_softmaxes": [("    att = F.softmax(torch.cat([scores_main, scores_streams], dim=1), dim=1)  # (γ, L + γ)\n"
                           "    return att @ torch.cat([v_main, v_streams])",
                           "    return F.softmax(scores_main, dim=1) @ v_main + F.softmax(scores_streams, dim=1) @ "
                           "v_streams")],
        "softmax_over_streams": [("dim=1), dim=1)", "dim=1), dim=0)")]},
    3: {"alpha_on_main": [("(1.0 if j == 0 else alpha)", "alpha")],
        "no_alpha": [("(1.0 if j == 0 else alpha)", "1.0")],
        "mean_streams": [("(1.0 if j == 0 else alpha)", "(1.0 if j == 0 else alpha / (logits.size(1) - 1))")],
        "pooled_streams": [("    loss = logits.new_zeros(())", "    return pooled(logits, targets, alpha, 1)")],
        "pooled_all": [("    loss = logits.new_zeros(())", "    return pooled(logits, targets, alpha, 0)")]},
    5: {"own_argmax": [("tokens[node] == main_argmax[path[-1]]", "tokens[node] == main_argmax[node]")],
        "ignores_parents": [("parents[node] == path[-1] and ", "")],
        "first_child_only": [("            path.append(node)\n",
                              "            path.append(node)\n        elif parents[node] == path[-1]:\n"
                              "            break\n")]},
    7: {"no_bonus_room": [("max_new_tokens - generated - 1)", "max_new_tokens - generated)")],
        "ignores_budget": [("return min(gamma, max_new_tokens - generated - 1)", "return gamma")],
        "no_bonus": [("for node in path[1:]] + [bonus]", "for node in path[1:]]")],
        "root_included": [("for node in path[1:]]", "for node in path]")],
        "cache_plus_bonus": [("cache_len + len(path), done)", "cache_len + len(path) + 1, done)")],
        "cache_drafts_only": [("cache_len + len(path), done)", "cache_len + len(path) - 1, done)")],
        "cache_from_output": [("cache_len + len(path), done)", "cache_len + len(new), done)")],
        "eos_dropped": [("new[:new.index(eos_id) + 1]", "new[:new.index(eos_id)]")],
        "eos_ignored": [("if eos_id is not None and eos_id in new:\n        new = new[:new.index(eos_id) + 1]",
                         "if False:\n        pass"), (" or (eos_id is not None and eos_id in new)", "")],
        "budget_ignores_generated": [("new[:max_new_tokens - generated]", "new[:max_new_tokens]")],
        "no_budget": [("    new = new[:max_new_tokens - generated]  # the token budget\n", "")],
        "root_token": [("Commit(new, bonus, last,", "Commit(new, tokens[last], last,")],
        "root_from_root": [("bonus = main_argmax[last]", "bonus = main_argmax[0]")],
        "drafter_root": [("Commit(new, bonus, last,", "Commit(new, bonus, 0,")],
        "drafter_token": [("Commit(new, bonus, last,", "Commit(new, bonus, tokens[last],")]},
    8: {"draft_alone": [("return min(1.0, p_x / q_x)", "return q_x")],
        "target_alone": [("return min(1.0, p_x / q_x)", "return p_x")],
        "not_renormalised": [("return left / total if total > 0 else p", "return left")],
        "target_again": [("left = (p - q).clamp(min=0.0)", "left = p.clone()")],
        "swapped": [("(p - q)", "(q - p)")],
        "with_replacement": [("rows[i:, drawn[i - 1]] = 0.0", "pass")],
        "siblings_not_renormalised": [("return rows / rows.sum(dim=1, keepdim=True)", "return rows")],
        "no_update": [("p = residual(p, qs[i])", "pass")],
        "accept_above": [("coins[i] < accept", "coins[i] > accept")]},
}
OWNER = {"draft_alone": "accept_probability", "target_alone": "accept_probability", "not_renormalised": "residual",
         "target_again": "residual", "swapped": "residual", "with_replacement": "sibling_distributions",
         "siblings_not_renormalised": "sibling_distributions", "no_update": "verify_children",
         "accept_above": "verify_children"}  # exercise 8: the function each wrong version changes
POOLED = '''

def pooled(logits, targets, alpha, first):
    """Columns first.. (and the main column apart, when first == 1) pooled into one cross-entropy."""
    def ce(lg, tg):
        valid = tg != -1
        return F.cross_entropy(lg[valid], tg[valid], reduction="sum") / max(int(valid.sum()), 1)
    rest = ce(logits[:, first:].flatten(0, 1), targets[:, first:].flatten())
    return ce(logits[:, 0], targets[:, 0]) + alpha * rest if first else rest
'''


def solution(number: int, variant: str | None = None) -> ModuleType:
    """The solution of exercise `number`, or its typical wrong version `variant`, as a module."""
    path = HERE / EXERCISES[number]
    source = path.read_text()
    for old, new in VARIANTS[number][variant] if variant else []:
        assert old in source, f"variant {variant} of exercise {number} no longer applies: {old!r}"
        source = source.replace(old, new)
    if number == 3:
        source += POOLED
    module = ModuleType(f"solution_{number}_{variant or 'right'}")
    module.__file__ = str(path)
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def variants(number: int, run, cases: list, names=None) -> dict[str, list]:
    """name -> what the wrong version `name` returns on each case, for the variants that change an answer here."""
    right = [run(solution(number), c) for c in cases]
    out = {}
    for name in names or VARIANTS[number]:
        try:
            got = [run(solution(number, name), c) for c in cases]
        except (CheckFailed, ZeroDivisionError, IndexError, ValueError):
            continue  # this wrong version fails otherwise here (an exception, an inconsistent answer)
        if encode(got) != encode(right):
            out[name] = got
    return out


def ex1() -> dict:
    m = solution(1)
    return {"cases": [dict(T=T, n_streams=G, mask=m.msa_mask(T, G)) for T, G in [(2, 1), (3, 0), (3, 2), (4, 3)]]}


def ex2() -> dict:
    m = solution(2)
    main = torch.tensor([1.0, 2.0], dtype=torch.float64)
    P = torch.tensor([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    cases = []
    for L, G, hs in [(1, 1, 2), (3, 2, 4), (4, 4, 8), (5, 4, 8)]:  # L + γ = hs twice: returned weights fit the shape
        args = [torch.randn(n, hs, generator=g, dtype=torch.float64) for n in (G, L, L, G, G)]
        cases.append(dict(args=args, expected=m.stream_attention(*args)))
    run = lambda module, c: module.stream_attention(*c["args"])
    return {"init": dict(main=main, stream_emb=P, expected=m.init_streams(main, P)), "attention": cases,
            "variants": variants(2, run, cases)}


def ex3() -> dict:
    m = solution(3)
    tokens = [10, 11, 12, 13, 14, 15]
    targets = [dict(tokens=t, n_streams=G, prompt_len=n, expected=m.eq5_targets(t, G, n).tolist())
               for t, G, n in [(tokens, 2, 0), (tokens, 2, 3), ([5, 6, 7], 0, 0)]]
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 3, 7, generator=g, dtype=torch.float64)
    valid = torch.tensor(targets[1]["expected"])  # prompt_len 3: the columns have different numbers of targets
    valid = torch.where(valid >= 0, valid - 10, -1)  # token ids 3..5 of a 7-word vocabulary
    no_stream_targets = torch.tensor([[1, -1, -1], [-1, -1, -1]])  # T = 2: no stream has a target
    loss = [dict(logits=lg, targets=t, alpha=a) for a, lg, t in
            [(0.1, logits, valid), (0.5, logits, valid), (0.1, logits[:2], no_stream_targets)]]
    run = lambda module, c: float(module.eq5_loss(c["logits"], c["targets"], c["alpha"]))
    for c in loss:
        c["expected"] = run(m, c)
    return {"targets": targets, "loss": loss, "variants": variants(3, run, loss)}


def ex4() -> dict:
    m = solution(4)
    trees = []
    for root, topk in [(7, [[1, 2], [3, 4]]), (5, [[8], [9], [6]]), (0, [[1, 2, 3], [4, 5, 6]])]:
        tokens, parents, depths = m.draft_tree(root, topk)
        trees.append(dict(root=root, topk=topk, tokens=tokens, parents=parents, depths=depths))
    masks, positions = [], []
    for tree in trees[:2]:
        for L in (3, 0):
            masks.append(dict(parents=tree["parents"], cache_len=L, mask=m.tree_attention_mask(tree["parents"], L)))
            positions.append(dict(depths=tree["depths"], cache_len=L, expected=m.position_ids(tree["depths"], L)))
    return {"trees": trees, "masks": masks, "positions": positions}


def ex5() -> dict:
    m = solution(5)
    tokens, parents = [7, 1, 2, 3, 4, 3, 4], [-1, 0, 0, 1, 1, 2, 2]  # root 7, top-2 [[1, 2], [3, 4]]
    verify = [dict(tokens=tokens, parents=parents, argmax=a, label=label) for a, label in [
        ([5, 1, 2, 3, 4, 3, 4], "nothing accepted (each node's own argmax is its token: a trap)"),
        ([2, 9, 4, 0, 0, 0, 0], "second child at both depths"),
        ([1, 3, 0, 0, 0, 0, 0], "first child at both depths"),
        ([1, 8, 4, 0, 0, 0, 0], "depth 1 accepted, depth 2 rejected (node 6 matches, but under node 2)")]]
    verify.append(dict(tokens=[4, 5, 6, 7], parents=[-1, 0, 1, 2], argmax=[5, 6, 7, 1],
                       label="a chain (k=1) whose drafts all match"))
    run = lambda module, c: module.verify_greedy(c["tokens"], c["parents"], c["argmax"])
    for c in verify:
        c["expected"] = run(m, c)
    L, n = 3, 7
    entries = torch.stack([torch.arange(L + n + 2, dtype=torch.float64),
                           100 + torch.arange(L + n + 2, dtype=torch.float64)], dim=1)  # row r = [r, 100 + r]
    compact = [dict(entries=entries, cache_len=L, path=path, expected=m.compact_cache(entries, L, path))
               for path in ([0, 2, 6], [0, 1, 3], [0])]
    return {"verify": verify, "verify_variants": variants(5, run, verify), "compact": compact}


def ex6() -> dict:
    m = solution(6)
    tokens, parents = [7, 1, 2, 3, 4, 3, 4], [-1, 0, 0, 1, 1, 2, 2]  # root 7, top-2 [[1, 2], [3, 4]]
    probs = torch.full((7, 10), 0.01, dtype=torch.float64)
    probs[0, 1], probs[0, 2] = 0.5, 0.05     # at the root: node 1 likely, node 2 not
    probs[1, 3], probs[1, 4] = 0.1, 0.02     # at node 1: node 3 exactly at the threshold, node 4 below
    probs[2, 3], probs[2, 4] = 0.9, 0.9      # at node 2: likely, but node 2 itself is pruned
    probs[1, 1], probs[3, 3], probs[6, 7] = 0.0, 0.9, 0.0  # traps: own rows, and the root's token in the last row
    ancestors = [[0], [0, 1], [0, 2], [0, 1, 3], [0, 1, 4], [0, 2, 5], [0, 2, 6]]  # root ... node, of each node
    cases = [dict(threshold=t, expected=m.prune_tree(tokens, parents, probs, t)) for t in (0.1, 0.0, 0.6)]
    return {"tokens": tokens, "parents": parents, "ancestors": ancestors, "probs": probs, "cases": cases}


def ex7() -> dict:
    m = solution(7)
    depth = [dict(args=list(a)) for a in [(3, 1, 24), (3, 21, 24), (3, 23, 24), (1, 5, 24), (4, 19, 24)]]
    run_depth = lambda module, c: module.draft_depth(*c["args"])
    tree = ([7, 1, 2, 3, 4, 3, 4], [2, 9, 4, 0, 8, 5, 6])  # root 7, top-2 [[1, 2], [3, 4]]; argmax at each node
    commit = [dict(args=[*tree[:1], path, tree[1], 5, generated, budget, eos], label=label) for
              path, generated, budget, eos, label in [
        ([0, 2, 6], 3, 20, None, "two drafts accepted"),
        ([0], 3, 20, None, "nothing accepted: the bonus token alone"),
        ([0, 2, 6], 3, 20, 2, "the end token among the accepted drafts"),
        ([0, 2, 6], 3, 20, 6, "the end token is the bonus token"),
        ([0, 2, 6], 18, 20, None, "the budget cuts the bonus token"),
        ([0, 2, 6], 17, 20, None, "the budget is met exactly"),
        ([0, 1], 3, 20, 7, "eos_id is the root's token, already in the output")]]
    run_commit = lambda module, c: [*module.commit_step(*c["args"])]
    for c in depth:
        c["expected"] = run_depth(m, c)
    for c in commit:
        c["expected"] = run_commit(m, c)
    return {"depth": depth, "depth_variants": variants(7, run_depth, depth), "commit": commit,
            "commit_variants": variants(7, run_commit, commit)}


def draw_orders(q: torch.Tensor, k: int) -> tuple[list[list[int]], list[float]]:
    """Every order of k draws without replacement from q, and its probability."""
    support = [x for x in range(len(q)) if q[x] > 0]
    orders, weights = [], []
    for drawn in itertools.permutations(support, k):
        w, left = 1.0, 1.0
        for x in drawn:
            w, left = w * float(q[x]) / left, left - float(q[x])
        orders.append(list(drawn))
        weights.append(w)
    assert math.isclose(sum(weights), 1.0)
    return orders, weights


def ex8() -> dict:
    m = solution(8)
    t = lambda *v: torch.tensor(v, dtype=torch.float64)
    p1, q1, p2, q2 = t(0.5, 0.2, 0.2, 0.1), t(0.1, 0.2, 0.3, 0.4), t(0.1, 0.6, 0.3, 0.0), t(0.4, 0.3, 0.2, 0.1)
    exact = []
    for p, q, k in [(p1, q1, 1), (p1, q1, 2), (p2, q2, 3), (t(0.4, 0.1, 0.3, 0.2), t(0.0, 0.5, 0.5, 0.0), 2)]:
        draws, weights = draw_orders(q, k)
        exact.append(dict(p=p, q=q, draws=draws, weights=weights))
    data = {"exact": exact,
            "accept": [dict(p_x=a, q_x=b) for a, b in [(0.2, 0.4), (0.5, 0.25), (0.0, 0.3), (0.3, 0.3), (0.1, 0.8)]],
            "residual": [dict(p=p1, q=q1), dict(p=p2, q=q2), dict(p=q2, q=q2)],
            "siblings": [dict(q=q1, drawn=[3, 1]), dict(q=q2, drawn=[2, 0, 3])],
            "verify": [dict(p=p1, children=[2, 0], qs=m.sibling_distributions(q1, [2, 0]), coins=coins)
                       for coins in ([0.5, 0.1], [0.9, 0.1], [0.9, 0.999])]}
    data["variants"] = {}
    for name, key in check8.PIECES.items():
        run = lambda module, c, name=name: check8.answer(module, name, c)
        for c in data[key]:
            c["expected"] = run(m, c)
        data["variants"][name] = variants(8, run, data[key], [v for v, owner in OWNER.items() if owner == name])
    data["variants"]["exact"] = variants(8, check8.exact_distribution, exact)
    return data


BUILDERS = {1: ex1, 2: ex2, 3: ex3, 4: ex4, 5: ex5, 6: ex6, 7: ex7, 8: ex8}


def text(number: int) -> str:
    """The JSON text of fixtures/ex{number}.json."""
    return json.dumps(encode(BUILDERS[number]()), ensure_ascii=False) + "\n"


if __name__ == "__main__":
    FIXTURES.mkdir(exist_ok=True)
    for n in BUILDERS:
        (FIXTURES / f"ex{n}.json").write_text(text(n))
        print(f"wrote {FIXTURES / f'ex{n}.json'}")
