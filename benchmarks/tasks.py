"""Every method side by side: Speculative Streaming, Medusa, two-model speculative decoding and prompt lookup on a
real task (`bench.py task`) and on the toy task (`bench.py baselines`); training recipes side by side
(`bench.py ablation`); and the drafting cost at one node, Medusa's heads vs SS's streams (`bench.py draftcost`)."""
from __future__ import annotations

import argparse
import copy
import os

import torch
from tqdm import tqdm

from benchmarks.baselines import generate_prompt_lookup, generate_two_model
from benchmarks.harness import PASSES, Clock, compare, mean_ms
from benchmarks.models import (cast, drafter_path, load_for_decoding, settings_line, task_draft_vocabulary, task_setup,
                               variant)
from benchmarks.params import extra_parameters
from benchmarks.precision import dtype_differences, machine_description
from benchmarks.report import (best_of, fmt, models_markdown, print_rows, quality, realisation, write_ablation,
                               write_comparison)
from generate import generate_autoregressive, generate_speculative
from model import GPT, KVCache

METHODS = ("ss", "medusa", "two-model", "lookup")  # `task`: the decoders compared with the AR baseline
TREE_SETTINGS = [(1, None), (2, 8), (3, 16), (4, 24)]  # (k, tree cap) shared by SS and Medusa, without / with pruning
ABLATION_SETTINGS = [(1, None, "accepted"), (3, 16, "accepted"), (3, 16, "tree")]  # (k, tree cap, stream pass)


def side_by_side(models: dict[str, GPT], prompts: list[list[int]], max_new: int, eos: int | None, repeats: int,
                 prune_threshold: float, lookup: bool = True, device: str = "cpu",
                 float32_target: GPT | None = None) -> list[dict]:
    """The decoders of every method on the same prompts, in one `compare` call. models: "target" (plain GPT:
    AR baseline, prompt lookup, two-model target), "ss", "medusa", "draft" (any may be missing); float32_target:
    the target in float32 when the models decode at a reduced dtype, its AR timed alongside ("ar:target float32")."""
    decoders, info = {}, {}

    def add(name, run, baseline, **meta):
        decoders[name], info[name] = (run, baseline), meta

    for key in ("target", "ss", "medusa"):
        if key in models:
            add(f"ar:{key}", lambda p, m=models[key]: generate_autoregressive(m, p, max_new, eos), None,
                method="autoregressive", model=key)
    if float32_target is not None:
        add("ar:target float32", lambda p: generate_autoregressive(float32_target, p, max_new, eos), None,
            method="autoregressive", model="target float32")
    for key in ("ss", "medusa"):
        if key not in models:
            continue
        for k, cap in TREE_SETTINGS:
            for prune in (None, prune_threshold):
                for stream_pass in PASSES if key == "ss" else ("tree",):
                    kw = dict(k=k, tree_cap=cap, prune_threshold=prune, stream_pass=stream_pass)
                    add(f"{key} k={k} cap={cap} prune={prune} {stream_pass}",
                        lambda p, m=models[key], kw=kw: generate_speculative(m, p, max_new, eos_id=eos, **kw),
                        f"ar:{key}", method=key, model=key, gamma=models[key].config.n_drafts, **kw)
    if "target" in models:
        target = models["target"]
        for gamma in (2, 4) if "draft" in models else ():
            add(f"two-model γ={gamma}", lambda p, g=gamma: generate_two_model(target, models["draft"], p, max_new, g,
                                                                              eos),
                "ar:target", method="two-model", model="target", gamma=gamma)
        for n_draft in (2, 4) if lookup else ():
            add(f"lookup n=3 d={n_draft}", lambda p, d=n_draft: generate_prompt_lookup(target, p, max_new, 3, d, eos),
                "ar:target", method="prompt lookup", model="target", num_draft=n_draft)
    results = compare(decoders, prompts, repeats, device)
    return [dict(name=name, **info[name], **r) for name, r in results.items()]


def run_baselines(args: argparse.Namespace):
    """Toy task: SS (γ=4) vs Medusa (4 heads, same base and budget) vs two-model SD vs prompt lookup."""
    from train_toy import ToyData
    names = dict(target="base.pt", ss="ss_gamma4_pruned.pt", medusa="medusa_gamma4_pruned.pt", draft="draft.pt")
    for key, name in names.items():
        if not os.path.exists(os.path.join(args.toy_dir, name)):
            flag = {"ss": " --gamma 4", "medusa": " --method medusa --gamma 4", "draft": " --method draft"}.get(key, "")
            raise SystemExit(f"error: {args.toy_dir}/{name} not found — run `python train_toy.py{flag}` first")
    models = {key: load_for_decoding(os.path.join(args.toy_dir, name), args.device) for key, name in names.items()}
    data = ToyData(args.n_stories, args.seed)
    prompts = data.prompts(args.prompts)
    print(f"toy: {len(prompts)} prompts, up to {args.max_new_tokens} new tokens, {torch.get_num_threads()} thread(s)")
    rows = side_by_side(models, prompts, args.max_new_tokens, data.eos_id, args.repeats, args.prune_threshold,
                        device=args.device)
    print_rows(rows)
    header = ["# Toy task: Speculative Streaming vs Medusa vs two-model SD vs prompt lookup\n",
              f"Machine: {machine_description(args.device)}.\n",
              f"Command: `python bench.py baselines --prompts {args.prompts} --repeats {args.repeats}` (after "
              "`python train_toy.py --gamma 4`, `--method medusa --gamma 4`, `--method draft`): held-out prompts, up to "
              f"{args.max_new_tokens} new tokens, batch 1, greedy, {torch.get_num_threads()} thread(s), CPU unless "
              "stated, one process, every decoder run back to back on each prompt, median of "
              f"{args.repeats}. SS and Medusa: γ = 4 on the same base, same steps and learning rate; two-model SD and "
              "prompt lookup verify with the pretrained base. Tokens per call count the root/bonus token.\n"]
    write_comparison(os.path.join(args.results_dir, "toy_baselines"), "toy", header, rows, extra_parameters(models),
                     None, dict(setup=vars(args)))


def task_models(args: argparse.Namespace) -> dict[str, GPT]:
    """The task's models that `task` compares: the next-token target and those of --methods (the recipe's SS /
    Medusa checkpoints, the draft model), each checked to exist."""
    task, folder = args.task, args.task_dir
    files = dict(target=os.path.join(folder, f"{task}_ntp.pt"), ss=drafter_path(args, "ss", task),
                 medusa=drafter_path(args, "medusa", task), draft=os.path.join(folder, f"{task}_draft.pt"))
    files = {key: path for key, path in files.items()
             if key == "target" or key in args.methods or (key == "draft" and "two-model" in args.methods)}
    for key, path in files.items():
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} not found — run `python train_task.py --task {task} --out-dir {folder} --mode "
                             f"{args.mode} --stream-targets {args.stream_targets}` first")
    return {key: load_for_decoding(path, args.device) for key, path in files.items()}


def run_task(args: argparse.Namespace):
    """A real task: quality of every model, and every decoder side by side on a fixed test subset; at --dtype (then
    also the outputs that differ from float32's), the drafters scoring the --draft-vocab most frequent tokens."""
    from data import EOS
    task, eos = args.task, EOS
    models = task_models(args)
    examples, prompts, max_new, text = task_setup(args, args.task, "test")
    examples, prompts = (x[:max(args.n_eval, args.prompts)] for x in (examples, prompts))  # fixed: the first ones
    float32 = {key: copy.deepcopy(m) for key, m in models.items()} if args.dtype != "float32" else {}
    draft_ids = task_draft_vocabulary(args, task, args.draft_vocab)
    for key, model in models.items():
        cast(model, args.dtype).trim_draft_vocab(draft_ids if key in ("ss", "medusa") else None)
    settings = settings_line(models["target"], args.dtype, draft_ids)
    print(f"{task}: {args.n_eval} test examples for quality, {args.prompts} for speed, up to {max_new} new tokens, "
          f"{torch.get_num_threads()} thread(s), {args.device}; {settings}")
    outputs, quality_of, differences = task_quality(args, models, float32, examples, prompts, max_new, text)
    print("quality:", {k: {m: fmt(v) for m, v in q.items()} for k, q in quality_of.items()})
    rows = side_by_side(models, prompts[:args.prompts], max_new, eos, args.repeats, args.prune_threshold,
                        lookup="lookup" in args.methods, device=args.device, float32_target=float32.get("target"))
    print_rows(rows)
    flags = (f" --methods {' '.join(args.methods)}" if set(args.methods) != set(METHODS) else "") + (
        f" --dtype {args.dtype}" if args.dtype != "float32" else "") + (
        f" --draft-vocab {args.draft_vocab}" if args.draft_vocab else "")
    header = [f"# {task}: Speculative Streaming vs the baselines\n",
              f"Command: `python bench.py task --task {task} --n-eval {args.n_eval} --prompts {args.prompts} --repeats "
              f"{args.repeats}{flags}` (after `make train-tasks`): the first {args.n_eval} test examples for quality, "
              f"the first {min(args.prompts, len(prompts))} for speed; batch 1, greedy, {torch.get_num_threads()} "
              f"thread(s), {args.device}, one process, every decoder run back to back on each prompt, median of "
              f"{args.repeats}. Target of two-model SD and prompt lookup: the next-token LoRA model. Tokens per call "
              "count the root/bonus token.\n", f"Machine: {machine_description(args.device)}.\n",
              f"Settings: {settings}.\n"] + precision_lines(differences, rows, args)
    if quality_of:
        header += models_markdown(quality_of, outputs, examples[:min(3, args.n_eval)])
    write_comparison(os.path.join(args.results_dir, task + variant(args.dtype, args.draft_vocab)), task, header, rows,
                     extra_parameters(models), quality_of or None,
                     dict(task=task, n_eval=args.n_eval, n_speed_prompts=args.prompts, max_new_tokens=max_new,
                          config=vars(models["target"].config), dtype=args.dtype, draft_vocab=args.draft_vocab,
                          machine=machine_description(args.device), dtype_differences=differences))


def task_quality(args: argparse.Namespace, models: dict[str, GPT], float32: dict[str, GPT], examples: list,
                 prompts: list[list[int]], max_new: int, text) -> tuple[dict, dict, dict]:
    """Each model's greedy outputs on the first --n-eval examples and their quality (E2E: name realisation too), at
    the models' dtype; for each model in `float32` (its float32 copy, when --dtype is not float32) how many outputs
    differ from float32's and whether each first difference is a near tie (benchmarks.precision)."""
    from data import EOS
    outputs, quality_of, differences = {}, {}, {}
    evaluated = list(zip(prompts[:args.n_eval], examples))
    for key in ("target", "ss", "medusa") if args.n_eval > 0 else ():
        if key not in models:
            continue
        ids = [generate_autoregressive(models[key], p, max_new, EOS).tokens
               for p, _ in tqdm(evaluated, desc=f"quality: {key}", leave=False)]
        outputs[key] = [text(t, ex) for t, (_, ex) in zip(ids, evaluated)]
        quality_of[key] = quality(args.task, outputs[key], [ex.references for _, ex in evaluated])
        if args.task == "e2e":  # % of outputs that name the MR's restaurant / landmark (seen in training or not)
            quality_of[key].update(realisation(outputs[key], examples, training_values(args)))
        if key in float32:
            differences[key] = dtype_differences(models[key], float32[key], [p for p, _ in evaluated], ids, max_new,
                                                 EOS)
    return outputs, quality_of, differences


def precision_lines(differences: dict[str, dict], rows: list[dict], args: argparse.Namespace) -> list[str]:
    """The header's account of a reduced --dtype: per model, the outputs that differ from float32's and their near
    ties; the target's AR step in both dtypes, and the fastest SS / Medusa setting against AR in float32."""
    if args.dtype == "float32":
        return []
    counts = "; ".join(f"{key}: {d['differing']} of {d['prompts']} differ ({d['near_ties']} at a near tie, "
                       f"{d['beyond']} beyond)" for key, d in differences.items()) or "not measured (--n-eval 0)"
    ar = {r["model"]: r for r in rows if r["method"] == "autoregressive"}
    speed = (f"AR of the target: {ar['target float32']['ms_per_token']:.2f} ms per token in float32, "
             f"{ar['target']['ms_per_token']:.2f} in {args.dtype}")
    for method in ("ss", "medusa"):
        best = best_of(rows, method)
        if best:
            speed += (f"; fastest {method} setting ({best['name']}): {best['speedup']:.2f}x over AR in {args.dtype}, "
                      f"{ar['target float32']['time'] / best['time']:.2f}x over the target's AR in float32")
    print(f"{args.dtype} AR vs float32 AR: {counts}\n{speed}")
    return [f"Precision: greedy AR in {args.dtype} against greedy AR in float32, same model, the quality examples: "
            f"{counts}. A near tie: at the first difference, the float64 margin between the two tokens is within "
            f"the two precisions' rounding (benchmarks/precision.py); SS is compared with AR at {args.dtype} "
            f"(column \"outputs ≠ greedy\"). {speed}.\n"]


def training_values(args: argparse.Namespace) -> dict[str, set[str]]:
    """E2E: the `name` and `near` values of the training MRs."""
    from data import load_task, mr_values
    values = [mr_values(ex.prompt) for ex in load_task("e2e", "train", args.data_dir)]
    return {slot: {v[slot] for v in values if slot in v} for slot in ("name", "near")}


def by_training_values(args: argparse.Namespace, examples: list, prompts: list, seen: bool) -> tuple[list, list]:
    """E2E: the examples (and prompts) whose MR values all occur in the training MRs (seen=True: inputs like the
    training inputs), or those with at least one value that never does (seen=False; e.g. eatType[pub]: the
    training file has coffee shops only). Compared delexicalised, so the name and landmark never count."""
    from data import load_task, mr_values
    if args.task != "e2e":
        raise SystemExit("error: --mr-values applies to E2E (MRs with attribute values) only — drop it for other tasks")
    known = {kv for ex in load_task("e2e", "train", args.data_dir, True) for kv in mr_values(ex.prompt).items()}
    keep = [i for i, ex in enumerate(examples) if all(kv in known for kv in mr_values(ex.prompt).items()) == seen]
    return [examples[i] for i in keep], [prompts[i] for i in keep]


def recipe_quality(args: argparse.Namespace, models: dict[str, GPT], examples: list, prompts: list, max_new: int,
                   text, n_eval: int) -> dict[str, dict]:
    """`ablation`: each model's quality and E2E name realisation on the first n_eval examples, how many of its
    outputs equal the next-token model's (the first of `models`), and its first samples."""
    from data import EOS
    seen = training_values(args) if args.task == "e2e" else None
    rows, ntp_ids = {}, None
    for name, model in models.items():
        ids = [generate_autoregressive(model, p, max_new, EOS).tokens
               for p in tqdm(prompts[:n_eval], desc=f"quality: {name}", leave=False)]
        outputs = [text(t, ex) for t, ex in zip(ids, examples)]
        ntp_ids = ntp_ids or ids
        rows[name] = dict(quality=quality(args.task, outputs, [ex.references for ex in examples[:n_eval]]),
                          realisation=realisation(outputs, examples, seen) if seen else {},
                          same_as_ntp=sum(a == b for a, b in zip(ids, ntp_ids)), samples=outputs[:3])
    return rows


def run_ablation(args: argparse.Namespace):
    """Training recipes side by side on one task: for each SS checkpoint <task>_<recipe>_pruned.pt (default: the
    2 x 2 of shared/frozen mode x data/self stream targets) its quality, E2E name realisation, outputs equal to the
    next-token model's, and decoding statistics (CR, tokens per call, per-depth acceptance, wall speedup); the
    streams scoring the --draft-vocab most frequent tokens of the training completions."""
    from data import EOS
    examples, prompts, max_new, text = task_setup(args, args.task, args.split)
    if args.mr_values != "all":
        examples, prompts = by_training_values(args, examples, prompts, args.mr_values == "seen")
    n_eval = min(args.n_eval, len(examples))
    paths = dict(ntp=os.path.join(args.task_dir, f"{args.task}_ntp.pt"),
                 **{r: os.path.join(args.task_dir, f"{args.task}_{r}_pruned.pt") for r in args.recipes})
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        raise SystemExit(f"error: {missing[0]} not found — train it (`make ablation` trains the default recipes)")
    models = {name: load_for_decoding(path, args.device) for name, path in paths.items()}
    draft_ids = task_draft_vocabulary(args, args.task, args.draft_vocab)
    for recipe in args.recipes:
        models[recipe].trim_draft_vocab(draft_ids)
    print(f"{args.task} ({args.split}): {n_eval} examples for quality, {min(args.prompts, len(prompts))} for speed, "
          f"{torch.get_num_threads()} thread(s), {args.device}; {settings_line(models['ntp'], 'float32', draft_ids)}")
    rows = recipe_quality(args, models, examples, prompts, max_new, text, n_eval)
    decoders = {f"ar:{name}": ((lambda p, m=model: generate_autoregressive(m, p, max_new, EOS)), None)
                for name, model in models.items()}
    for recipe in args.recipes:
        for k, cap, stream_pass in ABLATION_SETTINGS:
            decoders[f"{recipe} k={k} cap={cap} {stream_pass}"] = (
                lambda p, m=models[recipe], kw=dict(k=k, tree_cap=cap, stream_pass=stream_pass):
                generate_speculative(m, p, max_new, eos_id=EOS, **kw), f"ar:{recipe}")
    speed = compare(decoders, prompts[:args.prompts], args.repeats, args.device)
    for recipe in args.recipes:
        rows[recipe]["settings"] = {name.split(" ", 1)[1]: r for name, r in speed.items()
                                    if name.startswith(recipe + " ")}
    write_ablation(args, rows, n_eval, min(args.prompts, len(prompts)), machine_description(args.device))


def run_draft_cost(args: argparse.Namespace):
    """Cost of drafting at one node on a task's models: Medusa's heads vs SS's γ stream rows through the MSA
    blocks plus the shared LM head (after verification, as in stream_pass="accepted")."""
    paths = [drafter_path(args, name, args.task) for name in ("ss", "medusa")]
    for path in paths:
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} not found — train the task's SS and Medusa models first: `python "
                             f"train_task.py --task {args.task} --method ss medusa --mode {args.mode} --stream-targets "
                             f"{args.stream_targets} --out-dir {args.task_dir}`")
    ss, medusa = (load_for_decoding(path, args.device) for path in paths)
    cache = KVCache(ss.config, 1, 200, device=args.device)
    cache.length = 150  # a 150-token context, as in the middle of a decode
    h = torch.randn(1, ss.config.n_embd, device=args.device)
    with torch.inference_mode():
        ms = mean_ms(dict(
            streams=lambda: ss.streams_at(h, cache),
            head=lambda: ss.lm_head(torch.randn(ss.config.n_streams, ss.config.n_embd, device=args.device)),
            heads=lambda: medusa.medusa(h[0])), 200, Clock(args.device))
    print(f"{args.task} models, {torch.get_num_threads()} thread(s), drafting at one node: Medusa heads "
          f"{ms['heads']:.3f} ms; SS {ms['streams'] + ms['head']:.3f} ms = streams through the MSA blocks "
          f"{ms['streams']:.3f} ms + shared LM head ({ss.config.n_streams} rows) {ms['head']:.3f} ms")
