"""The classroom exercises (exercises/): every stub fails its check with a helpful message, every solution passes,
typical wrong answers get their specific hint (and never a wrong one), the final check compares the decode process
and not only the output, the checker survives whatever a student's code does, the fixtures are current, and a
class can be graded, handed out and reset.

A wrong answer is made by editing the solution (old -> new) in a copy under tmp_path; the checker runs that copy in
a child process, as it would a student's file.
"""
import csv
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # exercises/ is a folder of the checkout, not an installed module
from exercises import core, grade, handout  # noqa: E402
from exercises.__main__ import report  # noqa: E402
from exercises.sandbox import run_check  # noqa: E402

EX_DIR, STUBS, SOLUTIONS = ROOT / "exercises", ROOT / "exercises" / "stubs", ROOT / "exercises" / "solutions"
NUMBERS = sorted(core.EXERCISES)


def check(target, source, timeout: float = 20.0):
    """(outcome, the report a student reads) of one check, run as the command line runs it."""
    outcome = run_check(target, source, timeout, quiet=True)
    return outcome, report(target, Path(source), outcome)


def broken_copy(folder: Path, number: int, old: str, new: str) -> Path:
    """A copy of the solution of exercise `number` with `old` replaced by `new` (every occurrence)."""
    source = (SOLUTIONS / core.EXERCISES[number]).read_text()
    assert old in source, f"the mistake no longer applies to the solution: {old!r}"
    path = folder / core.EXERCISES[number]
    path.write_text(source.replace(old, new))
    return path


def student_file(folder: Path, number: int, code: str) -> Path:
    """A student's file for exercise `number`: the stub with `code` appended (it redefines the functions)."""
    path = folder / core.EXERCISES[number]
    path.write_text((STUBS / core.EXERCISES[number]).read_text() + "\n\n" + code)
    return path


# ---------------------------------------------------------------------------------------------------------------
# stubs, solutions, fixtures
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("number", NUMBERS)
def test_stub_fails_with_a_helpful_message(number):
    outcome, text = check(number, EX_DIR / core.EXERCISES[number])
    assert outcome.status == "fail"
    assert "is not written yet" in text and "NotImplementedError" in text and "Traceback" not in text


@pytest.mark.parametrize("number", NUMBERS)
def test_solution_passes(number):
    outcome, text = check(number, SOLUTIONS / core.EXERCISES[number])
    assert outcome.status == "pass", text
    assert len(outcome.passed) >= 3


def test_solutions_pass_the_final_check():
    outcome, text = check(core.FINAL, SOLUTIONS)
    assert outcome.status == "pass", text
    assert sum("equal the reference loop's" in p for p in outcome.passed) == 5


@pytest.mark.parametrize("number", NUMBERS)
def test_stub_and_solution_have_the_same_functions(number):
    name = core.EXERCISES[number]
    load = lambda path: core.load_module(path, number)
    stub, solution = load(STUBS / name), load(SOLUTIONS / name)
    assert core.signatures(stub) == core.signatures(solution) != {}
    assert tuple(core.signatures(stub)) == core.FUNCTIONS[number]
    for fn in core.FUNCTIONS[number]:
        assert getattr(stub, fn).__doc__ == getattr(solution, fn).__doc__, f"{name}: {fn}'s docstrings differ"
    assert (EX_DIR / name).read_text() == (STUBS / name).read_text(), f"exercises/{name} is not the stub"
    assert (EX_DIR / name).with_suffix(".md").is_file(), f"{name} has no statement"


def load_fixture_maker():
    spec = importlib.util.spec_from_file_location("make_fixtures", SOLUTIONS / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def close(a, b) -> bool:
    """JSON values equal, floats to 1e-12 (another torch version may round the last bit differently)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-12
    return a == b


@pytest.mark.parametrize("number", NUMBERS)
def test_fixtures_are_current(number):
    """The committed expected values are what the solutions (and their typical wrong versions) compute today."""
    fresh = json.loads(load_fixture_maker().text(number))
    committed = json.loads((core.FIXTURES / f"ex{number}.json").read_text())
    assert close(fresh, committed), f"fixtures/ex{number}.json is stale: python exercises/solutions/make_fixtures.py"


def test_the_checker_holds_no_answer():
    """The checks compare with the fixtures: they never import the project's implementations of the exercises
    (only the final check runs the project's decode loop, as the reference it compares with)."""
    for path in (EX_DIR / "checks").glob("ex*.py"):
        text = path.read_text()
        for module in ("specstream_minimal", "tree", "generate", "solutions"):
            assert f"from {module} import" not in text and f"import {module}" not in text, (path.name, module)


# ---------------------------------------------------------------------------------------------------------------
# typical mistakes: each gets its hint, and never the hint of another mistake
# ---------------------------------------------------------------------------------------------------------------

ONE_TOO_MANY = ("        if parents[node] == path[-1] and tokens[node] == main_argmax[path[-1]]:\n"
                "            path.append(node)\n",
                "        if parents[node] == path[-1]:\n            path.append(node)\n"
                "            if tokens[node] != main_argmax[path[-2]]:\n                break\n")
MISTAKES = [  # (exercise, solution text, what the student wrote instead, words the report must contain[, not])
    (1, "for i in range(1, j + 1):", "for i in range(1, (n_streams if j else 0) + 1):", "comes later and is hidden"),
    (1, "for i in range(1, j + 1):", "for i in range(1, max(j, 1) + 1):", "the main stream never sees a stream"),
    (1, "mask[row, :t + 1] = True", "mask[row, :T] = True", "never a later position"),
    (1, "mask[row, i * T + t] = True", "mask[row, i * T:(i + 1) * T] = True", "never another position's streams"),
    (1, "dtype=torch.bool)", "dtype=torch.float32)", "expected torch.bool"),
    (2, "    return main + stream_emb", "    return stream_emb", "M_t + P_j"),
    (2, 'scores_streams = scores_streams.masked_fill(~earlier_or_self, float("-inf"))', "",
     "changed when the key/value of stream"),
    (2, ".tril()", ".triu()", "never a later stream"),
    (2, "/ math.sqrt(hs)", "", "not scaled"),
    (2, "/ math.sqrt(hs)", "/ hs", "instead of sqrt(hs)"),
    (2, "return att @ torch.cat([v_main, v_streams])", "return att[:, -G:] @ v_streams", "main values"),
    (2, "dim=1), dim=1)", "dim=1), dim=0)", "wrong axis", "two softmaxes"),
    (2, "return att @ torch.cat([v_main, v_streams])", "return att", "attention weights"),
    (2, "    att = F.softmax(torch.cat([scores_main, scores_streams], dim=1), dim=1)  # (γ, L + γ)\n"
        "    return att @ torch.cat([v_main, v_streams])",
     "    return F.softmax(scores_main, dim=1) @ v_main + F.softmax(scores_streams, dim=1) @ v_streams",
     "ONE softmax over the main keys and the stream keys"),
    (3, "i = t + 1 + j", "i = t + max(j, 1)", "Off by one"),
    (3, "i = t + 1 + j", "i = t + 2 + j", "Off by one the other way"),
    (3, "if prompt_len <= i < T:\n                targets[t, j] = tokens[i]",
     "if prompt_len <= i % T:\n                targets[t, j] = tokens[i % T]", "must not wrap around"),
    (3, "if prompt_len <= i < T:", "if i < T:", "is a prompt token"),
    (3, "dtype=torch.long)", "dtype=torch.float32)", "use dtype=torch.long"),
    (3, "(1.0 if j == 0 else alpha)", "alpha", "alpha multiplies the main term"),
    (3, "(1.0 if j == 0 else alpha)", "(1.0 if j == 0 else alpha / (logits.size(1) - 1))", "are averaged"),
    (3, 'targets[valid, j], reduction="sum") / max(int(valid.sum()), 1)', "targets[valid, j])", "NaN"),
    (4, "return [cache_len + d for d in depths]", "return [cache_len + i for i in range(len(depths))]",
     "you used the node index"),
    (4, "return [cache_len + d for d in depths]", "return list(depths)", "add cache_len"),
    (4, "return [cache_len + d for d in depths]", "return [float(cache_len + d) for d in depths]",
     "should hold integers"),
    (4, "return [cache_len + d for d in depths]",
     "return torch.tensor([cache_len + d for d in depths], dtype=torch.float32)", "should hold integers"),
    (4, "            a = parents[a]", "            a = a - 1", "not an ancestor (a sibling or cousin)"),
    (4, "mask[:, :cache_len] = True", "", "every committed cache entry"),
    (4, "for parent in level:", "for parent in level[:1]:", "hangs under EVERY depth-(j-1) node"),
    (5, "tokens[node] == main_argmax[path[-1]]", "tokens[node] == main_argmax[node]", "its OWN argmax"),
    (5, *ONE_TOO_MANY, "one node too far", "OWN argmax"),
    (5, "parents[node] == path[-1] and ", "", "one of its children"),
    (5, "            path.append(node)\n", "            path.append(node)\n        elif parents[node] == path[-1]:\n"
     "            break\n", "try every child"),
    (5, "torch.cat([entries[:cache_len], entries[accepted]])", "entries[:cache_len + len(path)]",
     "The cache was not compacted"),
    (6, "early_exit_probs[p, tokens[i]]", "early_exit_probs[i, tokens[i]]", "parent's row"),
    (6, "kept[p] and ", "", "takes its whole subtree with it"),
    (6, ">= threshold", "> threshold", "strictly below the threshold"),
    (6, "for i in range(1, len(tokens)):", "for i in range(len(tokens)):", "never pruned"),
    (6, "return [i for i, k in enumerate(kept) if k]", "return kept", "INDICES of the surviving nodes", "probability"),
    (6, "return [i for i, k in enumerate(kept) if k]", "return list(range(len(tokens)))", "Nothing was pruned",
     "toy model"),
    (7, "max_new_tokens - generated - 1)", "max_new_tokens - generated)", "always comes on top"),
    (7, "for node in path[1:]] + [bonus]", "for node in path[1:]]", "the bonus token is missing"),
    (7, "for node in path[1:]]", "for node in path]", "already in the output"),
    (7, "cache_len + len(path), done)", "cache_len + len(path) + 1, done)", "has no cache entry yet"),
    (7, "cache_len + len(path), done)", "cache_len + len(path) - 1, done)", "misses the root's entry"),
    (7, "new[:new.index(eos_id) + 1]", "new[:new.index(eos_id)]", "keeping it"),
    (7, "new[:max_new_tokens - generated]", "new[:max_new_tokens]", "ignores the tokens already generated"),
    (7, "Commit(new, bonus, last,", "Commit(new, bonus, 0,", "LAST accepted node"),
    (7, "Commit(new, bonus, last,", "Commit(new, tokens[last], last,", "argmax AT that node"),
    (8, "return min(1.0, p_x / q_x)", "return q_x", ("not lossless", "min(1, p(x)/q(x))")),
    (8, "return min(1.0, p_x / q_x)", "return p_x", ("not lossless", "target probability p(x) alone")),
    (8, "return min(1.0, p_x / q_x)", "return p_x / q_x", "cap it"),
    (8, "return left / total if total > 0 else p", "return left", ("not lossless", "divide it by its sum")),
    (8, "left = (p - q).clamp(min=0.0)", "left = p.clone()", ("not lossless", "only the rest")),
    (8, "rows[i:, drawn[i - 1]] = 0.0", "pass", ("not lossless", "WITHOUT replacement")),
    (8, "p = residual(p, qs[i])", "pass", ("not lossless", "leaves p unchanged")),
    (8, "coins[i] < accept", "coins[i] > accept", "accept iff coin < accept_probability"),
]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[f"ex{m[0]}-{str(m[3])[:40]}" for m in MISTAKES])
def test_typical_mistake_gets_its_hint(tmp_path, mistake):
    number, old, new, hints, *wrong = mistake
    outcome, text = check(number, broken_copy(tmp_path, number, old, new))
    assert outcome.status == "fail", text
    for hint in (hints,) if isinstance(hints, str) else hints:
        assert hint in text, text
    for hint in wrong:  # a hint that used to be given for this mistake, wrongly
        assert hint not in text, text
    assert "Traceback" not in text and "AssertionError" not in text


def test_earlier_subchecks_are_kept(tmp_path):
    outcome, text = check(4, broken_copy(tmp_path, 4, "return [cache_len + d for d in depths]", "return depths"))
    assert outcome.status == "fail"
    assert text.count("  ok  draft_tree") == 3 and "  ok  tree_attention_mask" in text


# ---------------------------------------------------------------------------------------------------------------
# the final check compares the process, call by call
# ---------------------------------------------------------------------------------------------------------------

FINAL_MISTAKES = [  # (exercise, solution text, wrong text, words the report must contain)
    (2, ".tril()", ".triu()", ("drafts of stream", "init_streams and stream_attention (exercise 2)")),
    (1, "for i in range(1, j + 1):", "for i in range(1, max(j, 1) + 1):", ("msa_mask (exercise 1)",)),
    (4, "return [cache_len + d for d in depths]", "return [cache_len + i for i in range(len(depths))]",
     ("the position ids differ", "position_ids (exercise 4)", "Check 4 alone fails too")),
    (5, "torch.cat([entries[:cache_len], entries[accepted]])", "entries[:cache_len + len(path)]",
     ("compact_cache (exercise 5)",)),
    (6, "return [i for i, k in enumerate(kept) if k]", "return list(range(len(tokens)))",
     ("the nodes kept by pruning differ", "prune_tree (exercise 6)")),
    (7, "for node in path[1:]] + [bonus]", "for node in path[1:]]", ("committed tokens", "commit_step (exercise 7)")),
    (7, "max_new_tokens - generated - 1)", "max_new_tokens - generated)", ("tree depths", "draft_depth")),
    (4, "return [cache_len + d for d in depths]", "return [float(cache_len + d) for d in depths]",
     ("position_ids should hold integers",)),
    (4, "return [cache_len + d for d in depths]", "return [min(cache_len, 9) + d for d in depths]",  # caches < 10 only
     ("the position ids differ", "Check 4 alone passes")),
]


@pytest.mark.parametrize("mistake", FINAL_MISTAKES, ids=[f"ex{m[0]}-{m[3][0][:30]}" for m in FINAL_MISTAKES])
def test_final_check_names_the_piece_that_differs(tmp_path, mistake):
    number, old, new, words = mistake
    for name in core.EXERCISES.values():
        shutil.copy(SOLUTIONS / name, tmp_path / name)
    broken_copy(tmp_path, number, old, new)
    outcome, text = check(core.FINAL, tmp_path)
    assert outcome.status == "fail", text
    for w in words:
        assert w in text, text


def test_final_check_fails_an_upper_triangular_stream_mask_whose_output_is_lossless(tmp_path):
    """Drafting bugs never change greedy output: the final check must fail them through the drafts."""
    for name in core.EXERCISES.values():
        shutil.copy(SOLUTIONS / name, tmp_path / name)
    broken_copy(tmp_path, 2, ".tril()", ".triu()")
    outcome, text = check(core.FINAL, tmp_path)
    assert outcome.status == "fail" and "stream_attention" in text and len(outcome.passed) == 2


# ---------------------------------------------------------------------------------------------------------------
# the checker survives whatever the student's code does
# ---------------------------------------------------------------------------------------------------------------

SAFETY = [  # (exercise, code appended to the stub, status, words the report must contain)
    (1, "def msa_mask(T, n_streams):\n    import sys\n    sys.exit(0)\n", "error", "sys.exit(0)"),
    (1, "def msa_mask(T, n_streams):\n    raise KeyboardInterrupt\n", "error", "KeyboardInterrupt"),
    (1, "def msa_mask(T, n_streams):\n    import os\n    os._exit(0)\n", "error",
     "ended with exit code 0 while `msa_mask` was running"),
    (1, "def msa_mask(T, n_streams):\n    return 1 / 0\n", "error", "ZeroDivisionError: division by zero (line"),
    (1, "def msa_mask(T, n_streams):\n    return None\n", "fail", "got None"),
    (1, "def msa_mask(T, n_streams):\n    return 'mask'\n", "fail", "got a str"),
    (1, "class Weird:\n    def __repr__(self):\n        raise ValueError\n\ndef msa_mask(T, n_streams):\n"
        "    return Weird()\n", "fail", "got a Weird"),
    (1, "def msa_mask(T, n_streams):\n    return torch.ones(3, 3, dtype=torch.bool)\n", "fail",
     "returned shape (3, 3)"),
    (2, "def init_streams(main, stream_emb):\n    return torch.full_like(stream_emb, float('nan'))\n", "fail",
     "returned nan"),
    (3, "def eq5_targets(tokens, n_streams, prompt_len=0):\n    return [[1]]\n", "fail",
     "should return a torch tensor"),
    (4, "def draft_tree(root, topk):\n    return [float(root)], [-1], [0]\n", "fail", "should hold integers"),
    (5, "def verify_greedy(tokens, parents, main_argmax):\n    return [0.0]\n", "fail", "should hold integers"),
    (7, "def draft_depth(gamma, generated, max_new_tokens):\n    return 2.5\n", "fail", "should be an integer"),
    (8, "def sibling_distributions(q, drawn):\n    return q\n", "fail", "returned shape"),
]


@pytest.mark.parametrize("case", SAFETY, ids=[f"ex{c[0]}-{c[3][:30]}" for c in SAFETY])
def test_student_code_never_breaks_the_checker(tmp_path, case):
    number, code, status, words = case
    outcome, text = check(number, student_file(tmp_path, number, code))
    assert outcome.status == status, text
    assert words in text, text
    assert "Traceback" not in text and "CHECKER ERROR" not in text


def test_an_exception_names_the_students_line(tmp_path):
    path = student_file(tmp_path, 1, "def msa_mask(T, n_streams):\n    return 1 / 0\n")
    line = path.read_text().splitlines().index("    return 1 / 0") + 1
    outcome, text = check(1, path)
    assert outcome.status == "error" and f"(line {line} of ex1_msa_mask.py: return 1 / 0)" in text, text


def test_an_endless_loop_times_out_and_keeps_the_earlier_subchecks(tmp_path):
    path = broken_copy(tmp_path, 4, "            a = parents[a]\n", "")  # the walk up never moves
    outcome, text = check(4, path, timeout=2)
    assert outcome.status == "timeout", text
    assert "`tree_attention_mask` did not return within 2 s" in text and text.count("  ok  draft_tree") == 3
    assert outcome.seconds < 15


def test_spawned_children_work_too(tmp_path, monkeypatch):
    """Where fork is not used (macOS, Windows), each check is a spawned process that imports torch itself."""
    import multiprocessing
    from exercises import sandbox
    monkeypatch.setattr(sandbox, "context", lambda: multiprocessing.get_context("spawn"))
    outcome, text = check(1, student_file(tmp_path, 1, "def msa_mask(T, n_streams):\n    import sys\n    sys.exit(3)\n"))
    assert outcome.status == "error" and "sys.exit(3)" in text, text


def test_an_endless_loop_at_import_times_out(tmp_path):
    outcome, text = check(1, student_file(tmp_path, 1, "while True:\n    pass\n"), timeout=2)
    assert outcome.status == "timeout" and "importing ex1_msa_mask.py did not finish within 2 s" in text, text


REFUSED = [  # (exercise, code appended to the stub, words)
    (1, "from specstream_minimal import msa_mask\n", "imports `specstream_minimal`"),
    (4, "from tree import draft_tree\n", "imports `tree`"),
    (4, "import tree as t\n\ndef position_ids(depths, cache_len):\n    return t.position_ids(depths, cache_len)\n",
     "imports `tree`"),
    (5, "import importlib\nverify_greedy = importlib.import_module('generate').verify_greedy\n", "imports `generate`"),
    (6, "import importlib\nname = 'tr' + 'ee'\nprune_tree = importlib.import_module(name).prune_tree\n",
     "not a function written in your file"),
    (8, "from exercises.solutions.ex8_sampling import residual\n", "imports `exercises.solutions.ex8_sampling`"),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c[2][:30] for c in REFUSED])
def test_the_projects_own_implementation_is_refused(tmp_path, case):
    number, code, words = case
    outcome, text = check(number, student_file(tmp_path, number, code))
    assert outcome.status == "fail" and "refused" in text and words in text, text


# ---------------------------------------------------------------------------------------------------------------
# grading a class, the handout, reset, the command line
# ---------------------------------------------------------------------------------------------------------------

def test_grading_a_class(tmp_path, capsys):
    ada, bob, cy = (tmp_path / "class" / name for name in ("ada", "bob", "cy"))
    shutil.copytree(SOLUTIONS, ada, ignore=shutil.ignore_patterns("make_fixtures.py", "__pycache__"))
    shutil.copytree(STUBS, bob)
    shutil.copytree(SOLUTIONS, cy, ignore=shutil.ignore_patterns("make_fixtures.py", "__pycache__"))
    (cy / core.EXERCISES[8]).unlink()
    student_file(cy, 1, "def msa_mask(T, n_streams):\n    import sys\n    sys.exit(0)\n")
    broken_copy(cy, 4, "            a = parents[a]\n", "")
    code = grade.grade(tmp_path / "class", timeout=8, workers=2, out=tmp_path)  # ample on a busy machine
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(open(tmp_path / "grades.csv"))}
    assert all(rows["ada", grade.label(c)]["status"] == "pass" for c in grade.COLUMNS)
    assert all(rows["bob", grade.label(c)]["status"] == "fail" for c in grade.COLUMNS)
    assert [rows["cy", e]["status"] for e in ("ex1", "ex4", "ex8", "ex2", "final")] == \
           ["error", "timeout", "fail", "pass", "error"]
    assert "sys.exit(0)" in rows["cy", "ex1"]["first_hint"] and "does not exist" in rows["cy", "ex8"]["first_hint"]
    assert "ada      pass" in out and "9/9" in out and "0/9" in out
    assert json.loads((tmp_path / "grades.json").read_text())["students"]["cy"]["ex2"]["status"] == "pass"


def test_grading_without_students_is_a_one_line_error(tmp_path, capsys):
    assert grade.grade(tmp_path / "nowhere") == 2
    assert grade.grade(tmp_path) == 2
    assert capsys.readouterr().out.startswith("error: ")


def test_handout_leaves_out_the_answers(tmp_path):
    out = tmp_path / "handout"
    assert handout.handout(out) == 0
    assert not (out / "exercises" / "solutions").exists() and not (out / "docs" / "TEACHING.md").exists()
    assert not (out / "tests" / "test_exercises.py").exists() and (out / "exercises" / "fixtures" / "ex8.json").exists()
    solution_lines = {line.strip() for path in SOLUTIONS.glob("ex*.py") for line in path.read_text().splitlines()
                      if len(line.strip()) > 30 and not line.strip().startswith(("#", '"""', "def "))}
    solution_lines -= {line.strip() for path in STUBS.glob("*.py") for line in path.read_text().splitlines()}
    for path in [*out.glob("exercises/**/*"), *out.glob("docs/*"), *out.glob("tests/*"), *out.glob("notebooks/*.py")]:
        if path.is_file() and path.suffix in (".py", ".md", ".json"):
            text = path.read_text()
            assert not [line for line in solution_lines if line in text], path
    for name in core.EXERCISES.values():
        assert (out / "exercises" / name).read_text() == (STUBS / name).read_text()
    run = subprocess.run([sys.executable, "-m", "exercises", "check", "1"], cwd=out, capture_output=True, text=True)
    assert run.returncode == 1 and "is not written yet" in run.stdout, run.stdout + run.stderr


def test_reset_restores_the_stubs_and_keeps_the_work(tmp_path):
    (tmp_path / core.EXERCISES[1]).write_text("my work\n")
    assert handout.reset(tmp_path) == 0
    assert (tmp_path / core.EXERCISES[1]).read_text() == (STUBS / core.EXERCISES[1]).read_text()
    backups = list((tmp_path / "backup").glob("*/" + core.EXERCISES[1]))
    assert len(backups) == 1 and backups[0].read_text() == "my work\n"


def test_command_line_exit_codes():
    run = lambda *args: subprocess.run([sys.executable, "-m", "exercises", *args], cwd=ROOT, capture_output=True,
                                       text=True)
    stub = run("check", "2")
    assert stub.returncode == 1 and "NOT YET" in stub.stdout
    solution = run("check", "4", "--module", str(SOLUTIONS / core.EXERCISES[4]))
    assert solution.returncode == 0 and "all good" in solution.stdout
    wrong = run("check", "9")
    assert wrong.returncode == 2 and wrong.stdout.startswith("error: ")
    assert run("check", "1", "--timeout", "0").returncode == 2
