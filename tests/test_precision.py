"""Reduced precision (generate.cast_for_decoding: a model loaded in float32, LoRA merged, then cast). Greedy SS equals
greedy AR *at the same dtype*: where the two differ, the first difference must be a near tie (the two tokens' float64
logits closer than the dtype's rounding, benchmarks.precision.near_tie), and every difference is counted and printed
(`pytest -s` shows the counts), never hidden. The same for the differences between dtypes (bfloat16 AR against
float32 AR). A dtype that does not run on this machine (cast_for_decoding refuses it) is skipped, saying why."""
import copy

import pytest
import torch

import decode
from benchmarks.precision import (cpu_model_and_flags, first_difference, machine_description, near_tie,
                                  output_differences)
from generate import cast_for_decoding, generate_autoregressive, generate_speculative
from helpers import TRAIN_VOCAB, TRAINED_THRESHOLD, periodic_prompts, random_prompts
from model import GPT

SETTINGS = [dict(k=1), dict(k=3, tree_cap=16, prune_threshold=TRAINED_THRESHOLD), dict(k=2, stream_pass="accepted"),
            dict(gamma=2, k=2, tree_cap=5)]  # cycled over the prompts


def for_decoding(model64: GPT, dtype: str) -> GPT:
    """A copy of a float64 test model as the benchmarks decode: float32, LoRA merged, cast to `dtype` (the test is
    skipped where this machine cannot run it)."""
    model = copy.deepcopy(model64).float()
    model.merge_lora()
    try:
        return cast_for_decoding(model, dtype)
    except ValueError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_speculative_equals_autoregressive_at_the_same_dtype(trained_model, dtype):
    """120 prompts (windows of the training sequence and random ones), every SS setting kind: SS differs from AR at
    the same dtype rarely, and only at near ties; so does AR at the dtype from AR in float32."""
    model, float32 = for_decoding(trained_model, dtype), for_decoding(trained_model, "float32")
    prompts = periodic_prompts(60, seed=21) + random_prompts(60, TRAIN_VOCAB, seed=22)
    ar = [generate_autoregressive(model, p, 24).tokens for p in prompts]
    ss = [generate_speculative(model, p, 24, **SETTINGS[i % len(SETTINGS)]).tokens for i, p in enumerate(prompts)]
    same = output_differences(trained_model, [model], prompts, ss, ar)
    ar32 = [generate_autoregressive(float32, p, 24).tokens for p in prompts]
    between = output_differences(trained_model, [model, float32], prompts, ar, ar32)
    print(f"\n{dtype}: SS differs from AR ({dtype}) on {same['differing']} of {len(prompts)} prompts, "
          f"{same['near_ties']} at a near tie; AR ({dtype}) differs from AR (float32) on {between['differing']}, "
          f"{between['near_ties']} at a near tie")
    assert same["beyond"] == 0 and between["beyond"] == 0, (same, between)
    assert same["differing"] <= len(prompts) // 20


def test_near_ties_are_told_from_real_differences(rand_model):
    """A random model's logits lie close together: bfloat16 flips several float32 greedy tokens, each a near tie
    (and SS at bfloat16 may differ from AR at bfloat16, only at near ties). A token that is clearly not the argmax
    (the float64 model's 5th choice) is no near tie."""
    bf16, float32 = for_decoding(rand_model, "bfloat16"), for_decoding(rand_model, "float32")
    prompts = random_prompts(30, rand_model.config.vocab_size, seed=23)
    ar16 = [generate_autoregressive(bf16, p, 16).tokens for p in prompts]
    ar32 = [generate_autoregressive(float32, p, 16).tokens for p in prompts]
    r = output_differences(rand_model, [bf16, float32], prompts, ar16, ar32)
    ss16 = [generate_speculative(bf16, p, 16, k=3, tree_cap=16).tokens for p in prompts]
    same = output_differences(rand_model, [bf16], prompts, ss16, ar16)
    print(f"\nrandom model: AR (bfloat16) differs from AR (float32) on {r['differing']} of {len(prompts)} prompts, "
          f"{r['near_ties']} at a near tie; SS from AR (bfloat16) on {same['differing']}, {same['near_ties']} at a "
          "near tie")
    assert r["differing"] >= 3 and r["beyond"] == 0 and same["beyond"] == 0, (r, same)
    prompt, out = prompts[0], ar32[0]
    with torch.no_grad():
        fifth = int(rand_model(torch.tensor([prompt + out[:3]])).logits[0, -1].topk(5).indices[-1])
    margin, tolerance = near_tie(rand_model, [bf16, float32], prompt + out[:3], fifth, out[3])
    assert margin > tolerance
    r = output_differences(rand_model, [bf16, float32], [prompt], [out[:3] + [fifth]], [out])
    assert (r["differing"], r["near_ties"], r["beyond"]) == (1, 0, 1)


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_cast_for_decoding_casts_or_refuses_in_one_line(rand_model, monkeypatch):
    model = for_decoding(rand_model, "bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.lm_head.weight_t.dtype == torch.bfloat16  # the merged inference layout is cast too
    with pytest.raises(ValueError, match="dtype='fp8' must be one of float32, bfloat16, float16"):
        cast_for_decoding(model, "fp8")

    def missing_kernel(*args, **kwargs):
        raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'\nmore detail")

    monkeypatch.setattr(GPT, "forward_nodes", missing_kernel)
    with pytest.raises(ValueError) as refused:
        cast_for_decoding(copy.deepcopy(model), "float16")
    message = str(refused.value)
    assert message.startswith("dtype=float16 does not run on cpu") and message.endswith(" — decode in float32")
    assert "\n" not in message


def test_machine_description_names_the_cpu_its_vector_extensions_and_the_blas():
    line = machine_description()
    name, flags = cpu_model_and_flags()
    assert line.startswith(f"CPU {name},") and f"torch {torch.__version__}" in line and "BLAS" in line
    assert all(flag in line for flag in flags)


def test_decode_py_at_a_reduced_dtype(toy_dir, capsys, monkeypatch):
    """decode.py --dtype bfloat16 compares SS with AR at bfloat16 (equal, or a near tie, said so); a dtype that does
    not run is refused in one line."""
    status = decode.main(["--model", str(toy_dir), "--prompt", "the fox", "--max-new-tokens", "12", "--dtype",
                          "bfloat16"])
    verdict = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("equal to greedy AR"))
    assert (status == 0 and verdict.endswith("yes")) or (status == 1 and "a near tie in torch.bfloat16" in verdict)
    monkeypatch.setattr(GPT, "forward_nodes", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no Half kernel")))
    with pytest.raises(SystemExit, match="error: --dtype float16: dtype=float16 does not run on cpu"):
        decode.main(["--model", str(toy_dir), "--prompt", "the fox", "--dtype", "float16"])
