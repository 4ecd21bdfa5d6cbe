"""Check of exercise 2: stream initialisation (Eq. 3) and the attention of one node's streams (Eq. 2).

Who sees whom is found by perturbing one input at a time; wrong values are matched against what the typical wrong
versions return on every case (committed in fixtures/ex2.json)."""
from __future__ import annotations

from types import ModuleType
from typing import Iterator

import torch

from exercises.core import CheckFailed, as_tensor, call, fixture, fmt, matching_mistake

HINTS = {
    "unscaled": "the scores are not scaled: divide the dot products by sqrt(hs) (hs = the head size, q.shape[1])",
    "scaled_by_hs": "the scores are divided by hs instead of sqrt(hs)",
    "two_softmaxes": "two softmaxes (one over the main keys, one over the streams) are added: Eq. 2 is ONE softmax "
                     "over the main keys and the stream keys together (concatenate the scores, then softmax)",
    "softmax_over_streams": "the softmax runs over the wrong axis (dim=0, across the streams): each stream's weights "
                            "over its keys must sum to 1, so take the softmax along the key axis (dim=-1)",
}


def check_init(m: ModuleType) -> str:
    case = fixture(2)["init"]
    main, P, expected = case["main"], case["stream_emb"], case["expected"]
    got = as_tensor(call(m, "init_streams", main.clone(), P.clone()), "init_streams", expected.shape)
    if not torch.allclose(got, expected):
        hint = ""
        if torch.allclose(got, P.expand_as(got)):
            hint = " You returned P_j alone: each stream starts from the main state, M_t + P_j."
        elif torch.allclose(got, main.expand_as(got)):
            hint = " You returned M_t alone: without + P_j every stream would be a copy of the main stream."
        raise CheckFailed(f"init_streams(main={main.tolist()}, stream_emb={P.tolist()}): expected "
                          f"{expected.tolist()}, got {got.tolist()}. Eq. 3: S_t,j = M_t + P_j for every j.{hint}")
    return f"init_streams: S_t,j = M_t + P_j for j = 1..{P.size(0)}"


def attention(m: ModuleType, args: list[torch.Tensor], what: str) -> torch.Tensor:
    """The student's stream_attention on copies of args, its shape and values checked."""
    q, k_main = args[0], args[1]
    (G, hs), L = q.shape, k_main.size(0)
    got = call(m, "stream_attention", *(a.clone() for a in args))
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (G, L + G) != (G, hs):
        raise CheckFailed(f"{what}: returned shape {tuple(got.shape)}, expected {(G, hs)}. ({G}, {L + G}) is the "
                          f"shape of the attention weights (one row per stream, one column per key): multiply them "
                          f"by the values [v_main; v_streams] to get each stream's output.")
    return as_tensor(got, what, (G, hs))


def explain_structure(m: ModuleType, args: list[torch.Tensor], got: torch.Tensor, what: str) -> str:
    """Who sees whom, found by perturbing one stream's key/value (or the main values) and watching the outputs."""
    q, k_main, v_main, k_streams, v_streams = args
    G = q.size(0)
    moved = torch.zeros(G, G, dtype=torch.float64)  # [stream j, perturbed stream j']: how much output j moved
    for jp in range(G):
        k2, v2 = k_streams.clone(), v_streams.clone()
        k2[jp] += 1.0
        v2[jp] += 3.0
        moved[:, jp] = (attention(m, [q, k_main, v_main, k2, v2], what) - got).abs().amax(1)
    for j, jp in torch.ones(G, G).triu(1).nonzero().tolist():
        if moved[j, jp] > 1e-9:
            return (f"the output of stream {j + 1} changed when the key/value of stream {jp + 1} changed. Stream j "
                    f"sees streams 1..j only, never a later stream: mask the stream-to-stream scores with a "
                    f"lower-triangular mask (diagonal included) before the softmax.")
    for j, jp in torch.ones(G, G).tril().nonzero().tolist():
        if moved[j, jp] < 1e-12:
            which = "itself" if jp == j else f"the earlier stream {jp + 1}"
            return f"the output of stream {j + 1} does not depend on {which}. Stream j sees streams 1..j of its " \
                   f"node, itself included."
    moved = attention(m, [q, k_main, v_main + 3.0, k_streams, v_streams], what) - got
    if moved.abs().max() < 1e-12:
        return ("the outputs do not depend on the main values. Stream j at t also sees the main stream at "
                "positions <= t: the keys/values k_main, v_main (Eq. 2).")
    return ""


def label(args: list[torch.Tensor]) -> str:
    (G, hs), L = args[0].shape, args[1].size(0)
    return f"stream_attention with L={L} main keys, γ={G} streams, head size {hs}"


def check(m: ModuleType) -> Iterator[str]:
    yield check_init(m)
    data = fixture(2)
    cases, outputs = data["attention"], []
    for i, case in enumerate(cases):
        args, expected = case["args"], case["expected"]
        (G, hs), L = args[0].shape, args[1].size(0)
        what = label(args)
        got = attention(m, args, what)
        outputs.append(got)
        if torch.allclose(got, expected, atol=1e-6):
            yield f"{what}: right"
            continue
        if L + G == hs and (got >= 0).all() and torch.allclose(got.sum(1), torch.ones(G, dtype=got.dtype)):
            raise CheckFailed(f"{what}: each row of your output sums to 1: you returned the attention weights "
                              f"(here L + γ = {L + G} = hs, so the shapes agree). Multiply the weights by the "
                              f"values [v_main; v_streams] to get each stream's output.")
        outputs += [attention(m, c["args"], label(c["args"])) for c in cases[i + 1:]]
        hint = matching_mistake(outputs, data["variants"], HINTS, atol=1e-6)
        if hint:
            raise CheckFailed(f"{what}: wrong values. Hint: {hint}.")
        structure = explain_structure(m, args, got, what)
        if structure:
            raise CheckFailed(f"{what}: {structure}")
        j = int((got - expected).abs().amax(1).argmax())
        raise CheckFailed(f"{what}: stream {j + 1} expected {fmt(expected[j].tolist())}, got {fmt(got[j].tolist())}. "
                          f"Who sees whom is right; check the scores (q·k / sqrt(hs)), that there is one softmax "
                          f"over [main keys, streams 1..j], and the weighted sum of the matching values.")
