"""Speculative sampling (temperature > 0): tokens per call and acceptance per depth against temperature for the
lossless recursive rule and the two lossy ones (`sampling_sweep`), and the distribution test: samples of the first
3 tokens against the model's exact distribution, enumerated (`first_tokens_distribution`, `distribution_test`).
`bench.py sampling` runs both; notebook 05 and the tests use the same functions."""
from __future__ import annotations

import argparse
import json
import os

import torch
from tqdm import tqdm

from benchmarks.models import e2e_ss_model, load_toy
from benchmarks.report import fmt, plot_sampling
from generate import generate_speculative
from model import GPT
from tree import ACCEPTANCE_RULES, sampling_probs

TEMPERATURES = (0.0, 0.5, 0.7, 1.0)
MAX_ENUMERATED_CELLS = 10 ** 7  # the distribution test enumerates V^3 cells (V^2 forwards): small vocabularies only


def distribution_test(samples: list[tuple[int, ...]], exact: torch.Tensor, alpha: float = 1e-3) -> dict:
    """Samples of m-token sequences against their exact distribution `exact` (V,)*m: chi-square p-value (cells
    with an expected count < 5 pooled into one; nan when that leaves fewer than 2 bins: too few samples),
    total-variation distance, and TV's sampling bound at level alpha (Jensen: E TV <= 1/2 sum sqrt(p(1-p)/n);
    McDiarmid: + sqrt(ln(1/alpha)/2n))."""
    from scipy import stats
    n, p = len(samples), exact.flatten().double()
    flat = torch.tensor([sum(t * exact.size(0) ** (len(s) - 1 - i) for i, t in enumerate(s)) for s in samples])
    counts = torch.bincount(flat, minlength=p.numel()).double()
    expected, big = p * n, p * n >= 5
    observed = torch.cat([counts[big], counts[~big].sum()[None]])
    expected_pooled = torch.cat([expected[big], expected[~big].sum()[None]])
    if expected_pooled[-1] == 0:  # nothing to pool
        observed, expected_pooled = observed[:-1], expected_pooled[:-1]
    chi2 = stats.chisquare(observed.numpy(), expected_pooled.numpy()) if len(observed) >= 2 else None
    tv = 0.5 * (counts / n - p).abs().sum().item()
    bound = 0.5 * (p * (1 - p) / n).sqrt().sum().item() + (torch.log(torch.tensor(1 / alpha)) / (2 * n)).sqrt().item()
    return dict(n=n, chi2=float("nan") if chi2 is None else float(chi2.statistic),
                p_value=float("nan") if chi2 is None else float(chi2.pvalue), tv=tv, tv_bound=bound,
                impossible=int(counts[p == 0].sum()), frequencies=counts / n)


def first_tokens_distribution(model: GPT, prompt: list[int], temperature: float, top_k: int | None = None,
                              top_p: float | None = None) -> torch.Tensor:
    """The model's exact distribution of its first 3 sampled tokens after `prompt`, by enumeration: (V, V, V)."""
    V, P, device = model.config.vocab_size, len(prompt), next(model.parameters()).device
    x12 = torch.cartesian_prod(torch.arange(V), torch.arange(V)).to(device)  # (V*V, 2)
    idx = torch.cat([torch.tensor(prompt, device=device).expand(V * V, -1), x12], dim=1)
    with torch.inference_mode():
        logits = torch.cat([model(chunk).logits[:, P - 1:] for chunk in idx.split(512)])  # (V*V, 3, V)
    probs = sampling_probs(logits.cpu(), temperature, top_k, top_p)
    return probs[0, 0][:, None, None] * probs[::V, 1][:, :, None] * probs[:, 2].view(V, V, V)


def sampling_sweep(model: GPT, prompts: list[list[int]], max_new: int, eos: int | None, gamma: int, k: int,
                   tree_cap: int | None, seed: int, progress: bool = True, top_k: int | None = None,
                   top_p: float | None = None) -> list[dict]:
    """Tokens per call, CR and acceptance per depth for every temperature (and, at T > 0, every acceptance rule),
    top_k / top_p applied at T > 0. CR = calls of plain decoding of the same output (one per token) / calls of
    the method."""
    rows = []
    for T in TEMPERATURES:
        for rule in ACCEPTANCE_RULES if T > 0 else ACCEPTANCE_RULES[:1]:
            g = torch.Generator().manual_seed(seed)
            rs = [generate_speculative(model, p, max_new, gamma=gamma, k=k, tree_cap=tree_cap, eos_id=eos,
                                       temperature=T, top_k=top_k, top_p=top_p, generator=g, acceptance=rule)
                  for p in tqdm(prompts, desc=f"T={T} {rule}", leave=False, disable=not progress)]
            calls = [n for r in rs for n in r.accepted_lengths]
            attempted = [sum(r.depth_attempted[j] for r in rs) for j in range(gamma)]
            accepted = [sum(r.depth_accepted[j] for r in rs) for j in range(gamma)]
            rows.append(dict(temperature=T, acceptance=rule if T > 0 else "greedy",
                             tokens_per_call=sum(calls) / len(calls),
                             cr_ratio=sum(len(r.tokens) for r in rs) / sum(r.forward_calls for r in rs),
                             depth_acceptance=[a / t if t else None for a, t in zip(accepted, attempted)]))
    return rows


def rules_distribution_test(model: GPT, prompt: list[int], gamma: int, k: int, top_k: int | None,
                            top_p: float | None, n: int, seed: int) -> tuple[dict, torch.Tensor]:
    """The distribution test of every acceptance rule at T = 1: n samples of the first 3 tokens each (γ <= 2:
    a tree that decides tokens 2 and 3 in one call) against the exact distribution. Returns the tests and it."""
    exact = first_tokens_distribution(model, prompt, 1.0, top_k, top_p)
    tests = {}
    for rule in ACCEPTANCE_RULES:
        g = torch.Generator().manual_seed(seed)
        samples = [tuple(generate_speculative(model, prompt, 4, gamma=min(gamma, 2), k=k, temperature=1.0,
                                              top_k=top_k, top_p=top_p, generator=g, acceptance=rule).tokens[:3])
                   for _ in tqdm(range(n), desc=f"distribution test: {rule}", leave=False)]
        tests[rule] = distribution_test(samples, exact)
        print(f"  distribution of the first 3 tokens at T=1.0, {rule}: TV {tests[rule]['tv']:.3f} (sampling "
              f"bound {tests[rule]['tv_bound']:.3f}), chi-square p = {tests[rule]['p_value']:.3g}")
    return tests, exact


def run_sampling(args: argparse.Namespace):
    """Speculative sampling: tokens per call, CR and acceptance per depth vs temperature (greedy, then recursive
    rejection and the two lossy rules), and the distribution test of the first 3 tokens (toy, E2E if present)."""
    model, data, prompts = load_toy(args)
    models = {"toy": (model, prompts, data.eos_id, [data.eos_id])}
    e2e = e2e_ss_model(args)
    if e2e:
        from data import EOS
        models["e2e"] = (*e2e, EOS, e2e[1][0])
    out = os.path.join(args.results_dir, "sampling")
    os.makedirs(out, exist_ok=True)
    results = {}
    for name, (m, task_prompts, eos, test_prompt) in models.items():
        gamma = min(args.sampling_gamma, m.config.n_drafts)
        print(f"{name}: {len(task_prompts)} prompts, up to {args.max_new_tokens} new tokens, γ={gamma}, "
              f"k={args.sampling_k}, cap {args.sampling_cap}, top-k {args.top_k}, top-p {args.top_p}; tokens per call "
              "count the root/bonus token")
        rows = sampling_sweep(m, task_prompts, args.max_new_tokens, eos, gamma, args.sampling_k, args.sampling_cap,
                              args.seed, top_k=args.top_k, top_p=args.top_p)
        for r in rows:
            print(f"  T={r['temperature']:<4} {r['acceptance']:<15} tokens/call {r['tokens_per_call']:.2f}  CR "
                  f"{r['cr_ratio']:.2f}  acceptance " + " ".join(fmt(a) for a in r["depth_acceptance"]))
        results[name] = dict(gamma=gamma, k=args.sampling_k, tree_cap=args.sampling_cap, top_k=args.top_k,
                             top_p=args.top_p, prompts=len(task_prompts), max_new_tokens=args.max_new_tokens, sweep=rows)
        V = m.config.vocab_size
        if V ** 3 > MAX_ENUMERATED_CELLS:
            print(f"  distribution test skipped: enumerating 3 tokens of a {V}-token vocabulary is {V ** 3:,} cells")
            plot_sampling(rows, None, None, out, name)
            continue
        tests, exact = rules_distribution_test(m, test_prompt, gamma, args.sampling_k, args.top_k, args.top_p,
                                               args.dist_samples, args.seed)
        plot_sampling(rows, tests, exact, out, name)
        results[name]["distribution_test"] = dict(
            temperature=1.0, prompt=test_prompt, gamma=min(gamma, 2), k=args.sampling_k,
            **{r: {k: v for k, v in t.items() if k != "frequencies"} for r, t in tests.items()})
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out}/results.json and plots")
