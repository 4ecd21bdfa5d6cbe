"""Batch > 1 (`bench.py batch`): tokens per second of batched AR and batched SS (batch.py) against the batch size,
SS's speedup and its CR per row and per batch."""
from __future__ import annotations

import argparse
import os
import statistics

import torch
from tqdm import tqdm

from batch import generate_autoregressive_batch, generate_speculative_batch
from benchmarks.harness import PASSES, Clock, interleave
from benchmarks.models import e2e_ss_model, load_toy
from benchmarks.precision import machine_description
from benchmarks.report import write_batch
from model import GPT

BATCH_SS_SETTINGS = [dict(gamma=4, k=1), dict(gamma=4, k=2, tree_cap=8)]  # `batch`: SS trees, both stream passes


def batch_decoders(model: GPT, max_new: int, eos: int | None) -> dict:
    """The batched decoders compared: AR, and SS at every setting of BATCH_SS_SETTINGS with both stream passes."""
    decoders = {"ar": lambda group: generate_autoregressive_batch(model, group, max_new, eos)}
    for s in BATCH_SS_SETTINGS:
        for stream_pass in PASSES:
            name = f"ss γ={s['gamma']} k={s['k']}" + (f" cap {s['tree_cap']}" if "tree_cap" in s else "")
            decoders[f"{name} ({stream_pass})"] = lambda group, s=s, sp=stream_pass: generate_speculative_batch(
                model, group, max_new, eos_id=eos, stream_pass=sp, **s)
    return decoders


def batch_throughput(model: GPT, prompts: list[list[int]], max_new: int, eos: int | None, sizes: list[int],
                     repeats: int, device: str) -> list[dict]:
    """For each batch size B: the prompts in consecutive groups of B, each group decoded by batched AR and by
    batched SS (every setting, both stream passes) back to back, `repeats` times after a warm-up (`interleave`).
    tokens/s = new tokens / median total time. CR per row = AR calls / SS calls of each row (as at batch 1); CR of
    the batch = AR batched forwards / SS batched forwards, lower: a batch runs until its slowest row is done."""
    decoders, rows = batch_decoders(model, max_new, eos), []
    for B in tqdm(sizes, desc="batch sizes"):
        groups = [prompts[i:i + B] for i in range(0, len(prompts), B)]
        times, results = interleave(decoders, groups, repeats, Clock(device), warmup=1, desc=f"batch {B}")
        first = {name: results[name][0] for name in decoders}  # per group, its rows' results
        ar = [r for g in first["ar"] for r in g]
        ar_forwards = sum(max(r.forward_calls for r in g) for g in first["ar"])
        for name in decoders:
            rs, t = [r for g in first[name] for r in g], statistics.median(times[name])
            differing = sum(r.tokens != a.tokens for r, a in zip(rs, ar))
            if differing:
                print(f"warning: {name} at batch {B}: {differing} rows differ from AR (float32 near-ties: batched "
                      "and one-row matmuls round differently)")
            calls = [n for r in rs for n in r.accepted_lengths]
            rows.append(dict(
                batch=B, decoder=name, time=t, tokens=sum(len(r.tokens) for r in rs),
                tokens_per_s=sum(len(r.tokens) for r in rs) / t, speedup=statistics.median(times["ar"]) / t,
                cr_rows=sum(r.forward_calls for r in ar) / sum(r.forward_calls for r in rs),
                cr_batch=ar_forwards / sum(max(r.forward_calls for r in g) for g in first[name]),
                tokens_per_call=sum(calls) / len(calls), outputs_differing=differing))
    return rows


def run_batch(args: argparse.Namespace):
    """Batched AR vs batched SS for batch sizes --batch-sizes: the toy model, and the E2E SS model when its
    checkpoint is on this machine (else skipped with a message)."""
    model, data, prompts = load_toy(args)
    models = {"toy": (model, prompts, args.max_new_tokens, data.eos_id)}
    e2e = e2e_ss_model(args)
    if e2e:
        from data import EOS, MAX_NEW_TOKENS
        models["e2e"] = (*e2e, MAX_NEW_TOKENS["e2e"], EOS)
    for name, (m, task_prompts, max_new, eos) in models.items():
        print(f"{name}: {len(task_prompts)} prompts, up to {max_new} new tokens, batch sizes {args.batch_sizes}, "
              f"{torch.get_num_threads()} thread(s), {args.device}, median of {args.repeats}")
        rows = batch_throughput(m, task_prompts, max_new, eos, args.batch_sizes, args.repeats, args.device)
        for r in rows:
            print(f"  B={r['batch']:>2} {r['decoder']:<30} {r['tokens_per_s']:8.0f} tokens/s  speedup "
                  f"{r['speedup']:.2f}x  CR batch {r['cr_batch']:.2f} / rows {r['cr_rows']:.2f}")
        header = (f"Command: `python bench.py batch --prompts {args.prompts} --repeats {args.repeats} --threads "
                  f"{args.threads} --device {args.device}`: {len(task_prompts)} prompts in consecutive groups of B, "
                  f"up to {max_new} new tokens, greedy, {args.device}, {torch.get_num_threads()} thread(s), one "
                  f"process, every decoder run back to back on each group, median of {args.repeats}. CR of the "
                  "batch = batched forwards of AR / of SS (a batch runs until its slowest row is done); CR per row "
                  f"as at batch 1. Tokens per call count the root/bonus token.\n\nMachine: "
                  f"{machine_description(args.device)}.")
        write_batch(rows, os.path.join(args.results_dir, "batch"), f"{name}_{args.device.split(':')[0]}", header)
