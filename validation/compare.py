"""The first divergence of a candidate trace from a reference trace, and its likely cause (VALIDATING.md §4-5).

Records are compared call by call, in the order things are computed: non-finite numbers, cache_len, draft_topk,
the tree, early exit, the main stream node by node, path, committed, then the number of calls. Tokens, indices and
counts must be equal; log-probabilities and probabilities may differ by `atol`; entries of a top-k list whose
reference log-probabilities lie within `atol` of each other count as ties and may come in either order.
"""
from __future__ import annotations

import dataclasses
import math

from validation.causes import CAUSE
from validation.records import Trace, get, read_trace

LOGPROB_ATOL = 1e-5  # absolute tolerance on log-probabilities and probabilities; tokens must be equal
Found = tuple[str, int | None, object, object, str]  # field, node, reference value, candidate value, cause


@dataclasses.dataclass
class Divergence:
    """Where the candidate first differs from the reference, both values and the likely cause."""
    prompt: str | None
    call: int | None
    field: str
    node: int | None
    reference: object
    candidate: object
    cause: str
    lines: tuple = (None, None)  # the call record's line in the reference and in the candidate file

    def __str__(self) -> str:
        where = "header" if self.prompt is None else f"prompt {self.prompt}" + (
            "" if self.call is None else f", call {self.call} ({'prefill' if self.call == 0 else 'decode'})")
        node = "" if self.node is None else f", node {self.node}"
        lines = "" if None in self.lines else f" [reference line {self.lines[0]}, candidate line {self.lines[1]}]"
        return (f"FIRST DIVERGENCE at {where}, field {self.field}{node}{lines}\n  reference: {self.reference}\n"
                f"  candidate: {self.candidate}\n  likely cause: {self.cause}")


@dataclasses.dataclass
class CallPair:
    """The reference's and the candidate's record of one call, and what the checks need besides them."""
    ref: dict
    cand: dict
    atol: float
    skipped: set[str]         # optional fields the reference has and the candidate lacks (grows as they are seen)
    eos_id: int | None = None

    @property
    def call(self) -> int:
        return self.ref["call"]

    def present(self, field: str) -> bool:
        """Both records hold `field`; when only the reference does, the field is noted as skipped."""
        if get(self.ref, field) is None:
            return False
        if get(self.cand, field) is None:
            top = field.split(".")[0]
            self.skipped.add(top if get(self.cand, top) is None else field)
            return False
        return True


def close(a, b, atol: float) -> bool:
    return (a is None) == (b is None) and (a is None or abs(a - b) <= atol)


def first_index(a: list, b: list) -> int:
    """The first index where two lists differ (the shorter length when one is a prefix of the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def topk_mismatch(ref_tok, ref_lp, cand_tok, cand_lp, atol: float) -> str | None:
    """How two top-k lists differ: 'order' (the same tokens, each with its log-probability, in another order),
    'tokens' or 'logprobs'; None when they agree (a swap inside a tie within atol is no difference)."""
    if len(ref_tok) != len(cand_tok):
        return "tokens"
    has_lp = ref_lp is not None and cand_lp is not None
    what = None
    for r, (t, c) in enumerate(zip(ref_tok, cand_tok)):  # rank by rank
        if has_lp and not close(ref_lp[r], cand_lp[r], atol):
            what = "logprobs"
            break
        tied = ref_lp is not None and any(t2 == c and abs(ref_lp[r2] - ref_lp[r]) <= atol
                                          for r2, t2 in enumerate(ref_tok))
        if t != c and not tied:
            what = "tokens"
            break
    if what and sorted(ref_tok) == sorted(cand_tok):
        by_token = dict(zip(cand_tok, cand_lp)) if has_lp else {}
        if not has_lp or all(close(lp, by_token[t], atol) for t, lp in zip(ref_tok, ref_lp)):
            return "order"
    return what


def check_finite(c: CallPair) -> Found | None:
    """The first NaN or infinity among the candidate's numbers (where the reference's number is finite)."""
    for field in ("draft_topk.logprobs", "early_exit.probs", "main_top5.logprobs"):
        rows, ref_rows = get(c.cand, field) or [], get(c.ref, field) or []
        for i, row in enumerate(rows):
            ref_row = ref_rows[i] if i < len(ref_rows) else None
            values = row if isinstance(row, list) else [row]
            ref_values = ref_row if isinstance(ref_row, list) else [ref_row]
            for x, r in zip(values, ref_values + [None] * len(values)):
                if x is not None and not math.isfinite(x) and (r is None or math.isfinite(r)):
                    what = "NaN" if math.isnan(x) else "+inf" if x > 0 else "-inf"
                    depth = field.startswith("draft")
                    where = f" at depth {i + 1}" if depth else f" at node {i}"
                    cause = CAUSE["nonfinite"].format(field=field, what=what, where=where)
                    return f"{field} ({what})", None if depth else i, ref_row, row, cause
    return None


def check_cache_len(c: CallPair) -> Found | None:
    if c.present("cache_len") and c.ref["cache_len"] != c.cand["cache_len"]:
        return "cache_len", None, c.ref["cache_len"], c.cand["cache_len"], CAUSE["cache_len"]
    return None


def check_draft_topk(c: CallPair) -> Found | None:
    """Stream j's top-k at the node the tree was drafted from, depth by depth."""
    if not c.present("draft_topk.tokens"):
        return None
    r, k, has_lp = c.ref["draft_topk"], c.cand["draft_topk"], c.present("draft_topk.logprobs")
    if len(r["tokens"]) != len(k["tokens"]):
        return "draft_topk.tokens", None, r["tokens"], k["tokens"], CAUSE["depth"]
    for j in range(len(r["tokens"])):
        r_lp, k_lp = (r["logprobs"][j], k["logprobs"][j]) if has_lp else (None, None)
        what = topk_mismatch(r["tokens"][j], r_lp, k["tokens"][j], k_lp, c.atol)
        if what:
            if what == "order":
                cause = CAUSE["order"]
            elif c.call > 1:  # call 1 agreed: only the streams of tree nodes differ
                cause = CAUSE["tree_streams"]
            else:
                cause = CAUSE["streams"] if j == 0 else CAUSE["stream_deeper"].format(d=j + 1)
            field = f"draft_topk.{'tokens' if what == 'order' else what} (depth {j + 1})"
            return field, None, (r["tokens"][j], r_lp), (k["tokens"][j], k_lp), cause
    return None


def depths_from_parents(parents: list[int]) -> list[int] | None:
    """Each node's depth, or None when a parent does not come before its child."""
    depths = []
    for i, p in enumerate(parents):
        if p >= i:
            return None
        depths.append(0 if p < 0 else depths[p] + 1)
    return depths


def reordered(ref_tree: dict, cand_tree: dict) -> bool:
    """Both trees hold the same tokens at every depth, in another order."""
    rd, cd = depths_from_parents(ref_tree["parents"]), depths_from_parents(cand_tree["parents"])
    if rd is None or cd is None or sorted(rd) != sorted(cd):
        return False

    def level(tree: dict, depths: list[int], d: int) -> list[int]:
        return sorted(t for t, e in zip(tree["tokens"], depths) if e == d)
    return all(level(ref_tree, rd, d) == level(cand_tree, cd, d) for d in set(rd))


def check_tree(c: CallPair) -> Found | None:
    """The drafted tree: tokens, parents, depths, positions."""
    rt, ct = c.ref["tree"], c.cand["tree"]
    for field in ("tokens", "parents", "depths", "positions"):
        if field in ("depths", "positions") and not c.present(f"tree.{field}"):
            continue
        if rt[field] == ct[field]:
            continue
        node = first_index(rt[field], ct[field])
        if c.call == 0:
            cause = CAUSE["prompt" if field == "tokens" else "prompt_chain"]
        elif field == "positions":
            cause = CAUSE["positions"]
        elif field == "parents":
            cause = CAUSE["parents"]
        elif field == "tokens" and node == 0:
            cause = CAUSE["root"]
        elif reordered(rt, ct):
            cause = CAUSE["order"]
        else:
            cause = CAUSE["tree_unknown" if "draft_topk" in c.skipped else "tree"]
        return f"tree.{field}", node, rt[field], ct[field], cause
    return None


def check_early_exit(c: CallPair) -> Found | None:
    """Pruning: each node's early-exit probability at its parent, then the survivors."""
    if c.present("early_exit.probs"):
        r, k = c.ref["early_exit"]["probs"], c.cand["early_exit"]["probs"]
        node = next((i for i, (a, b) in enumerate(zip(r, k)) if not close(a, b, c.atol)), None)
        if node is not None:
            return "early_exit.probs", node, r[node], k[node], CAUSE["early_exit"]
    if c.present("early_exit.survivors") and c.ref["early_exit"]["survivors"] != c.cand["early_exit"]["survivors"]:
        return ("early_exit.survivors", None, c.ref["early_exit"]["survivors"], c.cand["early_exit"]["survivors"],
                CAUSE["survivors"])
    return None


def main_cause(call: int, node: int) -> str:
    return CAUSE["prefill"] if call == 0 else CAUSE["main_root" if node == 0 else "main_node"]


def check_main(c: CallPair) -> Found | None:
    """The main stream node by node: argmax, then top-5 tokens and log-probabilities."""
    has_argmax, has_top, has_lp = c.present("main_argmax"), c.present("main_top5.tokens"), \
        c.present("main_top5.logprobs")
    ref_lp = get(c.ref, "main_top5.logprobs")  # for the near-tie note, even when the candidate has none
    for node in range(len(c.ref["tree"]["tokens"])):
        if has_argmax:
            ra, ca = c.ref["main_argmax"][node], c.cand["main_argmax"][node]
            if (ra is None) != (ca is None):
                return "main_argmax", node, ra, ca, CAUSE["pruned"]
            if ra != ca:
                tie = ref_lp is not None and ref_lp[node] is not None and ref_lp[node][0] - ref_lp[node][1] <= c.atol
                return "main_argmax", node, ra, ca, main_cause(c.call, node) + (CAUSE["near_tie"] if tie else "")
        if has_top:
            r_tok, k_tok = c.ref["main_top5"]["tokens"][node], c.cand["main_top5"]["tokens"][node]
            r_lp, k_lp = (ref_lp[node], c.cand["main_top5"]["logprobs"][node]) if has_lp else (None, None)
            if (r_tok is None) != (k_tok is None):
                return "main_top5.tokens", node, r_tok, k_tok, CAUSE["pruned"]
            what = r_tok is not None and topk_mismatch(r_tok, r_lp, k_tok, k_lp, c.atol)
            if what:
                cause = CAUSE["order"] if what == "order" else main_cause(c.call, node)
                return f"main_top5.{'tokens' if what == 'order' else what}", node, (r_tok, r_lp), (k_tok, k_lp), cause
    return None


def unmatched_node(record: dict) -> int | None:
    """The first node of a record's path whose token is not the record's own main argmax at its parent."""
    argmax, tokens = record.get("main_argmax"), record["tree"]["tokens"]
    if argmax is None:
        return None
    for parent, node in zip(record["path"], record["path"][1:]):
        if argmax[parent] is not None and tokens[node] != argmax[parent]:
            return node
    return None


def check_path(c: CallPair) -> Found | None:
    """The accepted path (call 0: every prompt node)."""
    rp, cp = c.ref["path"], c.cand["path"]
    if rp == cp:
        return None
    if c.call == 0:
        return "path", None, rp, cp, CAUSE["prompt_chain"] + "; path = every prompt node"
    has_argmax, own = c.present("main_argmax"), unmatched_node(c.cand)
    if own is not None:
        cause = CAUSE["path_longer"].format(own=f" (node {own}, by the candidate's own main_argmax)")
    elif len(cp) > len(rp) and cp[:len(rp)] == rp:
        cause = CAUSE["path_longer"].format(own="")
    elif not has_argmax:
        cause = CAUSE["path_unknown"]
    elif len(cp) < len(rp) and rp[:len(cp)] == cp:
        cause = CAUSE["path_shorter"]
    else:
        cause = CAUSE["path_other"]
    return "path", None, rp, cp, cause


def check_committed(c: CallPair) -> Found | None:
    """The tokens the call commits."""
    r, k, eos = c.ref["committed"], c.cand["committed"], c.eos_id
    if r == k:
        return None
    ends_with_eos = eos is not None and r[-1:] == [eos]
    if r and k == r[:-1]:
        cause = CAUSE["eos_dropped" if ends_with_eos else "bonus"]
    elif len(k) > len(r) and k[:len(r)] == r:
        cause = CAUSE["eos_passed" if ends_with_eos else "budget"]
    else:
        cause = CAUSE["committed"]
    return "committed", None, r, k, cause


CHECKS = (check_finite, check_cache_len, check_draft_topk, check_tree, check_early_exit, check_main, check_path,
          check_committed)


def compare_call(c: CallPair) -> Found | None:
    """The first difference between two records of the same call, in the order things are computed, or None."""
    for check in CHECKS:
        found = check(c)
        if found:
            return found
    return None


def compare_headers(ref: Trace, cand: Trace, notes: list[str]) -> Divergence | None:
    """Settings and weights must be the reference's; other header differences are notes."""
    rs, cs = ref.header["settings"], cand.header["settings"]
    for key in ("gamma", "k", "tree_cap", "prune_threshold", "decoding"):
        if key in cs and rs.get(key) != cs.get(key):
            return Divergence(None, None, f"settings.{key}", None, rs.get(key), cs.get(key), CAUSE["settings"])
    if cand.header.get("model_sha256") and cand.header["model_sha256"] != ref.header.get("model_sha256"):
        return Divergence(None, None, "model_sha256", None, ref.header.get("model_sha256"),
                          cand.header["model_sha256"], CAUSE["weights"])
    for key in ("dtype", "stream_pass"):
        r_val, c_val = ref.header.get(key, rs.get(key)), cand.header.get(key, cs.get(key))
        if c_val is not None and r_val != c_val:
            notes.append(f"{key}: reference {r_val}, candidate {c_val} (not a divergence by itself)")
    return None


def stop_reason(ref_calls: list[dict], eos_id: int | None, prompt: dict | None) -> str:
    """Why the reference stopped decoding this prompt, for the calls_* causes."""
    last = ref_calls[-1]["committed"]
    if eos_id is not None and last[-1:] == [eos_id]:
        return "its last call commits EOS, kept, and decoding stops there"
    budget = "" if prompt is None else f" = {prompt.get('max_new_tokens')}"
    return f"it stops when the output holds max_new_tokens{budget} tokens"


def compare_prompt(ref: Trace, cand: Trace, pid: str, atol: float, skipped: set[str]) -> Divergence | None:
    """The first divergence in one prompt's records: its prompt record, its calls, their number."""
    ref_calls, cand_calls = ref.calls[pid], cand.calls.get(pid, [])
    r_prompt, c_prompt = ref.prompts.get(pid), cand.prompts.get(pid)
    for key in ("prompt_ids", "max_new_tokens", "eos_id"):
        if r_prompt and c_prompt and key in c_prompt and c_prompt[key] != r_prompt.get(key):
            return Divergence(pid, None, key, None, r_prompt.get(key), c_prompt[key], CAUSE["prompt_field"])
    if not cand_calls:
        others = f"; it has records for {sorted(cand.calls)[:5]}" if cand.calls else ""
        return Divergence(pid, None, "calls", None, f"{len(ref_calls)} calls", "no calls",
                          CAUSE["no_calls"].format(others=others))
    eos_id = (r_prompt or {}).get("eos_id")
    for r, k in zip(ref_calls, cand_calls):
        lines = (ref.lines[pid, r["call"]], cand.lines[pid, k["call"]])
        if r["call"] != k["call"]:
            return Divergence(pid, r["call"], "call", None, r["call"], k["call"], CAUSE["call_index"], lines)
        found = compare_call(CallPair(r, k, atol, skipped, eos_id))
        if found:
            return Divergence(pid, r["call"], *found, lines)
    if len(ref_calls) != len(cand_calls):
        stop = stop_reason(ref_calls, eos_id, r_prompt)
        cause = CAUSE["calls_fewer" if len(cand_calls) < len(ref_calls) else "calls_more"].format(stop=stop)
        return Divergence(pid, min(len(ref_calls), len(cand_calls)), "calls", None, f"{len(ref_calls)} calls",
                          f"{len(cand_calls)} calls", cause)
    return None


def compare_traces(reference: str, candidate: str, atol: float = LOGPROB_ATOL
                   ) -> tuple[Divergence | None, list[str], list[str]]:
    """The first divergence of `candidate` from `reference` (None if none), the optional fields the candidate
    omits (their checks were skipped), and notes (differences that are no divergence)."""
    ref, cand = read_trace(reference), read_trace(candidate)
    skipped, notes = set(), []
    found = compare_headers(ref, cand, notes)
    if found:
        return found, [], notes
    for pid in ref.calls:
        found = compare_prompt(ref, cand, pid, atol, skipped)
        if found:
            return found, sorted(skipped), notes
    extra = sorted(set(cand.calls) - set(ref.calls))
    if extra:
        notes.append(f"the candidate has prompts the reference lacks (ignored): {extra[:5]}")
    return None, sorted(skipped), notes


def compare_command(reference: str, candidate: str, atol: float) -> int:
    """Print the comparison; exit status 0 when the candidate agrees, 1 at a divergence."""
    divergence, skipped, notes = compare_traces(reference, candidate, atol)
    for note in notes:
        print(f"note: {note}")
    if skipped:
        print(f"skipped (the candidate omits them): {', '.join(skipped)}")
    if divergence:
        print(divergence)
        return 1
    calls = read_trace(reference).calls
    print(f"OK: {sum(map(len, calls.values()))} calls of {len(calls)} prompts agree (tokens exactly, "
          f"log-probabilities within {atol:g})")
    return 0
