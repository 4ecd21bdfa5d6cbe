"""The bug zoo of the validation kit: deliberately wrong implementations (this project's code with one bug
patched in). `validate.py compare` must stop each at the call where the bug first shows, at the right field, and
name the right cause; with only the six required fields it must still catch what the tokens can show."""
import json
import math
import os
from typing import Callable, NamedTuple

import pytest
import torch
from torch.nn import functional as F

import checkpoint
import generate
import model as model_module
import tree as tree_module
from validation import traces
from validation.compare import compare_traces
from validation.records import read_prompts, write_jsonl

REF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reference")
REF_MODEL = os.path.join(REF, "model")
PRUNED = dict(k=3, tree_cap=10, prune_threshold=0.05)


def read(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    """"small": two reference prompts with 16 new tokens (no EOS within them); "eos": p1 with its 40 new tokens,
    which ends with EOS."""
    folder = tmp_path_factory.mktemp("prompts")
    prompts = read_prompts(f"{REF}/prompts.jsonl")
    write_jsonl(str(folder / "small.jsonl"), [dict(p, max_new_tokens=16) for p in prompts[:2]])
    write_jsonl(str(folder / "eos.jsonl"), [p for p in prompts if p["id"] == "p1"])
    return dict(small=str(folder / "small.jsonl"), eos=str(folder / "eos.jsonl"))


@pytest.fixture(scope="module")
def good_traces(prompt_files, tmp_path_factory):
    """The correct traces: small prompts with k = 2 and with pruning, the EOS prompt with k = 2."""
    folder = tmp_path_factory.mktemp("good")
    return {("small", False): traces.trace(REF_MODEL, prompt_files["small"], str(folder / "k2.jsonl"), k=2),
            ("small", True): traces.trace(REF_MODEL, prompt_files["small"], str(folder / "pruned.jsonl"), **PRUNED),
            ("eos", False): traces.trace(REF_MODEL, prompt_files["eos"], str(folder / "eos.jsonl"), k=2)}


# ---- the wrong implementations ----

REAL_STREAM_ATTENTION = model_module.CausalSelfAttention.stream_attention
REAL_COMMIT_TOKENS = generate.commit_tokens
REAL_DRAFT, REAL_DRAFT_TOPK = generate.draft, generate.draft_topk
REAL_SELECT_PENDING = model_module.KVCache.select_pending
REAL_LOAD_MODEL, REAL_CONV1D = traces.load_model, checkpoint.conv1d_layout


def stream_attention_sees_all_streams(self, qs, ks, vs, km, vm, mask):
    """Bug: stream j attends to every stream of its node (Eq. 2 allows streams 1..j only)."""
    scale = 1.0 / math.sqrt(qs.size(-1))
    att_main = (qs.transpose(2, 3) @ km.unsqueeze(2).transpose(-2, -1)) * scale  # (B, nh, γ, T', L+T)
    att_main = att_main.masked_fill(~mask, float("-inf"))
    att_self = ((qs @ ks.transpose(-2, -1)) * scale).transpose(2, 3)  # (B, nh, γ, T', γ): no stream mask
    att = F.softmax(torch.cat([att_main, att_self], dim=-1), dim=-1)
    att_main, att_self = att.split([km.size(2), qs.size(3)], dim=-1)
    return (att_main @ vm.unsqueeze(2)).transpose(2, 3) + att_self.transpose(2, 3) @ vs


def stream_attention_without_own_key(self, qs, ks, vs, km, vm, mask):
    """Bug: a stream sees its node's ancestors' main keys but not its own node's (the last key its row allows)."""
    own = mask & (mask.long().cumsum(-1) == mask.sum(-1, keepdim=True))
    return REAL_STREAM_ATTENTION(self, qs, ks, vs, km, vm, mask & ~own)


def stream_mask_by_depth(self, qs, ks, vs, km, vm, mask):
    """Bug: in the tree pass, a node's streams see every tree node of lower depth (and the node), not its ancestors."""
    n = mask.size(-2)
    if mask.dim() == 2 and n > 1:
        L = mask.size(-1) - n
        depth = mask[:, L:].sum(-1) - 1  # a node's ancestors, itself included, minus one
        by_depth = (depth[None, :] < depth[:, None]) | torch.eye(n, dtype=torch.bool)
        mask = torch.cat([mask[:, :L], by_depth], dim=1)
    return REAL_STREAM_ATTENTION(self, qs, ks, vs, km, vm, mask)


def upper_with_stream_start(self, x, mask, cache, stream_rows, n_streams, late: bool, shift: int):
    """GPT.upper with a wrong stream start: P_j added at the input of the second MSA block (late) and/or the rows
    of stream_emb shifted by `shift` (stream j gets P_{j-shift})."""
    n_streams = self.config.n_streams if n_streams is None else n_streams
    P = self.transformer.stream_emb.roll(shift, 0)[:n_streams]
    s = None
    if n_streams > 0 and (stream_rows is None or len(stream_rows) > 0):
        rows = x if stream_rows is None else x[:, stream_rows]
        s = rows.unsqueeze(2) + (0 * P if late else P)
    for layer in range(self.config.first_msa_layer, self.config.n_layer):
        x, s = self.transformer.h[layer](x, s, mask, cache, layer, None if s is None else stream_rows)
        if late and s is not None and layer == self.config.first_msa_layer:
            s = s + P
    return self.transformer.ln_f(x), None if s is None else self.transformer.ln_f(s)


def upper_stream_embedding_late(self, x, mask=None, cache=None, stream_rows=None, n_streams=None):
    """Bug: S_j = M + P_j one block late (at the input of block N-N_s+1)."""
    return upper_with_stream_start(self, x, mask, cache, stream_rows, n_streams, late=True, shift=0)


def upper_stream_embedding_shifted(self, x, mask=None, cache=None, stream_rows=None, n_streams=None):
    """Bug: stream j starts from P_{j-1} (stream 1 from P_γ): the stream-embedding row index is shifted."""
    return upper_with_stream_start(self, x, mask, cache, stream_rows, n_streams, late=False, shift=1)


def positions_off_by_one(tree, cache_len):
    """Bug: the root is placed one position after the cache's end."""
    return cache_len + tree.depths + 1


def draft_with_parents_off_by_one(model, drafter, depth, s):
    """Bug: a node below depth 1 records (and hangs under) the node just before its real parent."""
    d = REAL_DRAFT(model, drafter, depth, s)
    parents = torch.where(d.tree.parents >= 1, d.tree.parents - 1, d.tree.parents)
    ancestors = torch.eye(len(parents), dtype=torch.bool)
    for i in range(1, len(parents)):
        ancestors[i] |= ancestors[parents[i]]
    return generate.Draft(tree_module.Tree(d.tree.tokens, parents, d.tree.depths, d.tree.scores, ancestors),
                          d.topk, d.q)


def draft_topk_ascending(model, main_state, stream_states, depth, k):
    """Bug: the top-k lists come in ascending order of probability (the right tokens, the wrong order)."""
    tokens, probs = REAL_DRAFT_TOPK(model, main_state, stream_states, depth, k)
    return tokens.flip(-1), probs.flip(-1)


def load_model_with_layernorm_eps(model_dir, dtype="float64"):
    """Bug: LayerNorm epsilon 1e-12 (BERT's) instead of GPT-2's 1e-5."""
    m = REAL_LOAD_MODEL(model_dir, dtype)
    for module in m.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-12
    return m


def conv1d_layout_forgets_attn_proj(name, t):
    """Bug: the attention output projection (square, so it loads) is not transposed from HF's Conv1D layout."""
    return t if name.endswith("attn.c_proj.weight") else REAL_CONV1D(name, t)


def verify_with_own_argmax(tree, main_argmax):
    """Bug: accepts a child whose token equals the main argmax at the child itself (not at its parent)."""
    tokens, parents, path = tree.tokens.tolist(), tree.parents.tolist(), [0]
    for node in range(1, len(tokens)):
        if parents[node] == path[-1] and tokens[node] == main_argmax[node]:
            path.append(node)
    return path


def verify_one_too_many(tree, main_argmax):
    """Bug: after the accepted path, the first child of its last node is accepted too."""
    path = tree_module.verify_greedy(tree, main_argmax)
    children = [i for i in range(len(tree)) if int(tree.parents[i]) == path[-1]]
    return path + children[:1]


def commit_without_compaction(self, keep=None):
    """Bug: counts the accepted entries but leaves the tree's entries where the forward wrote them."""
    self.length += self.pending if keep is None else len(keep)
    self.pending = 0


def commit_tokens_without_bonus(result, new, max_new_tokens, eos_id):
    """Bug: a decode call that accepted drafts commits them but drops the bonus token (the new root)."""
    dropped = new[:-1] if result.step_tokens and len(new) > 1 else new
    return REAL_COMMIT_TOKENS(result, dropped, max_new_tokens, eos_id)


def commit_tokens_without_eos(result, new, max_new_tokens, eos_id):
    """Bug: decoding stops at EOS but does not keep it."""
    if eos_id in new:
        REAL_COMMIT_TOKENS(result, new[:new.index(eos_id)], max_new_tokens, eos_id)
        return True
    return REAL_COMMIT_TOKENS(result, new, max_new_tokens, eos_id)


def causal_tree_mask(tree, cache_len):
    """Bug: a plain causal mask over the tree's nodes (a node sees its siblings and their subtrees)."""
    n = len(tree)
    return torch.cat([torch.ones(n, cache_len, dtype=torch.bool), torch.ones(n, n, dtype=torch.bool).tril()], 1)


def prune_at_the_node(tree, early_exit_probs, threshold):
    """Bug: a node is judged by its own early-exit distribution (of the token after it), not its parent's."""
    dropped = early_exit_probs[torch.arange(len(tree)), tree.tokens] < threshold
    dropped[0] = False
    return (~(tree.ancestors & dropped).any(dim=1)).nonzero().flatten()


def select_pending_keeps_pruned_entries(self, keep, layers):
    """Bug: pruning leaves the pruned nodes' lower-layer keys/values in the cache (compaction still works)."""
    if len(layers) == len(self.k):
        REAL_SELECT_PENDING(self, keep, layers)


# ---- where each bug first shows, from the correct trace's call records of the prompt ----

def first_call(calls, predicate):
    return next(r["call"] for r in calls if r["call"] > 0 and predicate(r))


def own_argmax_path(r):
    path = [0]
    for node in range(1, len(r["tree"]["tokens"])):
        if r["tree"]["parents"][node] == path[-1] and r["tree"]["tokens"][node] == r["main_argmax"][node]:
            path.append(node)
    return path


def path_moved_by_pruning(r):
    """The accepted path holds a node whose lower-layer entry pruning had to move (a node before it was pruned)."""
    survivors = r["early_exit"]["survivors"] if r["early_exit"] else []
    return any(survivors.index(node) != node for node in r["path"] if survivors)


def has_children(r, node):
    return node in r["tree"]["parents"]


class Bug(NamedTuple):
    owner: object            # where the wrong version goes
    attribute: str
    wrong: Callable
    field: str               # compare must name a field starting with this
    cause: str               # ... and a likely cause containing these words
    expected_call: Callable  # the correct call records of the prompt -> the call where the bug first shows
    prompts: str = "small"   # "small" (p0, p1, 16 new tokens) or "eos" (p1, 40 new tokens, ends with EOS)
    pruned: bool = False     # run with pruning (k = 3, cap 10, threshold 0.05) instead of k = 2
    prompt: str = "p0"       # the prompt where it first shows
    tokens_show_it: bool = True  # a trace of the six required fields still catches it


ATTENTION, CACHE, GPT_ = model_module.CausalSelfAttention, model_module.KVCache, model_module.GPT
BUGS = {
    "stream sees later streams": Bug(ATTENTION, "stream_attention", stream_attention_sees_all_streams, "draft_topk",
                                     "streams 1..j of the same node only", lambda c: 1),
    "P_j added one block late": Bug(GPT_, "upper", upper_stream_embedding_late, "draft_topk", "not one block later",
                                    lambda c: 1),
    "stream-embedding index shifted": Bug(GPT_, "upper", upper_stream_embedding_shifted, "draft_topk",
                                          "not a shifted row", lambda c: 1),
    "stream missing its own main key": Bug(ATTENTION, "stream_attention", stream_attention_without_own_key,
                                           "draft_topk", "up to and including its own node's", lambda c: 1),
    "stream main-mask by depth": Bug(ATTENTION, "stream_attention", stream_mask_by_depth, "draft_topk",
                                     "never the other nodes of lower depth",
                                     lambda c: 1 + first_call(c, lambda r: len(r["path"]) >= 3)),
    "unsorted top-k": Bug(generate, "draft_topk", draft_topk_ascending, "draft_topk.tokens", "rank order",
                          lambda c: 1),
    "position ids off by one": Bug(generate, "position_ids", positions_off_by_one, "tree.positions",
                                   "position = cache_len + depth", lambda c: 1),
    "tree parents off by one": Bug(generate, "draft", draft_with_parents_off_by_one, "tree.parents",
                                   "parent indices", lambda c: 1),
    "LayerNorm epsilon 1e-12": Bug(traces, "load_model", load_model_with_layernorm_eps, "main_top5.logprobs",
                                   "LayerNorm eps 1e-5", lambda c: 0, tokens_show_it=False),
    "Conv1D weight not transposed": Bug(checkpoint, "conv1d_layout", conv1d_layout_forgets_attn_proj, "main_",
                                        "Conv1D weights transposed", lambda c: 0),
    "plain causal mask over the tree": Bug(generate, "tree_attention_mask", causal_tree_mask, "main_",
                                           "not a plain causal mask", lambda c: 1),
    "verifying against the child's own argmax": Bug(generate, "verify_greedy", verify_with_own_argmax, "path",
                                                    "not at the child itself",
                                                    lambda c: first_call(c, lambda r: own_argmax_path(r) != r["path"])),
    "accepting one token too many": Bug(generate, "verify_greedy", verify_one_too_many, "path",
                                        "one token accepted too many",
                                        lambda c: first_call(c, lambda r: has_children(r, r["path"][-1]))),
    "bonus token dropped": Bug(generate, "commit_tokens", commit_tokens_without_bonus, "committed",
                               "the bonus token is missing", lambda c: first_call(c, lambda r: len(r["path"]) > 1)),
    "EOS not kept": Bug(generate, "commit_tokens", commit_tokens_without_eos, "committed", "EOS is kept",
                        lambda c: c[-1]["call"], prompts="eos", prompt="p1"),
    "no cache compaction": Bug(CACHE, "commit", commit_without_compaction, "main_", "cache compaction",
                               lambda c: 1 + first_call(c, lambda r: r["path"] != list(range(len(r["path"]))))),
    "early exit scored at the node": Bug(generate, "prune_tree", prune_at_the_node, "early_exit.survivors",
                                         "not its own", lambda c: 1, pruned=True),
    "pruned nodes' lower-layer K/V kept": Bug(CACHE, "select_pending", select_pending_keeps_pruned_entries,
                                              "early_exit.probs", "pruned nodes' lower-layer",
                                              lambda c: 1 + first_call(c, path_moved_by_pruning), pruned=True),
}


def required_fields_only(record: dict) -> dict:
    if record["type"] != "call":
        return record
    tree = dict(tokens=record["tree"]["tokens"], parents=record["tree"]["parents"])
    return dict(type="call", prompt=record["prompt"], call=record["call"], tree=tree, path=record["path"],
                committed=record["committed"])


@pytest.mark.parametrize("name", list(BUGS))
def test_compare_names_the_bug(name, good_traces, prompt_files, tmp_path, monkeypatch):
    bug = BUGS[name]
    good = good_traces[bug.prompts, bug.pruned]
    monkeypatch.setattr(bug.owner, bug.attribute, bug.wrong)
    bad = traces.trace(REF_MODEL, prompt_files[bug.prompts], str(tmp_path / "bad.jsonl"),
                       **(PRUNED if bug.pruned else dict(k=2)))
    monkeypatch.undo()
    divergence, _, _ = compare_traces(good, bad)
    expected_call = bug.expected_call([r for r in read(good) if r["type"] == "call" and r["prompt"] == bug.prompt])
    assert (divergence.prompt, divergence.call) == (bug.prompt, expected_call), str(divergence)
    assert divergence.field.startswith(bug.field) and bug.cause in divergence.cause, str(divergence)
    # the six required fields alone: caught at that call or later (maybe in a later prompt), if the tokens show it
    write_jsonl(str(tmp_path / "required.jsonl"), [required_fields_only(r) for r in read(bad)])
    late, skipped, _ = compare_traces(good, str(tmp_path / "required.jsonl"))
    assert "main_top5" in skipped
    if bug.tokens_show_it:
        assert late is not None and (late.prompt != bug.prompt or late.call >= expected_call), str(late)
    else:
        assert late is None  # what the guide's table of optional fields says


def test_the_guide_lists_every_bug():
    guide = " ".join(open(os.path.join(os.path.dirname(REF), "VALIDATING.md")).read().split())
    assert all(name in guide for name in BUGS)
