"""The checker of the exercises: small literal cases, and explanations in words when an answer is wrong.

The student's file is imported by path under its own module name (never into model.py, tree.py or generate.py):
the reference modules are only used as oracles, and check 7 calls the student's functions from a decode loop
written here, on top of the real model's blocks and KV cache.
"""
from __future__ import annotations

import importlib.util
import inspect
import math
import traceback
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
EXERCISES = {  # number -> the stub file the student fills in (and its statement, same name with .md)
    1: "ex1_msa_mask.py",
    2: "ex2_stream_attention.py",
    3: "ex3_targets_and_loss.py",
    4: "ex4_tree_drafting.py",
    5: "ex5_verification.py",
    6: "ex6_pruning.py",
}
FINAL = 7  # the student's pieces inside the real decode loop


class CheckFailed(Exception):
    """A wrong answer: the message says what is wrong, in words, and (when known) a hint."""


def load_module(path: str | Path) -> ModuleType:
    """Import a student's file by path, as a module of its own."""
    path = Path(path).resolve()
    if not path.is_file():
        raise CheckFailed(f"{path} does not exist: give the path of your .py file with --module")
    spec = importlib.util.spec_from_file_location(f"student_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise CheckFailed(f"{path.name} could not be imported: {type(e).__name__}: {e}{where(e, path)}") from e
    return module


def where(e: BaseException, path: Path | None = None) -> str:
    """' (line N of file.py: code)' for the innermost frame of the student's file, if any."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if path is None or Path(f.filename) == path]
    if not frames:
        return ""
    f = frames[-1]
    return f" (line {f.lineno} of {Path(f.filename).name}: {f.line})"


def call(module: ModuleType, name: str, *args):
    """Call the student's function `name`; turn a missing function or an exception into a readable failure."""
    fn = getattr(module, name, None)
    if not callable(fn):
        raise CheckFailed(f"{Path(module.__file__).name} has no function `{name}`: keep the names and signatures "
                          f"of the stub")
    shown = ", ".join(short(a) for a in args)
    try:
        return fn(*args)
    except NotImplementedError:
        raise CheckFailed(f"`{name}` is not written yet (it raises NotImplementedError): replace the `raise` line of "
                          f"{Path(module.__file__).name} with your code") from None
    except Exception as e:
        raise CheckFailed(f"`{name}({shown})` raised {type(e).__name__}: {e}"
                          f"{where(e, Path(module.__file__).resolve())}") from None


def short(x) -> str:
    """A short description of an argument, for messages."""
    if isinstance(x, torch.Tensor):
        return f"<{x.dtype} tensor of shape {tuple(x.shape)}>" if x.numel() > 8 else repr(x.tolist())
    return repr(x)


def as_list(x, name: str) -> list:
    """A list or tensor returned by the student, as a Python list (a clear failure for anything else)."""
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return [int(v) if isinstance(v, torch.Tensor) else v for v in x]
    raise CheckFailed(f"`{name}` should return a list (or a 1-D tensor), got a {type(x).__name__}")


def as_tensor(x, name: str, shape: tuple, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Check a returned tensor's type, shape and (optionally) dtype."""
    if not isinstance(x, torch.Tensor):
        raise CheckFailed(f"`{name}` should return a torch tensor of shape {shape}, got a {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise CheckFailed(f"`{name}` returned shape {tuple(x.shape)}, expected {tuple(shape)}")
    if dtype is not None and x.dtype != dtype:
        hint = " (True = may attend; build it with dtype=torch.bool or call .bool())" if dtype == torch.bool else ""
        raise CheckFailed(f"`{name}` returned dtype {x.dtype}, expected {dtype}{hint}")
    return x


def fmt(values, digits: int = 3) -> str:
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values) + "]"


# ---------------------------------------------------------------------------------------------------------------
# 1: the MSA mask
# ---------------------------------------------------------------------------------------------------------------

def mask_row(r: int, T: int) -> tuple[int, int, str]:
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


def explain_mask(got: torch.Tensor, expected: torch.Tensor, T: int) -> str:
    wrong = (got != expected).nonzero().tolist()
    by_rule: dict[str, list[tuple[int, int]]] = {}
    for q, k in wrong:
        qj, qt, _ = mask_row(q, T)
        kj, kt, _ = mask_row(k, T)
        by_rule.setdefault(mask_rule(qj, qt, kj, kt), []).append((q, k))
    lines = [f"{len(wrong)} of {expected.numel()} entries are wrong. Rows and columns are laid out "
             f"main@0..main@{T - 1}, then stream 1@0.., and so on (index = j*T + t)."]
    for rule, entries in list(by_rule.items())[:3]:
        q, k = entries[0]
        lines.append(f"- entry [{q}, {k}] (query {mask_row(q, T)[2]} -> key {mask_row(k, T)[2]}): expected "
                     f"{bool(expected[q, k])}, got {bool(got[q, k])}"
                     + (f" ({len(entries) - 1} more like it)" if len(entries) > 1 else "")
                     + f".\n  Rule: {rule}.")
    return "\n".join(lines)


def check_1(m: ModuleType) -> list[str]:
    from specstream_minimal import msa_mask as reference_mask
    literal = torch.tensor([[1, 0, 0, 0],   # main@0 -> main@0
                            [1, 1, 0, 0],   # main@1 -> main@0, main@1
                            [1, 0, 1, 0],   # stream 1@0 -> main@0, itself
                            [1, 1, 0, 1]],  # stream 1@1 -> main@0, main@1, itself
                           dtype=torch.bool)
    cases = [(2, 1, literal), (3, 0, reference_mask(3, 0)), (3, 2, reference_mask(3, 2)), (4, 3, reference_mask(4, 3))]
    passed = []
    for T, G, expected in cases:
        got = as_tensor(call(m, "msa_mask", T, G), f"msa_mask({T}, {G})", expected.shape, torch.bool)
        if not torch.equal(got, expected):
            raise CheckFailed(f"msa_mask(T={T}, n_streams={G}):\n" + explain_mask(got, expected, T))
        passed.append(f"msa_mask(T={T}, n_streams={G}): all {expected.numel()} entries right")
    return passed


# ---------------------------------------------------------------------------------------------------------------
# 2: stream initialisation and stream attention for one node
# ---------------------------------------------------------------------------------------------------------------

def reference_stream_attention(q, k_main, v_main, k_streams, v_streams):
    """Stream by stream, with an explicit key list: main keys, then streams 1..j."""
    out = []
    for j in range(q.size(0)):
        keys, values = torch.cat([k_main, k_streams[:j + 1]]), torch.cat([v_main, v_streams[:j + 1]])
        out.append(F.softmax(keys @ q[j] / math.sqrt(q.size(1)), dim=0) @ values)
    return torch.stack(out)


def stream_attention_mistakes(q, k_main, v_main, k_streams, v_streams) -> dict[str, torch.Tensor]:
    """What common wrong versions of Eq. 2 return, with the hint each deserves."""
    G, hs = q.shape
    tril = torch.ones(G, G, dtype=torch.bool).tril()
    s_main, s_streams = q @ k_main.T, q @ k_streams.T

    def one_softmax(s_main, s_streams, scale):
        att = F.softmax(torch.cat([s_main, s_streams], dim=1) * scale, dim=1)
        return att @ torch.cat([v_main, v_streams])

    masked = s_streams.masked_fill(~tril, float("-inf"))
    two = (F.softmax(s_main / math.sqrt(hs), dim=1) @ v_main
           + F.softmax(masked / math.sqrt(hs), dim=1) @ v_streams)
    return {
        "the scores are not scaled: divide the dot products by sqrt(hs) (hs = the head size, q.shape[1])":
            one_softmax(s_main, masked, 1.0),
        "the scores are divided by hs instead of sqrt(hs)": one_softmax(s_main, masked, 1.0 / hs),
        "two softmaxes (one over the main keys, one over the streams) are added: Eq. 2 is ONE softmax over the "
        "main keys and the stream keys together (concatenate the scores, then softmax)": two,
    }


def check_2(m: ModuleType) -> list[str]:
    passed = []
    main, P = torch.tensor([1.0, 2.0]), torch.tensor([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
    got = as_tensor(call(m, "init_streams", main, P), "init_streams", (3, 2))
    expected = main + P
    if not torch.allclose(got, expected):
        hint = ""
        if torch.allclose(got, P.expand_as(got)):
            hint = " You returned P_j alone: each stream starts from the main state, M_t + P_j."
        elif torch.allclose(got, main.expand_as(got)):
            hint = " You returned M_t alone: without + P_j every stream would be a copy of the main stream."
        raise CheckFailed(f"init_streams(main={main.tolist()}, stream_emb={P.tolist()}): expected "
                          f"{expected.tolist()}, got {got.tolist()}. Eq. 3: S_t,j = M_t + P_j for every j.{hint}")
    passed.append("init_streams: S_t,j = M_t + P_j for j = 1..3")

    g = torch.Generator().manual_seed(2)
    for L, G, hs in [(1, 1, 2), (3, 2, 4), (5, 4, 8)]:
        q, k_main, v_main, k_streams, v_streams = (torch.randn(n, hs, generator=g, dtype=torch.float64)
                                                   for n in (G, L, L, G, G))
        args = (q, k_main, v_main, k_streams, v_streams)
        got = as_tensor(call(m, "stream_attention", *args), "stream_attention", (G, hs))
        expected = reference_stream_attention(*args)
        what = f"stream_attention with L={L} main keys, γ={G} streams, head size {hs}"
        if torch.allclose(got.double(), expected, atol=1e-6):
            passed.append(f"{what}: right")
            continue
        # who sees whom: perturb one stream's key and value, see which outputs move
        for jp in range(G):
            k2, v2 = k_streams.clone(), v_streams.clone()
            k2[jp] += 1.0
            v2[jp] += 3.0
            moved = (call(m, "stream_attention", q, k_main, v_main, k2, v2).double() - got.double()).abs().amax(1)
            for j in range(G):
                if jp > j and moved[j] > 1e-9:
                    raise CheckFailed(f"{what}: the output of stream {j + 1} changed when the key/value of stream "
                                      f"{jp + 1} changed. Stream j sees streams 1..j only, never a later stream: mask "
                                      f"the stream-to-stream scores with a lower-triangular mask (diagonal "
                                      f"included) before the softmax.")
                if jp <= j and moved[j] < 1e-12:
                    which = "itself" if jp == j else f"the earlier stream {jp + 1}"
                    raise CheckFailed(f"{what}: the output of stream {j + 1} does not depend on {which}. Stream j "
                                      f"sees streams 1..j of its node, itself included.")
        v2 = v_main + 3.0
        moved = call(m, "stream_attention", q, k_main, v2, k_streams, v_streams).double() - got.double()
        if moved.abs().max() < 1e-12:
            raise CheckFailed(f"{what}: the outputs do not depend on the main values. Stream j at t also sees the "
                              f"main stream at positions <= t: the keys/values k_main, v_main (Eq. 2).")
        for hint, wrong in stream_attention_mistakes(*args).items():
            if torch.allclose(got.double(), wrong, atol=1e-6):
                raise CheckFailed(f"{what}: wrong values. Hint: {hint}.")
        j = int((got.double() - expected).abs().amax(1).argmax())
        raise CheckFailed(f"{what}: stream {j + 1} expected {fmt(expected[j].tolist())}, got "
                          f"{fmt(got[j].double().tolist())}. Who sees whom is right; check the scores "
                          f"(q·k / sqrt(hs)), that there is one softmax over [main keys, streams 1..j], and the "
                          f"weighted sum of the matching values.")
    return passed


# ---------------------------------------------------------------------------------------------------------------
# 3: Eq. 5 targets and loss
# ---------------------------------------------------------------------------------------------------------------

def explain_targets(got: list[list[int]], expected: list[list[int]], tokens: list[int], prompt_len: int) -> str:
    T = len(tokens)
    for t in range(T):
        for j in range(len(expected[0])):
            if got[t][j] == expected[t][j]:
                continue
            i = t + 1 + j
            who = "the main stream" if j == 0 else f"stream {j}"
            head = (f"row t={t}, column {j} ({who} at position {t}): expected "
                    + (f"x[{i}] = {expected[t][j]}" if expected[t][j] != -1 else "-1 (ignored)")
                    + f", got {got[t][j]}")
            source = [n for n, x in enumerate(tokens) if x == got[t][j]]
            if source:
                head += f" = x[{source[0]}]"
            if expected[t][j] == -1 and i >= T:
                if source and source[0] == i % T:
                    return head + ". Targets past the end must not wrap around (torch.roll does): x[" \
                                  f"{i}] does not exist, so the target is -1."
                return head + f". x[{i}] is past the end of the sequence (T = {T}): the target is -1 (ignored)."
            if expected[t][j] == -1:
                return head + (f". x[{i}] is a prompt token (index < prompt_len = {prompt_len}): it is not "
                               f"learned, so the target is -1.")
            if got[t][j] == -1:
                return head + f". x[{i}] exists and is not a prompt token: it is a target to learn."
            if source and source[0] == t + j:
                return head + (". Off by one: stream j at position t predicts x[t+1+j], one step further than "
                               "x[t+j] (column 0, the main stream, predicts x[t+1]).")
            if source and source[0] == t + j + 2:
                return head + (". Off by one the other way: stream j at t predicts x[t+1+j], not x[t+2+j] "
                               "(stream 1 predicts two tokens ahead, the main stream one).")
            return head + ". Column j of row t is x[t+1+j]."
    return ""


def reference_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float,
                   main_weight: float = 1.0, joint_streams: bool = False, mean_streams: bool = False) -> torch.Tensor:
    """Eq. 5, and (with the flags) its common wrong variants."""
    def ce(lg, tg):
        valid = tg != -1
        return F.cross_entropy(lg[valid], tg[valid], reduction="sum") / max(int(valid.sum()), 1)
    G = logits.size(1) - 1
    streams = [ce(logits[:, j], targets[:, j]) for j in range(1, G + 1)]
    if joint_streams:
        stream_term = ce(logits[:, 1:].flatten(0, 1), targets[:, 1:].flatten())
    else:
        stream_term = sum(streams) / (G if mean_streams else 1)
    return main_weight * ce(logits[:, 0], targets[:, 0]) + alpha * stream_term


def check_3(m: ModuleType) -> list[str]:
    passed = []
    tokens = [10, 11, 12, 13, 14, 15]
    cases = [
        (tokens, 2, 0, [[11, 12, 13], [12, 13, 14], [13, 14, 15], [14, 15, -1], [15, -1, -1], [-1, -1, -1]]),
        (tokens, 2, 3, [[-1, -1, 13], [-1, 13, 14], [13, 14, 15], [14, 15, -1], [15, -1, -1], [-1, -1, -1]]),
        ([5, 6, 7], 0, 0, [[6], [7], [-1]]),
    ]
    for toks, G, prompt_len, expected in cases:
        what = f"eq5_targets(tokens={toks}, n_streams={G}, prompt_len={prompt_len})"
        got = as_tensor(call(m, "eq5_targets", toks, G, prompt_len), what, (len(toks), G + 1))
        if got.dtype != torch.long:
            raise CheckFailed(f"{what} returned dtype {got.dtype}: targets are token ids, use dtype=torch.long")
        if got.tolist() != expected:
            raise CheckFailed(f"{what}:\n" + explain_targets(got.tolist(), expected, toks, prompt_len))
        passed.append(f"{what}: right")

    g = torch.Generator().manual_seed(3)
    T, G, V = 6, 2, 7
    logits = torch.randn(T, G + 1, V, generator=g, dtype=torch.float64)
    targets = torch.tensor(cases[1][3])  # prompt_len 3: the columns have different numbers of valid targets
    targets = torch.where(targets >= 0, targets - 10, -1)  # token ids 3..5 of a 7-word vocabulary
    no_stream_targets = torch.tensor([[1, -1, -1], [-1, -1, -1]])  # T = 2: no stream has a target
    loss_cases = [(0.1, logits, targets), (0.5, logits, targets), (0.1, logits[:2], no_stream_targets)]
    for alpha, logits, targets in loss_cases:
        what = f"eq5_loss on {len(targets)} positions, γ={G}, V={V}, alpha={alpha}"
        got = call(m, "eq5_loss", logits, targets, alpha)
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            raise CheckFailed(f"{what}: return the loss as a scalar tensor (got {short(got)})")
        expected = reference_loss(logits, targets, alpha)
        if torch.isnan(got):
            raise CheckFailed(f"{what}: got NaN. Leave out the ignored targets (-1): F.cross_entropy(..., "
                              f"ignore_index=-1), and let a column without any valid target add 0.")
        if abs(float(got) - float(expected)) < 1e-6:
            passed.append(f"{what}: {float(got):.4f}, right")
            continue
        mistakes = {
            "alpha multiplies the main term too: Eq. 5 has alpha_0 = 1 for the main stream and alpha_j = alpha for "
            "each stream": reference_loss(logits, targets, alpha, main_weight=alpha),
            "the streams' targets are pooled into one cross-entropy: Eq. 5 sums one CE per stream, each a mean "
            "over that stream's own valid targets": reference_loss(logits, targets, alpha, joint_streams=True),
            "the stream terms are averaged: Eq. 5 sums alpha_j * CE_j over j = 1..γ":
                reference_loss(logits, targets, alpha, mean_streams=True),
            "alpha is missing: each stream's CE is weighted by alpha_j = alpha":
                reference_loss(logits, targets, 1.0),
        }
        for hint, wrong in mistakes.items():
            if abs(float(got) - float(wrong)) < 1e-6:
                raise CheckFailed(f"{what}: expected {float(expected):.4f}, got {float(got):.4f}. Hint: {hint}.")
        raise CheckFailed(f"{what}: expected {float(expected):.4f}, got {float(got):.4f}. L = CE(column 0) + "
                          f"alpha * sum over j of CE(column j), each CE the mean over the column's targets != -1.")
    return passed


# ---------------------------------------------------------------------------------------------------------------
# 4: tree drafting, tree attention mask, position ids
# ---------------------------------------------------------------------------------------------------------------

def reference_tree(root: int, topk: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """From tree.draft_tree, the project's reference."""
    from tree import draft_tree
    tokens = torch.tensor(topk, dtype=torch.long).view(len(topk), -1)
    t = draft_tree(root, tokens, torch.full(tokens.shape, 0.5))
    return t.tokens.tolist(), t.parents.tolist(), t.depths.tolist()


def tree_entry_rule(i: int, a: int, parents: list[int]) -> str:
    ancestors, p = [], parents[i]
    while p >= 0:
        ancestors.append(p)
        p = parents[p]
    if a == i:
        return f"node {i} sees itself"
    if a in ancestors:
        return f"node {i} sees its ancestors {sorted(ancestors)} (parent, grandparent, ..., root)"
    relation = "a descendant" if i in tree_path(a, parents) else "not an ancestor (a sibling or cousin)"
    return (f"node {a} is {relation} of node {i}: it must be hidden, or node {i} would see a token that is not on "
            f"its own root-to-node path")


def tree_path(node: int, parents: list[int]) -> list[int]:
    path = [node]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    return path[::-1]


def check_4(m: ModuleType) -> list[str]:
    passed = []
    literal = ([7, 1, 2, 3, 4, 3, 4], [-1, 0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 2, 2, 2])
    cases = [(7, [[1, 2], [3, 4]], literal), (5, [[8], [9], [6]], reference_tree(5, [[8], [9], [6]])),
             (0, [[1, 2, 3], [4, 5, 6]], reference_tree(0, [[1, 2, 3], [4, 5, 6]]))]
    for root, topk, (tokens, parents, depths) in cases:
        what = f"draft_tree(root={root}, topk={topk})"
        got = call(m, "draft_tree", root, topk)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise CheckFailed(f"{what} should return three lists (tokens, parents, depths), got {short(got)}")
        g_tokens, g_parents, g_depths = (as_list(x, "draft_tree") for x in got)
        k, G = len(topk[0]), len(topk)
        if len(g_tokens) != len(tokens) or len(g_parents) != len(tokens) or len(g_depths) != len(tokens):
            raise CheckFailed(f"{what}: expected {len(tokens)} nodes = 1 + " + " + ".join(
                f"{k}^{d}" for d in range(1, G + 1)) + f", got {len(g_tokens)} tokens, {len(g_parents)} parents, "
                f"{len(g_depths)} depths. Every depth-j candidate hangs under EVERY depth-(j-1) node (paths are "
                f"replicated), so depth j has k^j nodes.")
        for i in range(len(tokens)):
            if (g_tokens[i], g_parents[i], g_depths[i]) != (tokens[i], parents[i], depths[i]):
                raise CheckFailed(
                    f"{what}: node {i}: expected token {tokens[i]}, parent {parents[i]}, depth {depths[i]}; got "
                    f"token {g_tokens[i]}, parent {g_parents[i]}, depth {g_depths[i]}. Expected order (breadth "
                    f"first): tokens {tokens}, parents {parents}. The root has parent -1; within a depth, parent by "
                    f"parent, and under one parent the candidates in top-k order.")
        passed.append(f"{what}: {len(tokens)} nodes, right")

    from tree import Tree, position_ids, tree_attention_mask
    for root, topk, (tokens, parents, depths) in cases[:2]:
        n = len(parents)
        anc = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            anc[i, tree_path(i, parents)] = True
        tree = Tree(tokens=torch.tensor(tokens), parents=torch.tensor(parents), depths=torch.tensor(depths),
                    scores=torch.ones(n), ancestors=anc)
        for L in (3, 0):
            what = f"tree_attention_mask(parents={parents}, cache_len={L})"
            got = as_tensor(call(m, "tree_attention_mask", parents, L), what, (n, L + n), torch.bool)
            expected = tree_attention_mask(tree, L)
            wrong = (got != expected).nonzero().tolist()
            if wrong:
                i, c = wrong[0]
                if c < L:
                    rule = (f"every node sees every committed cache entry (columns 0..{L - 1}): the cache holds the "
                            f"prompt and the accepted tokens before the root")
                    key = f"cache entry {c}"
                else:
                    rule, key = tree_entry_rule(i, c - L, parents), f"node {c - L} (column {c})"
                raise CheckFailed(f"{what}: {len(wrong)} wrong entries; entry [{i}, {c}] (node {i} -> {key}): "
                                  f"expected {bool(expected[i, c])}, got {bool(got[i, c])}. Rule: {rule}.")
            passed.append(f"{what}: right")
            what = f"position_ids(depths={depths}, cache_len={L})"
            got_pos = as_list(call(m, "position_ids", depths, L), "position_ids")
            expected_pos = position_ids(tree, L).tolist()
            if got_pos != expected_pos:
                hint = "position = cache_len + depth"
                if got_pos == [L + i for i in range(n)]:
                    hint = ("you used the node index: nodes of the same depth are alternatives for the SAME next "
                            "slot of the sequence, so they share a position; position = cache_len + depth")
                elif got_pos == depths:
                    hint = "the tree sits on top of the cache: add cache_len"
                elif got_pos == [p + 1 for p in expected_pos]:
                    hint = (f"off by one: the root is the token right after the {L} cached ones, at position "
                            f"cache_len = {L}")
                raise CheckFailed(f"{what}: expected {expected_pos}, got {got_pos}. Hint: {hint}.")
            passed.append(f"{what}: right")
    return passed


# ---------------------------------------------------------------------------------------------------------------
# 5: greedy verification and cache compaction
# ---------------------------------------------------------------------------------------------------------------

def explain_path(got: list[int], expected: list[int], tokens, parents, argmax) -> str:
    if not got or got[0] != 0:
        return ("the path starts at the root, node 0: it is always accepted (it is the main stream's argmax from "
                "the previous call)")
    for a, b in zip(got, got[1:]):
        if parents[b] != a:
            return (f"node {b} follows node {a} in your path, but its parent is node {parents[b]}: a path goes from "
                    f"a node to one of its children")
        if tokens[b] != argmax[a]:
            own = (f" You compared node {b} with its OWN argmax ({argmax[b]}), which predicts the token after "
                   f"node {b}." if tokens[b] == argmax[b] else "")
            return (f"node {b} (token {tokens[b]}) is accepted, but the main argmax at its parent, node {a}, is "
                    f"{argmax[a]}: a child is accepted iff its token equals the argmax at its PARENT.{own}")
    end = got[-1]
    children = [c for c in range(len(tokens)) if parents[c] == end]
    for c in children:
        if tokens[c] == argmax[end]:
            first = (" Try every child of the last accepted node, not only the first one."
                     if c != children[0] else "")
            return (f"your path stops at node {end}, but its child node {c} (token {tokens[c]}) equals the argmax at "
                    f"node {end} ({argmax[end]}): it is accepted, and the walk goes on from it.{first}")
    return f"expected the path {expected}"


def check_5(m: ModuleType) -> list[str]:
    passed = []
    tokens, parents = [7, 1, 2, 3, 4, 3, 4], [-1, 0, 0, 1, 1, 2, 2]  # root 7, top-2 [[1, 2], [3, 4]]
    cases = [
        ([5, 1, 2, 3, 4, 3, 4], [0], "nothing accepted (each node's own argmax is its token: a trap)"),
        ([2, 9, 4, 0, 0, 0, 0], [0, 2, 6], "second child at both depths"),
        ([1, 3, 0, 0, 0, 0, 0], [0, 1, 3], "first child at both depths"),
        ([1, 8, 4, 0, 0, 0, 0], [0, 1], "depth 1 accepted, depth 2 rejected (node 6 matches, but under node 2)"),
    ]
    for argmax, expected, label in cases:
        what = f"verify_greedy(tokens={tokens}, parents={parents}, main_argmax={argmax}) [{label}]"
        got = as_list(call(m, "verify_greedy", tokens, parents, argmax), "verify_greedy")
        if got != expected:
            raise CheckFailed(f"{what}: expected {expected}, got {got}. "
                              + explain_path(got, expected, tokens, parents, argmax))
        passed.append(f"{what}: {got}, right")
    chain = ([4, 5, 6, 7], [-1, 0, 1, 2], [5, 6, 7, 1])
    got = as_list(call(m, "verify_greedy", *chain), "verify_greedy")
    if got != [0, 1, 2, 3]:
        raise CheckFailed(f"verify_greedy on a chain (k=1) whose drafts all match: expected [0, 1, 2, 3], got {got}. "
                          + explain_path(got, [0, 1, 2, 3], *chain))
    passed.append("verify_greedy on a fully accepted chain: right")

    L, n = 3, 7
    entries = torch.stack([torch.arange(L + n + 2, dtype=torch.float64),
                           100 + torch.arange(L + n + 2, dtype=torch.float64)], dim=1)  # row r = [r, 100 + r]
    label = lambda r: f"committed entry {r}" if r < L else f"node {r - L}'s entry (row {r})"
    for path in ([0, 2, 6], [0, 1, 3], [0]):
        what = f"compact_cache(cache_len={L}, path={path}) on {L} committed + {n} tree rows (+2 unused)"
        expected = torch.cat([entries[:L], entries[[L + p for p in path]]])
        got = as_tensor(call(m, "compact_cache", entries.clone(), L, path), what, expected.shape)
        if not torch.equal(got.double(), expected):
            rows = got[:, 0].round().long().tolist()
            r = next(i for i in range(len(rows)) if rows[i] != int(expected[i, 0]))
            msg = (f"{what}: row {r} holds {label(rows[r])}, expected {label(int(expected[r, 0]))}. After "
                   f"verification, rows 0..{L - 1} stay, and row {L} + i holds the entry of path[i].")
            if rows == list(range(len(rows))):
                msg += (" The cache was not compacted: you kept the first len(path) tree rows, which are the accepted "
                        "nodes only when the path is 0, 1, 2, ... Gather the rows cache_len + node for each node of "
                        "the path.")
            elif r < L:
                msg += " The committed rows must not change."
            raise CheckFailed(msg)
        passed.append(f"{what}: right")
    return passed


# ---------------------------------------------------------------------------------------------------------------
# 6: early-exit pruning
# ---------------------------------------------------------------------------------------------------------------

def check_6(m: ModuleType) -> list[str]:
    passed = []
    tokens, parents = [7, 1, 2, 3, 4, 3, 4], [-1, 0, 0, 1, 1, 2, 2]  # root 7, top-2 [[1, 2], [3, 4]]
    probs = torch.full((7, 10), 0.01, dtype=torch.float64)
    probs[0, 1], probs[0, 2] = 0.5, 0.05     # at the root: node 1 likely, node 2 not
    probs[1, 3], probs[1, 4] = 0.1, 0.02     # at node 1: node 3 exactly at the threshold, node 4 below
    probs[2, 3], probs[2, 4] = 0.9, 0.9      # at node 2: likely, but node 2 itself is pruned
    probs[1, 1], probs[3, 3], probs[6, 7] = 0.0, 0.9, 0.0  # traps: own rows, and the root's token in the last row
    cases = [(0.1, [0, 1, 3]), (0.0, list(range(7))), (0.6, [0])]
    for threshold, expected in cases:
        what = (f"prune_tree(tokens={tokens}, parents={parents}, threshold={threshold}) "
                f"[probabilities in ex6_pruning.md]")
        got = as_list(call(m, "prune_tree", tokens, parents, probs.clone(), threshold), "prune_tree")
        if got == expected:
            passed.append(f"{what}: {got}, right")
            continue
        if sorted(set(got)) == expected:
            raise CheckFailed(f"{what}: return each surviving index once, in increasing order: expected "
                              f"{expected}, got {got}")
        msg = f"{what}: expected {expected}, got {got}. "
        if 0 not in got:
            raise CheckFailed(msg + "The root (node 0) is never pruned: it is the certain token (the main "
                                    "stream's argmax), and it has no parent to score it.")
        for i in range(1, 7):
            p_parent = float(probs[parents[i], tokens[i]])
            p_own = float(probs[i, tokens[i]])
            dropped_above = [a for a in tree_path(i, parents)[1:-1] if float(probs[parents[a], tokens[a]]) < threshold]
            if i in got and i not in expected:
                if dropped_above:
                    raise CheckFailed(msg + f"node {i} hangs under node {dropped_above[0]}, which is pruned: a pruned "
                                            f"node takes its whole subtree with it.")
                own = (f" (Read it in the parent's row, early_exit_probs[{parents[i]}], which predicts the token "
                       f"after the parent; row {i} is node {i}'s own prediction of the NEXT token.)"
                       if p_own >= threshold else "")
                raise CheckFailed(msg + f"node {i} (token {tokens[i]}) has probability {p_parent} < {threshold} at "
                                        f"its parent, node {parents[i]}: drop it.{own}")
            if i in expected and i not in got:
                if p_parent == threshold:
                    raise CheckFailed(msg + f"node {i} has probability {p_parent}, exactly the threshold, at its "
                                            f"parent: only nodes strictly below the threshold are dropped.")
                own = (f" You may be reading node {i}'s own row; the probability of its token is in its parent's "
                       f"row, early_exit_probs[{parents[i]}]." if p_own < threshold else "")
                raise CheckFailed(msg + f"node {i} (token {tokens[i]}) has probability {p_parent} >= {threshold} at "
                                        f"its parent and no pruned ancestor: keep it.{own}")
        raise CheckFailed(msg)
    return passed


# ---------------------------------------------------------------------------------------------------------------
# 7: the student's pieces inside the real decode loop, on a small random float64 model
# ---------------------------------------------------------------------------------------------------------------

def toy_model():
    """A random float64 GPT with γ = 3 streams on the top 2 of 3 blocks and a pruning adapter. A small
    vocabulary and large random weights make drafts get accepted now and then, and argmax ties impossible."""
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=6, block_size=64, n_layer=3, n_head=2, n_embd=16, n_streams=3, n_msa_layers=2,
                       prune_rank=4)
    model = GPT(config).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn_like(p) / math.sqrt(p.size(-1)))
            elif "ln_" not in name:
                p.copy_(0.3 * torch.randn_like(p))
    return model


def student_streams(model, students: dict[int, ModuleType], h: torch.Tensor, cache, n_streams: int) -> torch.Tensor:
    """The streams of the last accepted node through the MSA blocks, built from the student's init_streams and
    stream_attention (per head), with the model's own weights. h: (C,) its hidden state at the input of block
    N - N_s; the committed cache holds the main keys/values it may see (itself included). Returns (γ, C)."""
    cfg, tr = model.config, model.transformer
    C, nh = cfg.n_embd, cfg.n_head
    s = call(students[2], "init_streams", h, tr.stream_emb[:n_streams])  # Eq. 3
    for layer in range(cfg.first_msa_layer, cfg.n_layer):
        block = tr.h[layer]
        q, k, v = (t.view(n_streams, nh, C // nh) for t in block.attn.c_attn(block.ln_1(s)).split(C, dim=-1))
        heads = [call(students[2], "stream_attention", q[:, i], cache.k[layer][0, i, :cache.length],
                      cache.v[layer][0, i, :cache.length], k[:, i], v[:, i]) for i in range(nh)]
        s = s + block.attn.c_proj(torch.stack(heads, dim=1).reshape(n_streams, C))
        s = s + block.mlp(block.ln_2(s))
    return tr.ln_f(s)


@torch.inference_mode()
def student_decode(model, students: dict[int, ModuleType], prompt: list[int], max_new_tokens: int, gamma: int,
                   k: int, prune_threshold: float | None = None) -> tuple[list[int], dict[str, int]]:
    """Greedy Speculative Streaming where every piece of the method is the student's: stream initialisation and
    attention (2), tree drafting, mask and positions (4), verification and cache compaction (5), pruning (6).
    The model's blocks, LM head and KV cache do the rest. Returns the new tokens and what happened."""
    from model import KVCache
    cfg = model.config
    stats = dict(calls=1, accepted_drafts=0, compactions_off_chain=0, pruned_nodes=0)
    P = len(prompt)
    cache = KVCache(cfg, 1, P + max_new_tokens + sum(k ** d for d in range(gamma + 1)), dtype=torch.float64)
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    h = model.lower(model.embed(torch.tensor([prompt]), torch.arange(P)), causal, cache)
    main, _ = model.upper(h, causal, cache, n_streams=0)
    cache.commit()
    root = int(model.lm_head(main[0, -1]).argmax())
    streams = student_streams(model, students, h[0, -1], cache, gamma)
    out = [root]
    while len(out) < max_new_tokens:
        depth = min(gamma, max_new_tokens - len(out) - 1)
        topk = F.softmax(model.lm_head(streams[:depth]).float(), dim=-1).topk(k, dim=-1).indices.tolist()
        tokens, parents, depths = (as_list(x, "draft_tree") for x in call(students[4], "draft_tree", root, topk))
        L = cache.length
        mask = as_tensor(call(students[4], "tree_attention_mask", parents, L), "tree_attention_mask",
                         (len(tokens), L + len(tokens)), torch.bool)
        pos = torch.tensor(as_list(call(students[4], "position_ids", depths, L), "position_ids"))
        h = model.lower(model.embed(torch.tensor([tokens]), pos), mask, cache)
        if prune_threshold is not None and len(tokens) > 1:
            probs = F.softmax(model.early_exit_logits(h[0]), dim=-1)
            keep = as_list(call(students[6], "prune_tree", tokens, parents, probs, prune_threshold), "prune_tree")
            stats["pruned_nodes"] += len(tokens) - len(keep)
            for layer in range(cfg.first_msa_layer):  # drop the pruned nodes' lower-layer entries (compaction)
                compact_layer(students[5], cache, layer, keep)
            new_index = {old: new for new, old in enumerate(keep)}
            tokens, parents = [tokens[i] for i in keep], [new_index.get(parents[i], -1) for i in keep]
            h = h[:, keep]
            mask = call(students[4], "tree_attention_mask", parents, L)
        main, _ = model.upper(h, mask, cache, n_streams=0)
        argmax = model.lm_head(main[0]).argmax(dim=-1).tolist()
        stats["calls"] += 1
        path = as_list(call(students[5], "verify_greedy", tokens, parents, argmax), "verify_greedy")
        for layer in range(cfg.n_layer):
            compact_layer(students[5], cache, layer, path)
        cache.length, cache.pending = L + len(path), 0
        stats["accepted_drafts"] += len(path) - 1
        stats["compactions_off_chain"] += path != list(range(len(path)))
        streams = student_streams(model, students, h[0, path[-1]], cache, gamma)
        root = argmax[path[-1]]
        out += [tokens[i] for i in path[1:]] + [root]
    return out[:max_new_tokens], stats


def compact_layer(student: ModuleType, cache, layer: int, keep: list[int]):
    """Apply the student's compact_cache to one layer's keys and values (all heads as one row of D numbers)."""
    L = cache.length
    for buf in (cache.k[layer], cache.v[layer]):
        B, nh, N, hs = buf.shape
        rows = buf[0].transpose(0, 1).reshape(N, nh * hs)  # (N, nh*hs): one row per cache entry
        new = call(student, "compact_cache", rows, L, keep)
        new = as_tensor(new, "compact_cache", (L + len(keep), nh * hs))
        buf[0, :, :L + len(keep)] = new.view(-1, nh, hs).transpose(0, 1)


def check_7(students: dict[int, ModuleType]) -> list[str]:
    from generate import generate_autoregressive
    passed = []

    # Eq. 1-3: the student's mask in a naive full-mask forward gives the model's stream logits
    model = toy_model()
    cfg = model.config
    idx = torch.randint(0, cfg.vocab_size, (1, 7), generator=torch.Generator().manual_seed(7))
    T, G = idx.size(1), cfg.n_streams
    with torch.no_grad():
        out = model(idx)
        M = model.lower(model.embed(idx, torch.arange(T)))
        rows = torch.cat([M] + [M + model.transformer.stream_emb[j] for j in range(G)], dim=1)
        mask = as_tensor(call(students[1], "msa_mask", T, G), "msa_mask", ((1 + G) * T, (1 + G) * T), torch.bool)
        for layer in range(cfg.first_msa_layer, cfg.n_layer):
            rows, _ = model.transformer.h[layer](rows, None, mask)
        logits = model.lm_head(model.transformer.ln_f(rows)).view(1 + G, T, -1)
    if not (torch.allclose(logits[0], out.logits[0], atol=1e-9)
            and torch.allclose(logits[1:].transpose(0, 1), out.stream_logits[0], atol=1e-9)):
        raise CheckFailed("your msa_mask in a full-mask forward does not give the model's stream logits: run check 1")
    passed.append("msa_mask in a naive full-mask forward == the model's efficient MSA (main and stream logits)")

    # Eq. 5: the student's targets and loss on the model's logits == the model's own loss
    tokens = idx[0].tolist()
    targets = call(students[3], "eq5_targets", tokens, G, 2)
    with torch.no_grad():
        logits = torch.cat([out.logits[0, :, None], out.stream_logits[0]], dim=1)  # (T, 1+γ, V)
        loss = call(students[3], "eq5_loss", logits, targets, cfg.stream_loss_weight)
        shifted = F.pad(idx[:, 1:], (0, 1), value=-1)
        loss_mask = torch.arange(T)[None] + 1 >= 2  # targets on the 2 prompt tokens are not learned
        reference = model(idx, shifted, loss_mask=loss_mask).loss
    if abs(float(loss) - float(reference)) > 1e-9:
        raise CheckFailed(f"your eq5_targets + eq5_loss give {float(loss):.6f} on the model's logits, model.py's "
                          f"loss gives {float(reference):.6f}: run check 3")
    passed.append(f"eq5_targets + eq5_loss == model.py's Eq. 5 loss ({float(loss):.4f}) with a 2-token prompt")

    # the decode loop: lossless, with drafts accepted, caches compacted off the chain and nodes pruned
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in (1, 3, 5, 8, 12, 4)]
    totals = dict(calls=0, accepted_drafts=0, compactions_off_chain=0, pruned_nodes=0, tokens=0, greedy_calls=0)
    for gamma, k, threshold in [(3, 2, None), (2, 3, None), (3, 2, 0.15), (1, 1, None)]:
        for prompt in prompts:
            greedy = generate_autoregressive(model, prompt, 24).tokens
            got, stats = student_decode(model, students, prompt, 24, gamma, k, threshold)
            if got != greedy:
                first = next(i for i in range(len(greedy)) if i >= len(got) or got[i] != greedy[i])
                raise CheckFailed(
                    f"decoding with your pieces (γ={gamma}, k={k}, pruning {threshold}) is not lossless: prompt "
                    f"{prompt}, greedy output {greedy}, yours {got}; they first differ at new token {first}. Every "
                    f"check from 1 to 6 passes alone, so look at how the pieces fit: the mask and positions on top of "
                    f"the cache, the path's node indices, the compacted cache rows.")
            for key in stats:
                totals[key] += stats[key]
            totals["tokens"] += len(got)
            totals["greedy_calls"] += len(greedy)
    if totals["accepted_drafts"] == 0 or totals["compactions_off_chain"] == 0 or totals["pruned_nodes"] == 0:
        raise CheckFailed(f"the decode runs did not exercise every piece ({totals}): the toy model changed?")
    passed.append(f"speculative decoding with your pieces == greedy decoding on {4 * len(prompts)} runs "
                  f"(γ 1-3, k 1-3, with and without pruning): {totals['tokens']} tokens in {totals['calls']} forward "
                  f"calls instead of {totals['greedy_calls']}; {totals['accepted_drafts']} drafts accepted, "
                  f"{totals['compactions_off_chain']} compactions off the first branch, {totals['pruned_nodes']} "
                  f"nodes pruned")
    return passed


CHECKS: dict[int, Callable[[ModuleType], list[str]]] = {1: check_1, 2: check_2, 3: check_3, 4: check_4,
                                                        5: check_5, 6: check_6}


def run(number: int, module: str | Path | None = None, folder: str | Path = HERE) -> tuple[bool, str]:
    """Run check `number` (1-6 on one file, 7 on a folder with all six) and return (passed, report)."""
    title = f"Exercise {number}" if number in CHECKS else "Final check: your pieces inside the decode loop"
    lines = [title]
    try:
        if number in CHECKS:
            path = Path(module) if module else Path(folder) / EXERCISES[number]
            lines[0] += f" ({path})"
            passed = CHECKS[number](load_module(path))
        elif number == FINAL:
            students = {n: load_module(Path(folder) / name) for n, name in EXERCISES.items()}
            passed = check_7(students)
        else:
            raise CheckFailed(f"there is no exercise {number}: choose 1-{len(EXERCISES)}, {FINAL} or all")
    except CheckFailed as e:
        return False, "\n".join(lines + [f"  NOT YET: {e}"])
    return True, "\n".join(lines + [f"  ok  {p}" for p in passed] + ["  all good"])


def signatures(module: ModuleType) -> dict[str, inspect.Signature]:
    """The public functions of a module and their signatures (the tests compare stubs and solutions)."""
    return {name: inspect.signature(fn) for name, fn in vars(module).items()
            if inspect.isfunction(fn) and fn.__module__ == module.__name__ and not name.startswith("_")}
