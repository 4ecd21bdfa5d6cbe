"""Check of exercise 8: lossless speculative sampling at one tree node, by an exact-distribution test.

On a tiny vocabulary every way the children can be drawn (all orders of k draws without replacement from q, with
their probabilities, committed in fixtures/ex8.json) and every accept/reject branch can be enumerated, so the
distribution of the committed token is computed exactly from the student's functions, not sampled: it must be the
target p to rounding. Wrong rules (accept by the draft probability alone, no renormalisation of the residual, draws
treated as independent, ...) give another distribution and fail. Then each function is compared on its own cases."""
from __future__ import annotations

from types import ModuleType
from typing import Iterator

import torch

from exercises.core import CheckFailed, as_float, as_int, as_tensor, call, describe, fixture, fmt, matching_mistake

HINTS = {
    "draft_alone": "a draft is accepted with its draft probability q(x) alone; the rule compares the target with "
                   "the draft: accept with probability min(1, p(x)/q(x))",
    "target_alone": "a draft is accepted with its target probability p(x) alone; x was proposed with probability "
                    "q(x), so accept with probability min(1, p(x)/q(x))",
    "not_renormalised": "max(p - q, 0) is not a distribution (its sum is the rejection probability): divide it by "
                        "its sum",
    "target_again": "after a rejection the token is drawn from p again: p already delivered min(p, q) through "
                    "acceptance, so only the rest, norm(max(p - q, 0)), may be drawn",
    "swapped": "the residual is max(q - p, 0): it must be what the target still lacks, max(p - q, 0)",
    "with_replacement": "every sibling is treated as a draw from q, but siblings are drawn WITHOUT replacement: "
                        "sibling i comes from q without the earlier draws, renormalised",
    "siblings_not_renormalised": "the sibling distributions are not renormalised after removing the earlier "
                                 "draws: each row must sum to 1",
    "no_update": "a rejection leaves p unchanged: after rejecting x (drawn from qs[i]) the next child is tested "
                 "against residual(p, qs[i])",
    "accept_above": "a child is accepted when its coin is ABOVE the acceptance probability: accept iff coin < "
                    "accept_probability (a uniform coin is below a with probability a)",
}


def accept(m: ModuleType, p_x: float, q_x: float) -> float:
    a = as_float(call(m, "accept_probability", p_x, q_x), f"accept_probability({p_x:.4g}, {q_x:.4g})")
    if not 0.0 <= a <= 1.0:
        raise CheckFailed(f"accept_probability(p_x={p_x:.4g}, q_x={q_x:.4g}) returned {a:.4g}: an acceptance "
                          f"probability lies in [0, 1] (p(x)/q(x) can exceed 1: cap it, min(1, p(x)/q(x)))")
    return a


def walk(m: ModuleType, p: torch.Tensor, children: list[int], qs: torch.Tensor,
         coins: list[float]) -> tuple[int, torch.Tensor]:
    """The student's verify_children, its answer checked."""
    what = f"verify_children(p={fmt(p.tolist())}, children={children}, coins={coins})"
    got = call(m, "verify_children", p.clone(), list(children), qs.clone(), list(coins))
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise CheckFailed(f"{what} should return (index, p), got {describe(got)}")
    return as_int(got[0], f"{what}'s index"), as_tensor(got[1], f"{what}'s p", p.shape)


def exact_distribution(m: ModuleType, case: dict) -> torch.Tensor:
    """(V,) the exact distribution of the token committed after the node, from the student's functions: every draw
    order of the children (with its probability) and every accept/reject branch."""
    p, q = case["p"], case["q"]
    dist = torch.zeros_like(p)
    for drawn, weight in zip(case["draws"], case["weights"]):
        k = len(drawn)
        qs = as_tensor(call(m, "sibling_distributions", q.clone(), list(drawn)),
                       f"sibling_distributions(q, drawn={drawn})", (k, len(q)))
        reach = 1.0  # probability that the children before child i were all rejected
        for i, x in enumerate(drawn):
            p_i = walk(m, p, drawn[:i], qs[:i], [1.0] * i)[1] if i else p  # p after i rejections
            a = accept(m, float(p_i[x]), float(qs[i, x]))
            if a > 0 and walk(m, p, drawn[:i + 1], qs[:i + 1], [1.0] * i + [a * (1 - 1e-9)])[0] != i:
                raise CheckFailed(f"verify_children did not accept child {i} (token {x}) with the coin "
                                  f"{a * (1 - 1e-9):.6f}, below its acceptance probability {a:.6f}. Hint: "
                                  f"{HINTS['accept_above']}.")
            dist[x] += weight * reach * a
            reach *= 1.0 - a
            if reach == 0.0:
                break
        else:
            dist += weight * reach * walk(m, p, drawn, qs, [1.0] * k)[1]  # every child rejected: the bonus token
    return dist


PIECES = {"accept_probability": "accept", "residual": "residual", "sibling_distributions": "siblings",
          "verify_children": "verify"}  # function -> its cases in the fixture


def answer(m: ModuleType, name: str, case: dict):
    """The student's answer to one committed case of function `name`."""
    if name == "accept_probability":
        return accept(m, case["p_x"], case["q_x"])
    if name == "residual":
        return as_tensor(call(m, "residual", case["p"].clone(), case["q"].clone()), "residual", case["p"].shape)
    if name == "sibling_distributions":
        shape = (len(case["drawn"]), len(case["q"]))
        return as_tensor(call(m, "sibling_distributions", case["q"].clone(), list(case["drawn"])),
                         "sibling_distributions", shape)
    return list(walk(m, case["p"], case["children"], case["qs"], case["coins"]))


def problem(m: ModuleType, data: dict, name: str) -> str:
    """What is wrong with function `name` on its committed cases, in words (with a hint when all its answers match
    a typical mistake), or "" when it is right."""
    cases = data[PIECES[name]]
    outputs = [answer(m, name, c) for c in cases]
    for case, got in zip(cases, outputs):
        expected = case["expected"]
        if not all(matches(g, e) for g, e in zip(as_pair(got), as_pair(expected))):
            hint = matching_mistake(outputs, data["variants"][name], HINTS, atol=1e-9)
            shown = ", ".join(f"{k}={short(v)}" for k, v in case.items() if k != "expected")
            return f"{name}({shown}) returned {short(got)}, expected {short(expected)}" + \
                (f". Hint: {hint}." if hint else ".")
    return ""


def as_pair(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def matches(got, expected) -> bool:
    if isinstance(expected, torch.Tensor):
        return torch.allclose(got, expected, atol=1e-9, rtol=0)
    return abs(got - expected) <= 1e-9


def short(x) -> str:
    if isinstance(x, torch.Tensor):
        return fmt(x.flatten().tolist()) if x.dim() <= 1 else str([fmt(r) for r in x.tolist()]).replace("'", "")
    if isinstance(x, (list, tuple)):
        return "(" + ", ".join(short(v) for v in x) + ")"
    return f"{x:.4g}" if isinstance(x, float) else describe(x)


def check(m: ModuleType) -> Iterator[str]:
    data = fixture(8)
    for case in data["exact"]:
        p, q, k = case["p"], case["q"], len(case["draws"][0])
        what = (f"exact distribution at a node with target p = {fmt(p.tolist(), 2)}, drafts from q = "
                f"{fmt(q.tolist(), 2)}, k = {k} {'child' if k == 1 else 'children'} ({len(case['draws'])} draw orders "
                f"enumerated)")
        got = exact_distribution(m, case)
        if torch.allclose(got, p, atol=1e-9, rtol=0):
            yield f"{what}: the committed token has distribution p exactly"
            continue
        cause = next((text for text in (problem(m, data, name) for name in PIECES) if text), "")
        if not cause:
            variants = [exact_distribution(m, c) for c in data["exact"]]
            cause = matching_mistake(variants, data["variants"]["exact"], HINTS)
            cause = f"Hint: {cause}." if cause else ""
        raise CheckFailed(f"{what}: the committed token has distribution {fmt(got.tolist())} (sum "
                          f"{float(got.sum()):.3f}), not the target distribution p: sampling with these functions is "
                          f"not lossless. {cause}")
    for name in PIECES:
        text = problem(m, data, name)
        if text:
            raise CheckFailed(text)
        yield f"{name}: right on its {len(data[PIECES[name]])} cases"
