"""Check of exercise 3: the targets and the loss of Eq. 5. A wrong target is explained by where the value came from
(which x[i]); a wrong loss by the typical wrong version whose values it matches on every case (fixtures/ex3.json)."""
from __future__ import annotations

import math
from types import ModuleType
from typing import Iterator

import torch

from exercises.core import CheckFailed, as_float, as_tensor, call, fixture, kind, matching_mistake

HINTS = {
    "alpha_on_main": "alpha multiplies the main term too: Eq. 5 has alpha_0 = 1 for the main stream and alpha_j = "
                     "alpha for each stream",
    "pooled_streams": "the streams' targets are pooled into one cross-entropy: Eq. 5 sums one CE per stream, each a "
                      "mean over that stream's own valid targets",
    "mean_streams": "the stream terms are averaged: Eq. 5 sums alpha_j * CE_j over j = 1..γ",
    "no_alpha": "alpha is missing: each stream's CE is weighted by alpha_j = alpha",
    "pooled_all": "all columns are pooled into one cross-entropy: Eq. 5 is one CE per column (main, then each "
                  "stream), weighted and added",
}


def explain_target(got: list[list[int]], expected: list[list[int]], tokens: list[int], prompt_len: int) -> str:
    """Why the first wrong entry is wrong, from where its value came from."""
    T = len(tokens)
    t, j = next((t, j) for t in range(T) for j in range(len(expected[0])) if got[t][j] != expected[t][j])
    i = t + 1 + j
    who = "the main stream" if j == 0 else f"stream {j}"
    head = (f"row t={t}, column {j} ({who} at position {t}): expected "
            + (f"x[{i}] = {expected[t][j]}" if expected[t][j] != -1 else "-1 (ignored)") + f", got {got[t][j]}")
    source = [n for n, x in enumerate(tokens) if x == got[t][j]]
    if source:
        head += f" = x[{source[0]}]"
    if expected[t][j] == -1 and i >= T:
        if source and source[0] == i % T:
            return head + f". Targets past the end must not wrap around (torch.roll does): x[{i}] does not exist, " \
                          f"so the target is -1."
        return head + f". x[{i}] is past the end of the sequence (T = {T}): the target is -1 (ignored)."
    if expected[t][j] == -1:
        return head + f". x[{i}] is a prompt token (index < prompt_len = {prompt_len}): it is not learned, so the " \
                      f"target is -1."
    if got[t][j] == -1:
        return head + f". x[{i}] exists and is not a prompt token: it is a target to learn."
    if source and source[0] == t + j:
        return head + (". Off by one: stream j at position t predicts x[t+1+j], one step further than x[t+j] "
                       "(column 0, the main stream, predicts x[t+1]).")
    if source and source[0] == t + j + 2:
        return head + (". Off by one the other way: stream j at t predicts x[t+1+j], not x[t+2+j] (stream 1 "
                       "predicts two tokens ahead, the main stream one).")
    return head + ". Column j of row t is x[t+1+j]."


def check_targets(m: ModuleType) -> Iterator[str]:
    for case in fixture(3)["targets"]:
        toks, G, prompt_len, expected = case["tokens"], case["n_streams"], case["prompt_len"], case["expected"]
        what = f"eq5_targets(tokens={toks}, n_streams={G}, prompt_len={prompt_len})"
        got = as_tensor(call(m, "eq5_targets", list(toks), G, prompt_len), what, (len(toks), G + 1), torch.long)
        if got.tolist() != expected:
            raise CheckFailed(f"{what}: " + explain_target(got.tolist(), expected, toks, prompt_len))
        yield f"{what}: right"


def loss_value(m: ModuleType, case: dict, what: str) -> float:
    got = call(m, "eq5_loss", case["logits"].clone(), case["targets"].clone(), case["alpha"])
    if not isinstance(got, torch.Tensor) or got.numel() != 1:
        raise CheckFailed(f"{what}: return the loss as a scalar tensor, got {kind(got)}")
    if math.isnan(float(got)):
        raise CheckFailed(f"{what}: got NaN. Leave out the ignored targets (-1): F.cross_entropy(..., "
                          f"ignore_index=-1), and let a column without any valid target add 0 (a mean over no "
                          f"targets is 0/0 = NaN).")
    return as_float(got, what)


def check(m: ModuleType) -> Iterator[str]:
    yield from check_targets(m)
    data = fixture(3)
    cases, outputs = data["loss"], []
    label = lambda c: (f"eq5_loss on {len(c['targets'])} positions, γ={c['targets'].size(1) - 1}, "
                       f"V={c['logits'].size(-1)}, alpha={c['alpha']}")
    for i, case in enumerate(cases):
        what, expected = label(case), case["expected"]
        got = loss_value(m, case, what)
        outputs.append(got)
        if abs(got - expected) < 1e-6:
            yield f"{what}: {got:.4f}, right"
            continue
        outputs += [loss_value(m, c, label(c)) for c in cases[i + 1:]]
        hint = matching_mistake(outputs, data["variants"], HINTS, atol=1e-6)
        raise CheckFailed(f"{what}: expected {expected:.4f}, got {got:.4f}. "
                          + (f"Hint: {hint}." if hint else "L = CE(column 0) + alpha * sum over j of CE(column j), "
                             "each CE the mean over the column's targets != -1."))
