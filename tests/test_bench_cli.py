"""bench.py's command line: every `bench.py` command written in the Makefile, the README, the notebooks, the
exercises and the results' "Command:" lines parses with today's subcommands; each subcommand has exactly the flags
its benchmark (in the benchmarks/ package) reads; bench.py is the command line only, and neither the package nor a
notebook imports a command-line module; SS's extra parameters have one formula. No benchmark is run (a few seconds
in all)."""
import ast
import inspect
import pathlib
import re
import shlex

import pytest

import bench
from benchmarks.params import parameter_counts, ss_extra_parameters
from model import GPT

ROOT = pathlib.Path(__file__).resolve().parent.parent


def makefile_commands() -> list[str]:
    """The arguments of every `$(PY) bench.py ...` recipe line (backslash continuations joined)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    return [" ".join(m.group(1).split()) for m in re.finditer(r"^\t.*\bbench\.py (.*)$", text, re.M)]


def document_commands(path: pathlib.Path) -> list[str]:
    """The arguments of `bench.py ...` in inline code (which may wrap onto the next line, behind a `# ` in a
    notebook source) and of `python bench.py ...` on code lines (no backtick on the line); <placeholders> become
    X."""
    text = re.sub(r"\n#? *", " ", path.read_text()) if path.suffix == ".py" else path.read_text()
    found = [m.group(1) for m in re.finditer(r"`(?:python3? )?bench\.py ([^`]+)`", text)]
    found += [m.group(1) for m in re.finditer(r"^[^`\n]*\bpython3? bench\.py ([^`\n]*)$", path.read_text(), re.M)]
    return [re.sub(r"<[^>]*>", "X", " ".join(c.split())) for c in found]


DOCUMENTS = sorted([ROOT / "README.md", ROOT / "VALIDATING.md", *ROOT.glob("notebooks/*.py"),
                    *ROOT.glob("notebooks/*.md"), *ROOT.glob("exercises/**/*.py"), *ROOT.glob("exercises/**/*.md"),
                    *ROOT.glob("results/**/*.md")])
COMMANDS = [("Makefile", c) for c in makefile_commands()] + [
    (str(path.relative_to(ROOT)), c) for path in DOCUMENTS if path.exists() for c in document_commands(path)]


def test_the_commands_are_found(tmp_path):
    """The extraction itself: every Makefile bench.py line, the READMEs' commands, and a command that wraps onto
    the next line of a notebook source."""
    recipes = [line for line in (ROOT / "Makefile").read_text().splitlines() if "$(PY) bench.py" in line]
    assert len(makefile_commands()) == len(recipes) >= 7
    found = lambda name: [c for where, c in COMMANDS if where == name]
    assert len(found("README.md")) >= 3 and "task --task e2e --prompts 200 --repeats 1" in found("README.md")
    assert len(found("results/README.md")) >= 15 and "batch --prompts 32 --repeats 5" in found("results/README.md")
    source = tmp_path / "notebook.py"
    source.write_text("# then `python bench.py batch --prompts 32\n# --repeats 5` writes results/batch/\n")
    assert document_commands(source) == ["batch --prompts 32 --repeats 5"]


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}: {c}" for w, c in COMMANDS])
def test_written_command_parses(where, command, capsys):
    words = shlex.split(command)
    if words[0] == "SUBCOMMAND":  # a placeholder for any subcommand
        for name in SUBCOMMANDS:
            test_written_command_parses(where, " ".join([name] + words[1:]), capsys)
        return
    if "--help" in words:  # prints the subcommand's help and exits 0
        with pytest.raises(SystemExit, match="0"):
            bench.parser().parse_args(words)
        assert f" {words[0]} [-h]" in capsys.readouterr().out  # the subcommand's usage line
        return
    assert bench.parser().parse_args(words).what == words[0]


def reads(function, seen: set) -> set[str]:
    """The `args.X` attributes that a benchmark function reads, with those of the package's functions it passes
    `args` to (a superset: a branch that is never taken counts too)."""
    if function in seen or not inspect.isfunction(function) or not function.__module__.startswith("benchmarks."):
        return set()
    seen.add(function)
    out = set()
    for node in ast.walk(ast.parse(inspect.getsource(function))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "args":
            out.add(node.attr)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and any(isinstance(a, ast.Name) and a.id == "args" for a in node.args)):
            out |= reads(function.__globals__.get(node.func.id), seen)
    return out


SUBCOMMANDS = list(bench.parser()._subparsers._group_actions[0].choices)


def test_every_benchmark_has_its_subcommand():
    assert SUBCOMMANDS == ["speed", "toy", "params", "rows", "baselines", "batch", "sampling",  # toy model
                           "task", "draftcost", "ablation", "profile", "study"]  # real tasks (profile: both)


REQUIRED = {"study": ["--recipes", "a", "--values", "1", "--label", "x", "--name", "n"]}  # flags without a default


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_exactly_the_flags_it_reads(name, capsys):
    args = vars(bench.parser().parse_args([name] + REQUIRED.get(name, [])))
    runner = bench.RUNNERS[name]
    used = reads(runner, set())
    assert used <= set(args), f"`bench.py {name}` lacks {sorted(used - set(args))}, which {runner.__name__} reads"
    unused = set(args) - used - {"what", "threads"}
    assert not unused, f"`bench.py {name}` has flags its benchmark never reads: {sorted(unused)}"
    with pytest.raises(SystemExit):
        bench.parser().parse_args([name, "--help"])
    described = " ".join(inspect.getdoc(runner).split()[:8])
    assert described in " ".join(capsys.readouterr().out.split())  # --help describes the benchmark


PACKAGE = sorted((ROOT / "benchmarks").glob("*.py"))
CLI_MODULES = {"bench", "decode", "validate"}  # command lines: nothing imports them but their tests


def imported_modules(path: pathlib.Path) -> set[str]:
    """The modules that a Python file imports, at any depth (`import a.b` and `from a.b import c` give a.b)."""
    tree = ast.parse(path.read_text())
    return ({alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module})


@pytest.mark.parametrize("path", PACKAGE + sorted(ROOT.glob("notebooks/*.py")), ids=lambda p: p.name)
def test_no_package_module_or_notebook_imports_a_command_line(path):
    assert not imported_modules(path) & CLI_MODULES


def test_report_imports_no_other_benchmark_module():
    """report.py only formats and writes what the measuring modules give it."""
    assert not {m for m in imported_modules(ROOT / "benchmarks" / "report.py") if m.startswith("benchmarks")}


def test_bench_py_is_the_command_line_only():
    """bench.py defines the parser, the flags and the dispatch, nothing else; every benchmark is in the package."""
    body = ast.parse(inspect.getsource(bench)).body
    defined = {getattr(node, "name", None) or node.targets[0].id for node in body
               if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign))}
    assert defined == {"RUNNERS", "SHARED_FLAGS", "TOY", "RECIPE", "parser", "subcommand", "toy_commands",
                       "task_commands", "main"}
    assert all(runner.__module__.startswith("benchmarks.") for runner in bench.RUNNERS.values())


def test_each_function_is_defined_once():
    """Moved, not copied: no function, class or constant is defined in two modules of bench.py and the package."""
    where = {}
    for path in [ROOT / "bench.py"] + PACKAGE:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign)):
                name = getattr(node, "name", None) or getattr(node.targets[0], "id", None)
                assert name not in where, f"{name} is defined in {where.get(name)} and {path.name}"
                where[name] = path.name


def test_ss_extra_parameters_are_what_ss_adds_to_its_target(tiny_config):
    """`params` and the side-by-side tables count SS's extra parameters with one function: everything beyond
    the base and LoRA, in frozen mode (stream adapter) and in shared mode."""
    frozen, shared = (GPT(tiny_config(lora_rank=4, prune_rank=3, stream_adapter_rank=rank)) for rank in (2, 0))
    beyond_target = lambda m: (sum(p.numel() for p in m.parameters()) - parameter_counts(m)["base"]
                               - parameter_counts(m)["lora"])
    assert ss_extra_parameters(parameter_counts(frozen)) == beyond_target(frozen)
    assert ss_extra_parameters(parameter_counts(shared)) == beyond_target(shared)
    assert (ss_extra_parameters(parameter_counts(frozen), frozen=False) == beyond_target(shared)
            < beyond_target(frozen))


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_counts_match_hand_formulas(tiny_config, bias):
    V, Bs, L, d, G, r, pr = 64, 48, 3, 16, 3, 4, 5
    model = GPT(tiny_config(vocab_size=V, block_size=Bs, n_layer=L, n_embd=d, n_streams=G, lora_rank=r,
                            prune_rank=pr, bias=bias))
    counts = parameter_counts(model)
    per_layer = 12 * d * d + (13 * d if bias else 2 * d)  # qkv, proj, fc, proj (+ biases) and two LayerNorms
    assert counts["base"] == V * d + Bs * d + L * per_layer + (2 * d if bias else d)  # lm_head tied to wte
    assert counts["lora"] == L * r * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
    assert counts["stream_emb"] == G * d
    assert counts["prune_adapter"] == 2 * d * pr
    assert counts["medusa_4_heads"] == 4 * (d * d + d + d * V)
    total = sum(p.numel() for p in model.parameters())
    assert counts["base"] + counts["lora"] + counts["stream_emb"] + counts["prune_adapter"] == total
