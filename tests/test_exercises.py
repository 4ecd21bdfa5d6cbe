"""The classroom exercises (exercises/): every stub fails its check with a helpful message, every solution passes,
stubs and solutions have the same signatures and docstrings, and typical wrong answers get their specific hint.

A wrong answer is made by editing one line of the solution (old -> new) in a copy under tmp_path; the checker
imports that copy by path, as it would a student's file.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # exercises/ is a folder of the checkout, not an installed module
from exercises import checker  # noqa: E402

EX_DIR, SOLUTIONS = ROOT / "exercises", ROOT / "exercises" / "solutions"


@pytest.mark.parametrize("number", sorted(checker.EXERCISES))
def test_stub_fails_with_a_helpful_message(number):
    ok, report = checker.run(number, EX_DIR / checker.EXERCISES[number])
    assert not ok
    assert "is not written yet" in report and "NotImplementedError" in report
    assert "Traceback" not in report


@pytest.mark.parametrize("number", sorted(checker.EXERCISES))
def test_solution_passes(number):
    ok, report = checker.run(number, SOLUTIONS / checker.EXERCISES[number])
    assert ok, report
    assert report.count("  ok  ") >= 3


@pytest.mark.parametrize("number", sorted(checker.EXERCISES))
def test_stub_and_solution_have_the_same_functions(number):
    name = checker.EXERCISES[number]
    stub, solution = checker.load_module(EX_DIR / name), checker.load_module(SOLUTIONS / name)
    assert checker.signatures(stub) == checker.signatures(solution) != {}
    for fn in checker.signatures(solution):
        assert getattr(stub, fn).__doc__ == getattr(solution, fn).__doc__, f"{name}: {fn}'s docstrings differ"
    assert (EX_DIR / name).with_suffix(".md").is_file(), f"{name} has no statement"


def test_solutions_are_lossless_in_the_decode_loop():
    ok, report = checker.run(checker.FINAL, folder=SOLUTIONS)
    assert ok, report
    assert "== greedy decoding" in report


def broken_copy(tmp_path: Path, number: int, old: str, new: str) -> Path:
    """A copy of the solution of exercise `number` with `old` replaced by `new` (exactly once)."""
    source = (SOLUTIONS / checker.EXERCISES[number]).read_text()
    assert source.count(old) >= 1, f"the mistake no longer applies to the solution: {old!r}"
    path = tmp_path / checker.EXERCISES[number]
    path.write_text(source.replace(old, new))
    return path


MISTAKES = [  # (exercise, what the student wrote instead, words the explanation must contain)
    (1, "for i in range(1, j + 1):", "for i in range(1, (n_streams if j else 0) + 1):", "comes later and is hidden"),
    (1, "mask[row, :t + 1] = True", "mask[row, :T] = True", "never a later position"),
    (1, "mask[row, i * T + t] = True", "mask[row, i * T:(i + 1) * T] = True", "never another position's streams"),
    (1, "dtype=torch.bool)", "dtype=torch.float32)", "expected torch.bool"),
    (2, "    return main + stream_emb", "    return stream_emb", "M_t + P_j"),
    (2, 'scores_streams = scores_streams.masked_fill(~earlier_or_self, float("-inf"))', "",
     "changed when the key/value of stream"),
    (2, "/ math.sqrt(hs)", "", "not scaled"),
    (2, "return att @ torch.cat([v_main, v_streams])", "return att[:, -G:] @ v_streams", "main values"),
    (3, "i = t + 1 + j", "i = t + max(j, 1)", "Off by one"),
    (3, "i = t + 1 + j", "i = t + 2 + j", "Off by one the other way"),
    (3, "if prompt_len <= i < T:\n                targets[t, j] = tokens[i]",
     "if prompt_len <= i % T:\n                targets[t, j] = tokens[i % T]", "must not wrap around"),
    (3, "if prompt_len <= i < T:", "if i < T:", "is a prompt token"),
    (3, "(1.0 if j == 0 else alpha)", "alpha", "alpha multiplies the main term"),
    (3, "targets[valid, j], reduction=\"sum\") / max(int(valid.sum()), 1)",
     "targets[valid, j])", "NaN"),
    (4, "return [cache_len + d for d in depths]", "return [cache_len + i for i in range(len(depths))]",
     "you used the node index"),
    (4, "return [cache_len + d for d in depths]", "return list(depths)", "add cache_len"),
    (4, "            a = parents[a]", "            a = a - 1", "not an ancestor (a sibling or cousin)"),
    (4, "mask[:, :cache_len] = True", "", "every committed cache entry"),
    (4, "for parent in level:", "for parent in level[:1]:", "hangs under EVERY depth-(j-1) node"),
    (5, "tokens[node] == main_argmax[path[-1]]", "tokens[node] == main_argmax[node]", "its OWN argmax"),
    (5, "parents[node] == path[-1] and ", "", "its parent is node"),
    (5, "            path.append(node)\n", "            path.append(node)\n        elif parents[node] == path[-1]:\n"
     "            break\n", "Try every child"),
    (5, "torch.cat([entries[:cache_len], entries[accepted]])",
     "entries[:cache_len + len(path)]", "The cache was not compacted"),
    (6, "early_exit_probs[p, tokens[i]]", "early_exit_probs[i, tokens[i]]", "parent's row"),
    (6, "kept[p] and ", "", "takes its whole subtree with it"),
    (6, ">= threshold", "> threshold", "strictly below the threshold"),
    (6, "for i in range(1, len(tokens)):", "for i in range(len(tokens)):", "never pruned"),
]


@pytest.mark.parametrize("number, old, new, hint", MISTAKES, ids=[f"ex{m[0]}-{m[3][:30]}" for m in MISTAKES])
def test_typical_mistake_gets_its_hint(tmp_path, number, old, new, hint):
    ok, report = checker.run(number, broken_copy(tmp_path, number, old, new))
    assert not ok
    assert hint in report, report
    assert "Traceback" not in report and "AssertionError" not in report


def test_final_check_catches_a_broken_piece(tmp_path):
    for name in checker.EXERCISES.values():
        shutil.copy(SOLUTIONS / name, tmp_path / name)
    broken_copy(tmp_path, 5, "torch.cat([entries[:cache_len], entries[accepted]])", "entries[:cache_len + len(path)]")
    ok, report = checker.run(checker.FINAL, folder=tmp_path)
    assert not ok and "not lossless" in report, report


def test_command_line_exit_codes():
    run = lambda *args: subprocess.run([sys.executable, "-m", "exercises", "check", *args], cwd=ROOT,
                                       capture_output=True, text=True)
    stub = run("2")
    assert stub.returncode == 1 and "NOT YET" in stub.stdout
    solution = run("4", "--module", str(SOLUTIONS / checker.EXERCISES[4]))
    assert solution.returncode == 0 and "all good" in solution.stdout
    assert run("9").returncode == 1


def test_final_check_loop_is_the_real_decode_loop():
    """With the solutions, check 7's loop makes the same calls as generate.generate_speculative (same trees, same
    accepted paths), so a student's pieces are judged in the method's own decode loop."""
    from generate import generate_speculative
    students = {n: checker.load_module(SOLUTIONS / name) for n, name in checker.EXERCISES.items()}
    model = checker.toy_model()
    for prompt, gamma, k, threshold in [([1, 2, 3], 3, 2, None), ([4, 0], 2, 3, 0.15), ([5], 1, 1, None)]:
        reference = generate_speculative(model, prompt, 20, gamma=gamma, k=k, prune_threshold=threshold,
                                         stream_pass="accepted")
        tokens, stats = checker.student_decode(model, students, prompt, 20, gamma, k, threshold)
        assert tokens == reference.tokens
        assert stats["calls"] == reference.forward_calls
        assert stats["accepted_drafts"] == sum(reference.depth_accepted)
