"""Reduced precision in the benchmarks: the machine a result was measured on (`machine_description`, a line of every
benchmark's header: CPU model, the vector extensions that matter for bfloat16 / float16, the BLAS of the torch build)
and how two decodes of the same prompts differ (`output_differences`: how many outputs differ, and whether each
first difference is a near tie, `near_tie`)."""
from __future__ import annotations

import copy
import math
import os
import platform
import re

import torch

from generate import generate_autoregressive, generate_speculative
from model import GPT

VECTOR_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                "amx_tile", "amx_bf16", "amx_fp16")  # the lscpu flags that decide float32 / bfloat16 / float16 speed


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and its VECTOR_FLAGS, as /proc/cpuinfo (lscpu) lists them; elsewhere
    platform.processor() and no flags."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown CPU", []
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    present = set(flags.group(1).split()) if flags else set()
    return (name.group(1).strip() if name else platform.processor() or "unknown CPU",
            [flag for flag in VECTOR_FLAGS if flag in present])


def machine_description(device: str = "cpu") -> str:
    """One line naming the machine: CPU model, cores, vector extensions, torch version, BLAS and oneDNN of the torch
    build, the kernels torch dispatches to, and the GPU when `device` is one."""
    name, flags = cpu_model_and_flags()
    config = torch.__config__.show()
    blas, mkl, onednn = ((re.search(pattern, config) or [None, "none"])[1] for pattern in
                         (r"BLAS_INFO=(\w+)", r"Math Kernel Library Version ([\w.]+)", r"MKL-DNN v([\d.]+)"))
    extensions = " ".join(flags) or "none of " + " ".join(VECTOR_FLAGS)
    line = (f"CPU {name}, {os.cpu_count()} cores, vector extensions: {extensions}; torch {torch.__version__}, "
            f"BLAS {blas} (MKL {mkl}), oneDNN {onednn}, CPU kernels {torch.backends.cpu.get_cpu_capability()}")
    if str(device).startswith("cuda"):
        line += f"; GPU {torch.cuda.get_device_name(device)}"
    return line


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two outputs differ (the shorter one's length when it is a prefix), None if equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@torch.inference_mode()
def near_tie(reference: GPT, models: list[GPT], context: list[int], a: int, b: int) -> tuple[float, float]:
    """Two decodes of the same model, at the precisions of `models`, chose tokens a and b after `context`. Returns the
    float64 `reference` model's margin |z(a) - z(b)| and the tolerance 2 max(δ + u) over `models`: δ is the largest
    error of that model's logits against the reference's (one forward of the context, over the vocabulary), u its
    dtype's spacing at the larger of z(a), z(b) (one rounding of a logit). Margin <= tolerance: a near tie, two logits
    closer than that precision can tell apart, so either decode's choice is its rounding's."""
    idx = torch.tensor([context], device=next(reference.parameters()).device)
    exact = reference(idx).logits[0, -1]  # (V,) float64
    top = float(max(exact[a].abs(), exact[b].abs()))
    tolerance = 0.0
    for model in models:
        logits = model(idx).logits[0, -1]
        spacing = torch.finfo(logits.dtype).eps * 2.0 ** math.floor(math.log2(max(top, 1e-30)))
        tolerance = max(tolerance, 2 * (float((logits.double() - exact).abs().max()) + spacing))
    return abs(float(exact[a] - exact[b])), tolerance


def output_differences(reference: GPT, models: list[GPT], prompts: list[list[int]], outputs: list[list[int]],
                       others: list[list[int]]) -> dict:
    """Outputs of two decodes of the same prompts (say bfloat16 AR and float32 AR, by `models`): how many differ and,
    at each first difference, whether it is a near tie (`near_tie`). Returns the counts prompts, differing,
    near_ties and beyond (differences that rounding does not explain: a bug, never expected), and each first
    difference's margin and tolerance."""
    differing, ties = 0, []
    for prompt, out, other in zip(prompts, outputs, others):
        i = first_difference(out, other)
        if i is None:
            continue
        differing += 1
        if i < min(len(out), len(other)):  # else one output is a prefix of the other: never a near tie
            ties.append(near_tie(reference, models, prompt + out[:i], out[i], other[i]))
    near = sum(margin <= tolerance for margin, tolerance in ties)
    return dict(prompts=len(prompts), differing=differing, near_ties=near, beyond=differing - near,
                margins=[dict(margin=m, tolerance=t) for m, t in ties])


def dtype_differences(model: GPT, float32: GPT, prompts: list[list[int]], outputs: list[list[int]], max_new: int,
                      eos_id: int | None) -> dict:
    """`model` at a reduced dtype against `float32`, the same model in float32: the greedy AR `outputs` of `model`
    against float32's own, counted by `output_differences` with a float64 copy of the float32 model as reference."""
    others = [generate_autoregressive(float32, p, max_new, eos_id).tokens for p in prompts]
    return output_differences(copy.deepcopy(float32).double(), [model, float32], prompts, outputs, others)


def speculative_differences(model: GPT, prompts: list[list[int]], max_new: int, eos_id: int | None,
                            **ss_kwargs) -> dict:
    """SS (with `ss_kwargs`) against AR, both at `model`'s own dtype, on `prompts`, counted by `output_differences`
    with a float64 copy of the same weights as reference."""
    ar = [generate_autoregressive(model, p, max_new, eos_id).tokens for p in prompts]
    ss = [generate_speculative(model, p, max_new, eos_id=eos_id, **ss_kwargs).tokens for p in prompts]
    return output_differences(copy.deepcopy(model).double(), [model], prompts, ss, ar)
