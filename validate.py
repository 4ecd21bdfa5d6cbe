"""Validate another implementation of Speculative Streaming against this one (the guide: VALIDATING.md).

    python validate.py export CHECKPOINT OUT_DIR          # portable weights: model.safetensors, config.json, vocabulary
    python validate.py trace --model DIR --prompts FILE --out FILE [--k 2 --tree-cap N --prune-threshold P]
    python validate.py compare REFERENCE CANDIDATE        # the first divergence and its likely cause; exit 1 if any
    python validate.py outputs --model DIR --answers FILE # final outputs only (Spec-Bench-like records)
    python validate.py minimal --model DIR --prompts FILE --out FILE   # specstream_minimal.py as "the other one"
    python validate.py reference                          # retrain the small toy model, rewrite reference/

A golden trace is JSON lines (schema "specstream-trace", version 1, documented in VALIDATING.md): a header, one
"prompt" record per prompt, then one "call" record per model call, prefill included (call 0).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys

import torch
from torch.nn import functional as F

from checkpoint import export_portable, load_portable, read_portable
from model import GPT

SCHEMA, VERSION = "specstream-trace", 1
LOGPROB_ATOL = 1e-5  # absolute tolerance on log-probabilities and probabilities; tokens must be equal
TOP = 5              # main-stream top-k kept per node
TIE_BREAKING = ("argmax: the lowest token id among exact ties (torch.argmax); top-k lists: sorted by probability, "
                "descending; entries within the tolerance of each other count as ties in compare; capped trees: "
                "the `cap` nodes of highest path probability, ties broken by breadth-first index")
REQUIRED = ("prompt", "call", "tree.tokens", "tree.parents", "path", "committed")

# ------------------------------------------------------------------------------------------------------------
# golden traces
# ------------------------------------------------------------------------------------------------------------


def export(checkpoint: str, out_dir: str, toy_vocabulary: bool = False) -> str:
    """`validate.py export`: the portable format (checkpoint.export_portable); a checkpoint without a vocabulary
    gets train_toy.py's word list with toy_vocabulary=True."""
    vocabulary = None
    if toy_vocabulary:
        from train_toy import vocabulary as toy_words
        vocabulary = toy_words()
    return export_portable(checkpoint, out_dir, vocabulary)


def model_hash(model_dir: str) -> str:
    """sha256 of model.safetensors: the same file gives the same hash in any implementation (sha256sum)."""
    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_prompts(path: str) -> list[dict]:
    """Prompts file: JSON lines {"id": str, "prompt_ids": [int], "max_new_tokens": int, "eos_id": int | null}."""
    prompts = [json.loads(line) for line in open(path) if line.strip()]
    for p in prompts:
        missing = {"id", "prompt_ids", "max_new_tokens"} - set(p)
        if missing:
            raise ValueError(f"{path}: prompt record {p} lacks {sorted(missing)}")
    return prompts


def header(model_dir: str, settings: dict, dtype: str, implementation: str) -> dict:
    return dict(type="header", schema=SCHEMA, version=VERSION, implementation=implementation,
                model_sha256=model_hash(model_dir), settings=settings, dtype=dtype, tie_breaking=TIE_BREAKING)


def rounded(values) -> list:
    return [round(float(v), 8) for v in values]


def topk_lists(logprobs: torch.Tensor, k: int) -> tuple[list, list]:
    top = logprobs.topk(min(k, logprobs.size(-1)), dim=-1)
    return top.indices.tolist(), [rounded(row) for row in top.values.tolist()]


def call_record(prompt_id: str, call: int, step) -> dict:
    """One model call (a generate.StepTrace) as a trace record. Per-node lists run over the *drafted* tree,
    breadth first; nodes removed by pruning get null; `path` indexes the drafted tree too."""
    d, n = step.drafted, len(step.drafted)
    argmax, top_tokens, top_logprobs = [None] * n, [None] * n, [None] * n
    tokens, logprobs = topk_lists(F.log_softmax(step.main_logits.double(), dim=-1), TOP)
    for i, node in enumerate(step.kept):
        argmax[node], top_tokens[node], top_logprobs[node] = step.main_argmax[i], tokens[i], logprobs[i]
    record = dict(type="call", prompt=prompt_id, call=call, cache_len=step.cache_len,
                  tree=dict(tokens=d.tokens.tolist(), parents=d.parents.tolist(), depths=d.depths.tolist(),
                            positions=step.positions.tolist()),
                  draft_topk=None, early_exit=None, main_argmax=argmax,
                  main_top5=dict(tokens=top_tokens, logprobs=top_logprobs),
                  path=[step.kept[i] for i in step.path], committed=list(step.committed))
    if step.draft_topk is not None:
        tok, prob = step.draft_topk
        record["draft_topk"] = dict(tokens=tok.tolist(), logprobs=[rounded(r) for r in prob.double().log().tolist()])
    if step.early_exit_probs is not None:
        at_parent = step.early_exit_probs[d.parents.clamp(min=0), d.tokens].tolist()
        record["early_exit"] = dict(probs=[None] + rounded(at_parent[1:]), survivors=list(step.kept))
    return record


def trace_prompt(model: GPT, prompt: dict, settings: dict) -> list[dict]:
    """Run the real generate_speculative with trace=True on one prompt: its call records, prefill first."""
    from generate import generate_speculative
    result = generate_speculative(model, prompt["prompt_ids"], prompt["max_new_tokens"], gamma=settings["gamma"],
                                  k=settings["k"], tree_cap=settings["tree_cap"],
                                  prune_threshold=settings["prune_threshold"], eos_id=prompt.get("eos_id"),
                                  trace=True, stream_pass=settings["stream_pass"])
    if result.prefill_trace is None:  # max_new_tokens = 0: no call at all
        return []
    steps = [result.prefill_trace] + result.trace
    return [call_record(prompt["id"], i, step) for i, step in enumerate(steps)]


def load_model(model_dir: str, dtype: str = "float64") -> GPT:
    model = load_portable(model_dir).eval()
    return model.to(getattr(torch, dtype))


def trace(model_dir: str, prompts_path: str, out: str, k: int = 1, tree_cap: int | None = None,
          prune_threshold: float | None = None, gamma: int | None = None, stream_pass: str = "tree",
          dtype: str = "float64") -> str:
    """Write the golden trace of every prompt in `prompts_path` to `out`."""
    from tqdm import tqdm
    model = load_model(model_dir, dtype)
    settings = dict(gamma=gamma or model.config.n_drafts, k=k, tree_cap=tree_cap, prune_threshold=prune_threshold,
                    stream_pass=stream_pass, decoding="greedy")
    prompts = read_prompts(prompts_path)
    records = [header(model_dir, settings, dtype, "specstream generate.generate_speculative")]
    for p in tqdm(prompts, desc="trace", disable=len(prompts) < 4):
        records.append(dict(type="prompt", prompt=p["id"], prompt_ids=p["prompt_ids"],
                            max_new_tokens=p["max_new_tokens"], eos_id=p.get("eos_id")))
        records += trace_prompt(model, p, settings)
    write_jsonl(out, records)
    return out


def write_jsonl(path: str, records: list[dict]):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


# ------------------------------------------------------------------------------------------------------------
# compare
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Divergence:
    prompt: str | None
    call: int | None
    field: str
    node: int | None
    reference: object
    candidate: object
    cause: str

    def __str__(self) -> str:
        where = "header" if self.prompt is None else f"prompt {self.prompt}" + (
            "" if self.call is None else f", call {self.call} ({'prefill' if self.call == 0 else 'decode'})")
        node = "" if self.node is None else f", node {self.node}"
        return (f"FIRST DIVERGENCE at {where}, field {self.field}{node}\n  reference: {self.reference}\n"
                f"  candidate: {self.candidate}\n  likely cause: {self.cause}")


class TraceError(ValueError):
    """A trace file that cannot be read as the schema says."""


def read_trace(path: str) -> tuple[dict, dict[str, dict], dict[str, list[dict]]]:
    """Header, prompt records by id, call records by prompt id (sorted by call index)."""
    try:
        records = [json.loads(line) for line in open(path) if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise TraceError(f"{path}: cannot read it as JSON lines ({e})") from e
    if not records or records[0].get("type") != "header" or records[0].get("schema") != SCHEMA:
        raise TraceError(f"{path}: the first line must be the header {{\"type\": \"header\", \"schema\": \"{SCHEMA}\", "
                         f"\"version\": {VERSION}, ...}}")
    if records[0].get("version") != VERSION:
        raise TraceError(f"{path}: schema version {records[0].get('version')}, this tool reads version {VERSION}")
    prompts, calls = {}, {}
    for r in records[1:]:
        if r.get("type") == "prompt":
            prompts[r["prompt"]] = r
        elif r.get("type") == "call":
            missing = [f for f in REQUIRED if get(r, f) is None]
            if missing:
                raise TraceError(f"{path}: call record {r.get('prompt')}/{r.get('call')} lacks required {missing}")
            calls.setdefault(r["prompt"], []).append(r)
    for rs in calls.values():
        rs.sort(key=lambda r: r["call"])
    return records[0], prompts, calls


def get(record: dict, field: str):
    """record["a"]["b"] for field "a.b"; None when absent."""
    for key in field.split("."):
        record = record.get(key) if isinstance(record, dict) else None
    return record


def close(a, b, atol: float) -> bool:
    return (a is None) == (b is None) and (a is None or abs(a - b) <= atol)


def topk_mismatch(ref_tok, ref_lp, cand_tok, cand_lp, atol) -> str | None:
    """'tokens' or 'logprobs' where two top-k lists differ (a swap inside a tie within atol is no difference)."""
    if len(ref_tok) != len(cand_tok):
        return "tokens"
    for r, (t, c) in enumerate(zip(ref_tok, cand_tok)):  # rank by rank: the first difference is reported
        if ref_lp is not None and cand_lp is not None and not close(ref_lp[r], cand_lp[r], atol):
            return "logprobs"
        tied = ref_lp is not None and any(t2 == c and abs(ref_lp[r2] - ref_lp[r]) <= atol
                                          for r2, t2 in enumerate(ref_tok))
        if t != c and not tied:
            return "tokens"
    return None


CAUSE = dict(
    cache_len="the cache must hold the prompt and every committed token except the last one (the root, fed in this "
              "call); a call adds exactly its accepted path (root included) to the cache",
    stream_deeper="stream top-k differ from depth {d} on while shallower depths agree: check that stream j attends to "
                  "streams <= j only (Eq. 2) and that stream j drafts x[t+1+j] (depth j)",
    stream_1="stream 1 already differs (these top-k come from the streams of the previous call's last accepted node): "
             "check that stream j attends to the main keys up to its own node and to streams 1..j of the same node "
             "only (a stream that sees later streams changes stream 1 too), the stream start S_j = M + P_j at the "
             "input of block N-N_s (Eq. 3), and the shared final LayerNorm and LM head",
    root="node 0 (the root) must be the main argmax at the previous call's last accepted node, i.e. the last "
         "committed token",
    tree="the tree differs although the stream top-k agree: the full tree is 1 + k + ... + k^depth nodes, breadth "
         "first, the depth-j nodes being stream j's top-k (in rank order) under every depth-(j-1) node; a capped "
         "tree keeps the `cap` nodes of highest path probability; depth = min(γ, max_new_tokens - committed - 1)",
    tree_unknown="the tree differs; the candidate did not record draft_topk, so check the stream top-k first, then "
                 "the tree construction",
    positions="positions differ: position = cache length + depth (the root sits at the cache length)",
    early_exit="early-exit probabilities differ: z~ = lm_head(ln_f(h + up(down(h)))) at the input of block N-N_s, "
               "computed with the tree mask; a node's value is its token's probability under its parent's z~. If "
               "they agreed in earlier calls, the lower layers see another cache: the pruned nodes' lower-layer "
               "keys/values must be dropped before the MSA layers, and every layer must keep exactly the accepted "
               "path's entries",
    survivors="survivors differ with equal early-exit probabilities: a node is dropped with its subtree when its "
              "probability at its parent is below the threshold; the root is never pruned",
    pruned="a node is pruned (null) in one run only: a node is dropped with its subtree when its token's "
           "early-exit probability at its parent is below the threshold; the root is never pruned",
    depth="the number of drafted depths differs: depth = min(γ, max_new_tokens - committed - 1)",
    prefill="the main stream differs in the prefill: a plain causal GPT-2 forward over the prompt (Conv1D weights "
            "transposed, LayerNorm eps 1e-5, tanh GELU, LM head tied to wte, positions 0..P-1)",
    main_root="the main stream differs already at the root although its token and position agree: the KV cache "
              "holds other entries. Check cache compaction after acceptance: keep exactly the accepted path's "
              "entries, in path order, right after the committed ones, in every layer (rejected and pruned nodes' "
              "entries must go)",
    main_node="the main stream differs at a non-root node while the root agrees: check the tree attention mask (a "
              "node sees the whole cache, its ancestors and itself, never its siblings or their subtrees), and "
              "that streams never enter the main stream's keys/values",
    near_tie=" (the reference's top two are within the tolerance here: a near tie; run both in float64)",
    path_shorter="accepted path shorter with equal argmax: verification compares a child with the argmax at its "
                 "parent (a child is accepted iff its token equals the main argmax at its parent node)",
    path_other="accepted path differs with equal argmax: walk from the root and accept a child iff its token equals "
               "the main argmax at its parent; take the longest such path",
    path_unknown="accepted path differs; the candidate did not record main_argmax, so check the main stream "
                 "(record it to find out) and verification",
    bonus="the bonus token is missing: a call commits the accepted drafts plus the main argmax at the last "
          "accepted node (the new root, also called the bonus token)",
    committed="committed = the tokens of path[1:] + the main argmax at path[-1] (prefill: that argmax alone), cut "
              "after EOS and at max_new_tokens; each token is committed once",
    call_index="call records must be numbered 0, 1, 2, ... per prompt, call 0 being the prefill (the prompt as a "
               "chain), with no call left out",
    calls_fewer="the candidate made fewer calls: it stopped early (EOS kept and then stop; stop exactly at "
                "max_new_tokens)",
    calls_more="the candidate made more calls: it did not stop at EOS or at max_new_tokens",
)


Found = tuple[str, int | None, object, object, str]  # field, node, reference value, candidate value, cause


def first_index(a: list, b: list) -> int:
    """The first index where two lists differ (the shorter length when one is a prefix of the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main_cause(call: int, node: int) -> str:
    return CAUSE["prefill"] if call == 0 else CAUSE["main_root" if node == 0 else "main_node"]


def compare_call(ref: dict, cand: dict, atol: float, skipped: set[str]) -> Found | None:
    """The first difference between two records of the same call, in the order things are computed, or None.
    Optional fields the reference has and the candidate lacks are added to `skipped`."""
    def present(field: str) -> bool:
        if get(ref, field) is None:
            return False
        if get(cand, field) is None:
            top = field.split(".")[0]
            skipped.add(top if get(cand, top) is None else field)
            return False
        return True

    if present("cache_len") and ref["cache_len"] != cand["cache_len"]:
        return "cache_len", None, ref["cache_len"], cand["cache_len"], CAUSE["cache_len"]
    if present("draft_topk.tokens"):
        r, c, has_lp = ref["draft_topk"], cand["draft_topk"], present("draft_topk.logprobs")
        if len(r["tokens"]) != len(c["tokens"]):
            return "draft_topk.tokens", None, r["tokens"], c["tokens"], CAUSE["depth"]
        for j in range(len(r["tokens"])):
            r_lp, c_lp = (r["logprobs"][j], c["logprobs"][j]) if has_lp else (None, None)
            what = topk_mismatch(r["tokens"][j], r_lp, c["tokens"][j], c_lp, atol)
            if what:
                cause = CAUSE["stream_1"] if j == 0 else CAUSE["stream_deeper"].format(d=j + 1)
                return f"draft_topk.{what} (depth {j + 1})", None, (r["tokens"][j], r_lp), (c["tokens"][j], c_lp), cause
    rt, ct = ref["tree"], cand["tree"]
    for field in ("tokens", "parents", "depths", "positions"):
        if field in ("depths", "positions") and not present(f"tree.{field}"):
            continue
        if rt[field] != ct[field]:
            node = first_index(rt[field], ct[field])
            if field == "positions":
                cause = CAUSE["positions"]
            elif field == "tokens" and node == 0:
                cause = CAUSE["root"]
            else:
                cause = CAUSE["tree_unknown" if "draft_topk" in skipped else "tree"]
            return f"tree.{field}", node, rt[field], ct[field], cause
    if present("early_exit.probs"):
        r, c = ref["early_exit"]["probs"], cand["early_exit"]["probs"]
        node = next((i for i, (a, b) in enumerate(zip(r, c)) if not close(a, b, atol)), None)
        if node is not None:
            return "early_exit.probs", node, r[node], c[node], CAUSE["early_exit"]
    if present("early_exit.survivors") and ref["early_exit"]["survivors"] != cand["early_exit"]["survivors"]:
        return "early_exit.survivors", None, ref["early_exit"]["survivors"], cand["early_exit"]["survivors"], \
            CAUSE["survivors"]
    has_argmax, has_top, has_lp = present("main_argmax"), present("main_top5.tokens"), present("main_top5.logprobs")
    ref_lp = get(ref, "main_top5.logprobs")  # for the near-tie note, even when the candidate has none
    for node in range(len(rt["tokens"])):
        if has_argmax:
            ra, ca = ref["main_argmax"][node], cand["main_argmax"][node]
            if (ra is None) != (ca is None):
                return "main_argmax", node, ra, ca, CAUSE["pruned"]
            if ra != ca:
                tie = ref_lp is not None and ref_lp[node] is not None and ref_lp[node][0] - ref_lp[node][1] <= atol
                return "main_argmax", node, ra, ca, main_cause(ref["call"], node) + (CAUSE["near_tie"] if tie else "")
        if has_top:
            r_tok, c_tok = ref["main_top5"]["tokens"][node], cand["main_top5"]["tokens"][node]
            r_lp, c_lp = (ref_lp[node], cand["main_top5"]["logprobs"][node]) if has_lp else (None, None)
            if (r_tok is None) != (c_tok is None):
                return "main_top5.tokens", node, r_tok, c_tok, CAUSE["pruned"]
            what = r_tok is not None and topk_mismatch(r_tok, r_lp, c_tok, c_lp, atol)
            if what:
                return f"main_top5.{what}", node, (r_tok, r_lp), (c_tok, c_lp), main_cause(ref["call"], node)
    if ref["path"] != cand["path"]:
        shorter = len(cand["path"]) < len(ref["path"]) and ref["path"][:len(cand["path"])] == cand["path"]
        cause = CAUSE["path_unknown" if not has_argmax else "path_shorter" if shorter else "path_other"]
        return "path", None, ref["path"], cand["path"], cause
    if ref["committed"] != cand["committed"]:
        bonus = cand["committed"] == ref["committed"][:-1]
        return "committed", None, ref["committed"], cand["committed"], CAUSE["bonus" if bonus else "committed"]
    return None


def compare_traces(reference: str, candidate: str, atol: float = LOGPROB_ATOL
                   ) -> tuple[Divergence | None, list[str], list[str]]:
    """The first divergence of `candidate` from `reference` (None if none), the optional fields the candidate
    omits (their checks were skipped), and notes (differences that are no divergence)."""
    r_head, r_prompts, r_calls = read_trace(reference)
    c_head, c_prompts, c_calls = read_trace(candidate)
    skipped, notes = set(), []
    rs, cs = r_head.get("settings", {}), c_head.get("settings", {})
    for key in ("gamma", "k", "tree_cap", "prune_threshold", "decoding"):
        if key in cs and rs.get(key) != cs.get(key):
            return Divergence(None, None, f"settings.{key}", None, rs.get(key), cs.get(key),
                              "run the candidate with the reference's settings (see the header)"), [], notes
    if c_head.get("model_sha256") and c_head["model_sha256"] != r_head.get("model_sha256"):
        return Divergence(None, None, "model_sha256", None, r_head.get("model_sha256"), c_head["model_sha256"],
                          "different weights: load the reference's model.safetensors unchanged"), [], notes
    for key in ("dtype", "stream_pass"):
        r_val, c_val = r_head.get(key, rs.get(key)), c_head.get(key, cs.get(key))
        if c_val is not None and r_val != c_val:
            notes.append(f"{key}: reference {r_val}, candidate {c_val} (not a divergence by itself)")
    for pid, ref_calls in r_calls.items():
        if pid in c_prompts and pid in r_prompts and c_prompts[pid]["prompt_ids"] != r_prompts[pid]["prompt_ids"]:
            return Divergence(pid, None, "prompt_ids", None, r_prompts[pid]["prompt_ids"],
                              c_prompts[pid]["prompt_ids"], "run the reference's prompts file unchanged"), [], notes
        cand_calls = c_calls.get(pid, [])
        if not cand_calls:
            return Divergence(pid, None, "calls", None, f"{len(ref_calls)} calls", "no calls",
                              "the candidate has no records for this prompt"), sorted(skipped), notes
        for ref, cand in zip(ref_calls, cand_calls):
            if ref["call"] != cand["call"]:
                return Divergence(pid, ref["call"], "call", None, ref["call"], cand["call"], CAUSE["call_index"]), \
                    sorted(skipped), notes
            found = compare_call(ref, cand, atol, skipped)
            if found:
                return Divergence(pid, ref["call"], *found), sorted(skipped), notes
        if len(ref_calls) != len(cand_calls):
            cause = CAUSE["calls_fewer" if len(cand_calls) < len(ref_calls) else "calls_more"]
            return Divergence(pid, min(len(ref_calls), len(cand_calls)), "calls", None, f"{len(ref_calls)} calls",
                              f"{len(cand_calls)} calls", cause), sorted(skipped), notes
    extra = sorted(set(c_calls) - set(r_calls))
    if extra:
        notes.append(f"the candidate has prompts the reference lacks (ignored): {extra[:5]}")
    return None, sorted(skipped), notes


def compare_command(reference: str, candidate: str, atol: float) -> int:
    """Print the comparison; exit status 0 when the candidate agrees, 1 at a divergence."""
    divergence, skipped, notes = compare_traces(reference, candidate, atol)
    _, _, r_calls = read_trace(reference)
    for note in notes:
        print(f"note: {note}")
    if skipped:
        print(f"skipped (the candidate omits them): {', '.join(skipped)}")
    if divergence:
        print(divergence)
        return 1
    print(f"OK: {sum(map(len, r_calls.values()))} calls of {len(r_calls)} prompts agree (tokens exactly, "
          f"log-probabilities within {atol:g})")
    return 0


# ------------------------------------------------------------------------------------------------------------
# outputs only
# ------------------------------------------------------------------------------------------------------------


def accounting(output: list[int], lengths: list[int], gamma: int) -> tuple[list[int] | None, str | None]:
    """Decode-call lengths under docs/CONVENTIONS.md (bonus token included, prefill's token excluded) recovered from an
    `accept_lengths` list, and what was wrong with it (None when it already follows §6)."""
    n, s, m = len(output), sum(lengths), len(lengths)
    if s == n - 1 and all(1 <= a <= gamma + 1 for a in lengths):
        return lengths, None
    if s == n and m > 0 and lengths[0] == 1:
        return lengths[1:], ("the list starts with the prefill's token: the prefill is a forward call, but not a "
                             "decode call (docs/CONVENTIONS.md); dropped it")
    if m > 0 and s == n - 1 + m:
        return [a - 1 for a in lengths], ("every call counts one token too many: the bonus token counted twice "
                                          "(accepted drafts + 1, and + 1 again); took 1 off each")
    if m > 0 and s == n - 1 - m:
        return [a + 1 for a in lengths], ("the bonus/root token is not counted: docs/CONVENTIONS.md counts it in every "
                                          "decode call; added 1 to each")
    if s == n - 1:
        bad = [a for a in lengths if not 1 <= a <= gamma + 1]
        return None, f"a decode call commits 1..γ+1 = 1..{gamma + 1} tokens; got {bad[:5]}"
    return None, (f"accept_lengths sum to {s}, but the {n} output tokens need {n - 1} after the prefill's first "
                  f"token: the lists do not account for the output")


def metrics(lengths: list[int], n_out: int, gamma: int, max_new_tokens: int) -> dict:
    """docs/CONVENTIONS.md from per-decode-call lengths: CR (plain greedy calls / calls), tokens per call, acceptance."""
    attempted, accepted, done = [0] * gamma, [0] * gamma, 1
    for a in lengths:
        drafted = min(gamma, max_new_tokens - done - 1)
        for j in range(1, drafted + 1):
            attempted[j - 1] += a - 1 >= j - 1
            accepted[j - 1] += a - 1 >= j
        done += a
    return dict(calls=1 + len(lengths), ar_calls=n_out, cr=n_out / (1 + len(lengths)),
                tokens_per_call=(n_out - 1) / len(lengths) if lengths else float("nan"),
                attempted=attempted, accepted=accepted)


def check_outputs(model_dir: str, answers_path: str, prompts_path: str) -> tuple[bool, list[str]]:
    """Compare final outputs with our greedy output, recompute the metrics, flag inconsistent accounting."""
    from generate import generate_autoregressive
    model = load_model(model_dir)
    gamma = model.config.n_drafts
    prompts = {p["id"]: p for p in read_prompts(prompts_path)}
    ok, lines, total = True, [], dict(calls=0, ar_calls=0, tokens=0, decode_calls=0, attempted=[0] * gamma,
                                      accepted=[0] * gamma)
    for line in open(answers_path):
        if not line.strip():
            continue
        ans = json.loads(line)
        pid = ans.get("prompt_id")
        if pid not in prompts or "output_ids" not in ans:
            raise ValueError(f"{answers_path}: record {str(ans)[:80]} needs a prompt_id from {prompts_path} and "
                             f"output_ids")
        p, out = prompts[pid], ans["output_ids"]
        ours = generate_autoregressive(model, p["prompt_ids"], p["max_new_tokens"], p.get("eos_id")).tokens
        if out != ours:
            i = next((i for i, (a, b) in enumerate(zip(out, ours)) if a != b), min(len(out), len(ours)))
            lines.append(f"{pid}: output differs from greedy at token {i}: ours {ours[i:i + 5]}, theirs {out[i:i + 5]}")
            ok = False
            continue
        if ans.get("accept_lengths") is None:
            lines.append(f"{pid}: output == greedy ({len(out)} tokens); no accept_lengths, no metrics")
            continue
        lengths, problem = accounting(out, ans["accept_lengths"], gamma)
        if problem:
            lines.append(f"{pid}: INCONSISTENT accounting: {problem}")
            ok = False
        if lengths is None:
            continue
        m = metrics(lengths, len(out), gamma, p["max_new_tokens"])
        lines.append(f"{pid}: output == greedy; {len(out)} tokens in {m['calls']} calls: CR {m['cr']:.2f}, "
                     f"{m['tokens_per_call']:.2f} tokens per decode call (bonus included)")
        for key in ("calls", "ar_calls"):
            total[key] += m[key]
        total["tokens"] += len(out) - 1
        total["decode_calls"] += len(lengths)
        for j in range(gamma):
            total["attempted"][j] += m["attempted"][j]
            total["accepted"][j] += m["accepted"][j]
    if total["calls"]:
        rates = " ".join(f"{a / t:.2f}" if t else "-" for a, t in zip(total["accepted"], total["attempted"]))
        lines.append(f"all: CR {total['ar_calls'] / total['calls']:.2f} (plain greedy calls / calls, prefill "
                     f"included), {total['tokens'] / max(total['decode_calls'], 1):.2f} tokens per decode call "
                     f"(bonus included), acceptance at depth 1..{gamma}: {rates}")
    return ok, lines


# ------------------------------------------------------------------------------------------------------------
# specstream_minimal.py as "the other implementation"
# ------------------------------------------------------------------------------------------------------------


def load_minimal(model_dir: str):
    """What a porter writes: config.json and model.safetensors read by hand into another implementation."""
    import specstream_minimal as sm
    cfg, weights = read_portable(model_dir)
    model = sm.MiniGPT(sm.MiniConfig(vocab_size=cfg["vocab_size"], block_size=cfg["n_positions"],
                                     n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                                     n_streams=cfg["specstream"]["n_streams"],
                                     n_msa_layers=cfg["specstream"]["n_msa_layers"]))
    model.load_state_dict({name: weights[name] for name in model.state_dict()})  # no pruning adapter here
    return model.double().eval()


@torch.no_grad()
def minimal_records(model, prompt_id: str, steps: list, k: int) -> list[dict]:
    """specstream_minimal's per-call data (context, tree as token paths, stream logits drafted from, accepted
    path, committed) as trace records. Main log-probs per node are the minimal model's own forward over the
    tree's root-to-leaf paths, as in its verify_tree."""
    import specstream_minimal as sm
    records = []
    for call, (context, paths, drafted_from, accepted, committed) in enumerate(steps):
        index = {tuple(p): i for i, p in enumerate(paths)}
        leaves = [p for p in paths if len(p) == len(paths[-1])]
        main, _ = model(sm.as_batch([context + leaf for leaf in leaves], model))
        logprobs = F.log_softmax(main[:, len(context):], dim=-1)  # (n_leaves, depth + 1, V)
        rows = [next(r for r, leaf in enumerate(leaves) if leaf[:len(p)] == p) for p in paths]
        node_lp = torch.stack([logprobs[r, len(p) - 1] for r, p in zip(rows, paths)])  # (n, V)
        tokens, lps = topk_lists(node_lp, TOP)
        record = dict(type="call", prompt=prompt_id, call=call, cache_len=len(context),
                      tree=dict(tokens=[p[-1] for p in paths],
                                parents=[index.get(tuple(p[:-1]), -1) for p in paths],
                                depths=[len(p) - 1 for p in paths],
                                positions=[len(context) + len(p) - 1 for p in paths]),
                      draft_topk=None, main_argmax=node_lp.argmax(-1).tolist(),
                      main_top5=dict(tokens=tokens, logprobs=lps),
                      path=[index[tuple(accepted[:d + 1])] for d in range(len(accepted))], committed=committed)
        if drafted_from is not None:
            tok, lp = topk_lists(F.log_softmax(drafted_from, dim=-1), k)
            record["draft_topk"] = dict(tokens=tok, logprobs=lp)
        records.append(record)
    return records


def minimal_trace(model_dir: str, prompts_path: str, out: str, k: int = 1, answers: str | None = None) -> str:
    """Decode the prompts with specstream_minimal.py and write its golden trace (and, optionally, its answers)."""
    import specstream_minimal as sm
    model, prompts = load_minimal(model_dir), read_prompts(prompts_path)
    gamma = model.config.n_streams
    settings = dict(gamma=gamma, k=k, tree_cap=None, prune_threshold=None, decoding="greedy")
    records = [header(model_dir, settings, "float64", "specstream_minimal.speculative_decode")]
    answer_records = []
    for p in prompts:
        steps = []
        tokens, committed = sm.speculative_decode(model, p["prompt_ids"], p["max_new_tokens"], gamma, k,
                                                  eos_id=p.get("eos_id"), trace=steps)
        records.append(dict(type="prompt", prompt=p["id"], prompt_ids=p["prompt_ids"],
                            max_new_tokens=p["max_new_tokens"], eos_id=p.get("eos_id")))
        records += minimal_records(model, p["id"], steps, k)
        answer_records.append(dict(prompt_id=p["id"], output_ids=tokens,
                                   accept_lengths=[len(c) for c in committed[1:]]))
    write_jsonl(out, records)
    if answers:
        write_jsonl(answers, answer_records)
    return out


# ------------------------------------------------------------------------------------------------------------
# the committed reference
# ------------------------------------------------------------------------------------------------------------

REFERENCE_TRAINING = ["--n-layer", "3", "--n-embd", "64", "--n-head", "2", "--gamma", "4", "--n-msa-layers", "2",
                      "--lora-rank", "8", "--pretrain-steps", "300", "--ss-steps", "300", "--prune-steps", "60",
                      "--batch-size", "16", "--ss-batch-size", "16", "--block-size", "96", "--train-block", "48",
                      "--n-stories", "1000", "--threads", "1"]
REFERENCE_TRACES = {  # file name -> decoding settings
    "trace_k2.jsonl": dict(k=2),
    "trace_k3_cap10_pruned.jsonl": dict(k=3, tree_cap=10, prune_threshold=0.05),
}


def make_reference(out_dir: str = "reference", work_dir: str = "checkpoints/reference", n_prompts: int = 6,
                   max_new_tokens: int = 40) -> str:
    """Train the small toy model (about a minute on one core), export it, write prompts and golden traces."""
    from train_toy import ToyData, parser, train_pipeline
    args = parser().parse_args(REFERENCE_TRAINING + ["--out-dir", work_dir])
    train_pipeline(args)
    export(os.path.join(work_dir, f"ss_gamma{args.gamma}_pruned.pt"), os.path.join(out_dir, "model"))
    data = ToyData(args.n_stories, args.seed)
    write_jsonl(os.path.join(out_dir, "prompts.jsonl"), [
        dict(id=f"p{i}", prompt_ids=p, max_new_tokens=max_new_tokens, eos_id=data.eos_id)
        for i, p in enumerate(data.prompts(n_prompts))])
    for name, settings in REFERENCE_TRACES.items():
        trace(os.path.join(out_dir, "model"), os.path.join(out_dir, "prompts.jsonl"), os.path.join(out_dir, name),
              **settings)
    return out_dir


# ------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny reference model)")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="checkpoint -> model.safetensors (HF GPT-2 names) + config.json + vocabulary")
    e.add_argument("checkpoint")
    e.add_argument("out_dir")
    e.add_argument("--toy-vocabulary", action="store_true",
                   help="the checkpoint has no vocabulary entry: write train_toy.py's word list")
    t = sub.add_parser("trace", help="golden trace of generate_speculative on a prompts file")
    t.add_argument("--model", required=True, help="an exported folder (validate.py export)")
    t.add_argument("--prompts", required=True, help="JSON lines: id, prompt_ids, max_new_tokens, eos_id")
    t.add_argument("--out", required=True)
    t.add_argument("--gamma", type=int, default=None, help="streams used (default: all)")
    t.add_argument("--k", type=int, default=1, help="top-k per stream")
    t.add_argument("--tree-cap", type=int, default=None)
    t.add_argument("--prune-threshold", type=float, default=None)
    t.add_argument("--stream-pass", choices=["tree", "accepted"], default="tree")
    t.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    c = sub.add_parser("compare", help="first divergence of CANDIDATE from REFERENCE; exit 0 same, 1 differs, "
                                       "2 unreadable")
    c.add_argument("reference")
    c.add_argument("candidate")
    c.add_argument("--atol", type=float, default=LOGPROB_ATOL, help="tolerance on log-probabilities")
    o = sub.add_parser("outputs", help="final outputs (+ accept_lengths) against our greedy output and metrics")
    o.add_argument("--model", required=True)
    o.add_argument("--answers", required=True, help="JSON lines: prompt_id, output_ids, accept_lengths (optional)")
    o.add_argument("--prompts", default="reference/prompts.jsonl")
    m = sub.add_parser("minimal", help="the same trace written by specstream_minimal.py (full tree, no pruning)")
    m.add_argument("--model", required=True)
    m.add_argument("--prompts", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--k", type=int, default=1)
    m.add_argument("--answers", default=None, help="also write its final outputs as answer records here")
    r = sub.add_parser("reference", help="retrain the toy reference model and rewrite reference/")
    r.add_argument("--out-dir", default="reference")
    r.add_argument("--work-dir", default="checkpoints/reference", help="training checkpoints (resumed if present)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        return run_command(args)
    except (ValueError, FileNotFoundError) as e:  # TraceError included: bad input, named with its fix
        print(f"error: {e}")
        return 2


def run_command(args: argparse.Namespace) -> int:
    """Run one subcommand; returns the exit status."""
    if args.command == "export":
        print(f"wrote {export(args.checkpoint, args.out_dir, args.toy_vocabulary)}")
    elif args.command == "trace":
        out = trace(args.model, args.prompts, args.out, args.k, args.tree_cap, args.prune_threshold, args.gamma,
                    args.stream_pass, args.dtype)
        print(f"wrote {out}")
    elif args.command == "compare":
        return compare_command(args.reference, args.candidate, args.atol)
    elif args.command == "outputs":
        ok, lines = check_outputs(args.model, args.answers, args.prompts)
        print("\n".join(lines))
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    elif args.command == "minimal":
        print(f"wrote {minimal_trace(args.model, args.prompts, args.out, args.k, args.answers)}")
    elif args.command == "reference":
        print(f"wrote {make_reference(args.out_dir, args.work_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
