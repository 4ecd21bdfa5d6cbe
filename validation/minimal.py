"""specstream_minimal.py as "the other implementation": the reference weights read by hand into it, its decoding
loop, its per-call data as a trace (and its outputs as an answers file). Any model with its call signature works
the same way (hf_port.py runs Hugging Face transformers through it)."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from checkpoint import read_portable
from validation.outputs import answers_header
from validation.records import read_prompts, write_jsonl
from validation.traces import TOP, header, prompt_record, topk_lists


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
    path, committed) as trace records. Main log-probs per node are the model's own forward over the tree's
    root-to-leaf paths, as in specstream_minimal.verify_tree."""
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


def minimal_trace(model_dir: str, prompts_path: str, out: str, k: int = 1, answers: str | None = None,
                  model=None, implementation: str = "specstream_minimal.speculative_decode") -> str:
    """Decode the prompts with specstream_minimal's loop and write its trace (and, optionally, its answers file).
    `model`: any module with MiniGPT's call signature (default: MiniGPT with the weights of `model_dir`)."""
    import specstream_minimal as sm
    model, prompts = model or load_minimal(model_dir), read_prompts(prompts_path)
    gamma = model.config.n_streams
    settings = dict(gamma=gamma, k=k, tree_cap=None, prune_threshold=None, stream_pass="tree", decoding="greedy")
    records = [header(model_dir, settings, "float64", implementation)]
    answer_records = [answers_header(settings, implementation)]
    for p in prompts:
        steps = []
        tokens, committed = sm.speculative_decode(model, p["prompt_ids"], p["max_new_tokens"], gamma, k,
                                                  eos_id=p.get("eos_id"), trace=steps)
        records.append(prompt_record(p))
        records += minimal_records(model, p["id"], steps, k)
        answer_records.append(dict(prompt_id=p["id"], output_ids=tokens, forward_calls=len(committed),
                                   accept_lengths=[len(c) for c in committed[1:]]))
    write_jsonl(out, records)
    if answers:
        write_jsonl(answers, answer_records)
    return out
