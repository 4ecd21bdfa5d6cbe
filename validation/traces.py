"""Golden traces: this project's generate_speculative, one record per model call (the format: VALIDATING.md §3).

A trace is JSON lines (schema "specstream-trace", version 1): a header, one "prompt" record per prompt, then one
"call" record per model call, prefill included (call 0).
"""
from __future__ import annotations

import hashlib
import os

import torch
from torch.nn import functional as F

from checkpoint import load_portable
from model import GPT
from validation.records import SCHEMA, VERSION, read_prompts, write_jsonl

TOP = 5  # main-stream top-k kept per node
TIE_BREAKING = ("argmax: the lowest token id among exact ties (torch.argmax); top-k lists: sorted by probability, "
                "descending; entries within the tolerance of each other count as ties in compare; capped trees: "
                "the `cap` nodes of highest path probability, ties broken by breadth-first index")


def model_hash(model_dir: str) -> str:
    """sha256 of model.safetensors: the same file gives the same hash in any implementation (sha256sum)."""
    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def header(model_dir: str, settings: dict, dtype: str, implementation: str) -> dict:
    """The first line of a trace: schema, who wrote it, which weights, the decoding settings."""
    return dict(type="header", schema=SCHEMA, version=VERSION, implementation=implementation,
                model_sha256=model_hash(model_dir), settings=settings, dtype=dtype, tie_breaking=TIE_BREAKING)


def prompt_record(p: dict) -> dict:
    """A prompts-file entry as a trace's prompt record."""
    return dict(type="prompt", prompt=p["id"], prompt_ids=p["prompt_ids"], max_new_tokens=p["max_new_tokens"],
                eos_id=p.get("eos_id"))


def rounded(values) -> list:
    return [round(float(v), 8) for v in values]


def topk_lists(logprobs: torch.Tensor, k: int) -> tuple[list, list]:
    """(n, V) log-probabilities -> the top-k token ids and their log-probabilities of each row, as lists."""
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
    """An exported folder as this project's GPT, in eval mode and the given dtype."""
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
        records.append(prompt_record(p))
        records += trace_prompt(model, p, settings)
    write_jsonl(out, records)
    return out
