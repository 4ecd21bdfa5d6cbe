"""Check of exercise 1, the MSA mask (Eq. 1-2): every wrong entry is explained by the rule it breaks."""
from __future__ import annotations

from types import ModuleType
from typing import Iterator

import torch

from exercises.core import CheckFailed, as_tensor, call, fixture


def row_name(r: int, T: int) -> tuple[int, int, str]:
    """(stream j, position t, 'main@t' or 'stream j@t') of row or column r = j*T + t."""
    j, t = divmod(r, T)
    return j, t, f"main@{t}" if j == 0 else f"stream {j}@{t}"


def mask_rule(qj: int, qt: int, kj: int, kt: int) -> str:
    """The rule of Eq. 1-2 that decides one entry (query stream qj at qt, key stream kj at kt)."""
    if kj == 0:
        return (f"every query at position {qt} sees the main stream at positions 0..{qt} (itself included) and "
                f"never a later position")
    if qj == 0:
        return "the main stream never sees a stream (Eq. 1): that is what keeps the verifier the unchanged model"
    if kt != qt:
        return "a stream sees only the streams of its own position, never another position's streams (Eq. 2)"
    if kj > qj:
        return f"stream {qj} sees streams 1..{qj} only: stream {kj} comes later and is hidden from it (Eq. 2)"
    return f"stream {qj} sees streams 1..{qj} of its own position, itself included (Eq. 2)"


def explain_mask(got: torch.Tensor, expected: torch.Tensor, T: int, G: int) -> str:
    """The wrong entries grouped by the rule they break: the first rule on the first line, then examples."""
    wrong = (got != expected).nonzero().tolist()
    by_rule: dict[str, list[tuple[int, int]]] = {}
    for q, k in wrong:
        qj, qt, _ = row_name(q, T)
        kj, kt, _ = row_name(k, T)
        by_rule.setdefault(mask_rule(qj, qt, kj, kt), []).append((q, k))
    lines = [f"msa_mask(T={T}, n_streams={G}): {len(wrong)} of {expected.numel()} entries are wrong. Rule: "
             f"{next(iter(by_rule))}.", f"  Rows and columns are laid out main@0..main@{T - 1}, then stream 1@0.., "
             f"and so on (index = j*T + t)."]
    for rule, entries in list(by_rule.items())[:3]:
        q, k = entries[0]
        lines.append(f"  - entry [{q}, {k}] (query {row_name(q, T)[2]} -> key {row_name(k, T)[2]}): expected "
                     f"{bool(expected[q, k])}, got {bool(got[q, k])}"
                     + (f" ({len(entries) - 1} more like it)" if len(entries) > 1 else "") + f". Rule: {rule}.")
    return "\n".join(lines)


def check(m: ModuleType) -> Iterator[str]:
    for case in fixture(1)["cases"]:
        T, G, expected = case["T"], case["n_streams"], case["mask"]
        got = as_tensor(call(m, "msa_mask", T, G), f"msa_mask({T}, {G})", expected.shape, torch.bool)
        if not torch.equal(got, expected):
            raise CheckFailed(explain_mask(got, expected, T, G))
        yield f"msa_mask(T={T}, n_streams={G}): all {expected.numel()} entries right"
