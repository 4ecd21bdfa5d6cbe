"""The benchmarks package: the harness's interleaving loop, the profiler, which times generate.py's own decode
calls through hooks that it puts back afterwards (a tiny toy model; a few seconds), and the study's CR ceiling."""
import pytest

import generate
import tree
from benchmarks.harness import Clock, interleave
from benchmarks.profile import PROFILE_PARTS, CallTimed, PartTimer, hook_points, patched, profile_model
from benchmarks.study import perfect_drafter_cr
from helpers import toy_greedy
from model import KVCache


def test_interleave_runs_every_run_on_every_item_in_turn():
    calls = []
    runs = {name: (lambda item, name=name: calls.append((name, item)) or f"{name}{item}") for name in "ab"}
    times, results = interleave(runs, [1, 2], 2, Clock(), warmup=1)
    assert calls == [("a", 1), ("b", 1)] + [("a", 1), ("b", 1), ("a", 2), ("b", 2)] * 2  # warm-up, then 2 repeats
    assert results == {"a": [["a1", "a2"]] * 2, "b": [["b1", "b2"]] * 2}
    assert all(len(t) == 2 and min(t) >= 0 for t in times.values())


def test_bench_profile_times_every_part_of_one_call(toy_dir, tmp_path):
    """`bench.py profile`: each setting times the parts of its own call (drafting and tree parts only in SS calls,
    the stream sub-pass only in the accepted pass), the same call without hooks and the bare forward; the table is
    written with its command."""
    import bench
    model, data, prompt, _ = toy_greedy(toy_dir, "the owl", 12)
    profile = profile_model(model, prompt, data.eos_id, 12, "cpu", reps=10, prune_threshold=0.05)
    assert list(profile["columns"]) == ["AR step", "SS k=1, tree pass", "SS k=1, accepted pass",
                                        "SS k=3, cap 16, prune 0.05, tree pass", "SS k=3, cap 16, prune 0.05, accepted pass"]
    for name, column in profile["columns"].items():
        assert set(column["parts"]) <= set(PROFILE_PARTS) and column["bare"] > 0 and column["unhooked"] > 0
        assert {"embed", "lower blocks", "verification LM head + argmax", "Python bookkeeping"} <= set(column["parts"])
        assert ("drafting LM head + top-k" in column["parts"]) == name.startswith("SS")
        assert ("MSA blocks, γ stream rows of the accepted node" in column["parts"]) == name.endswith("accepted pass")
        main_only = name == "AR step" or name.endswith("accepted pass")
        assert ("MSA blocks, main rows only" in column["parts"]) == main_only
        assert ("pruning head" in column["parts"]) == ("prune" in name and column["n_drafted"] > 1)
    assert 0 < profile["hook_cost"] < 1e-3
    bench.main(["profile", "--toy", "--toy-dir", str(toy_dir), "--toy-gamma", "2", "--n-stories", "100",
                "--max-new-tokens", "12", "--profile-calls", "10", "--results-dir", str(tmp_path)])
    table = (tmp_path / "toy" / "profile.md").read_text()
    assert "python bench.py" in table and "| **whole call** |" in table and "call / bare forward" in table
    assert "without the timing hooks" in table
    with pytest.raises(SystemExit, match="train_task.py"):
        bench.main(["profile", "--task-dir", str(tmp_path), "--results-dir", str(tmp_path)])


def test_profile_hooks_leave_the_code_as_it_was(toy_dir):
    """The hooks are in place only during the timed decode, which they do not change; everything is put back, also
    when the decode raises."""
    model, data, prompt, greedy = toy_greedy(toy_dir, "the owl", 12)
    before = {(id(owner), name): getattr(owner, name) for owner, name, _ in hook_points(model)}
    timer = PartTimer(Clock())
    timer.start = 0.0  # recording, as during the timed call
    hooks = [(owner, name, timer.hook(part, getattr(owner, name))) for owner, name, part in hook_points(model)]
    with patched(hooks):
        assert generate.generate_speculative(model, prompt, 12, k=2, prune_threshold=0.05,
                                             eos_id=data.eos_id).tokens == greedy
    assert {"embed", "tree building", "cache compaction", "drafting LM head + top-k"} <= set(timer.parts)
    with pytest.raises(CallTimed), patched([(generate, "commit_tokens", timer.marker(generate.commit_tokens))]):
        generate.generate_autoregressive(model, prompt, 12)
    after = {(id(owner), name): getattr(owner, name) for owner, name, _ in hook_points(model)}
    assert after.keys() == before.keys() and all(after[key] == before[key] for key in before)
    assert not {"embed", "lower", "upper", "streams_at"} & set(vars(model))  # the class's methods again
    assert not any(hasattr(f, "__wrapped__") for f in (KVCache.commit, tree.draft_tree, generate.commit_tokens,
                                                       generate.greedy_tokens, model.upper))


def test_perfect_drafter_cr_counts_the_prefill_and_gamma_plus_one_tokens_per_call():
    """Outputs of 1, 6 and 7 tokens take 1, 2 and 3 calls of a drafter that is never wrong at γ = 4 (the prefill
    commits one token, every later call five); greedy decoding takes one call per token."""
    outputs = [generate.GenerationResult(tokens=list(range(n)), forward_calls=n) for n in (1, 6, 7)]
    assert perfect_drafter_cr(outputs, 4) == 14 / 6
    assert perfect_drafter_cr(outputs[1:2], 1) == 6 / 4
