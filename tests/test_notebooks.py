"""The teaching notebooks in notebooks/ run from top to bottom without an error, and what is committed is what
notebooks/make_notebooks.py builds (same cells, executed, no error outputs).

Each notebook runs from a fresh copy in a temporary folder, with its outputs cleared, in a new python3 kernel of
this interpreter (the .venv; see make_notebooks.VenvKernelManager), with cwd = notebooks/ as when it was built.
Nothing is installed. Budget on an unloaded 2-core CPU: 01 ~ seconds, 02 < 60 s, 03 < 120 s, 04 < 60 s (04 needs the real-task data).
"""
import importlib.util
import shutil
import time
from pathlib import Path

import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NB_DIR / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_generator()


@pytest.mark.parametrize("name", sorted(gen.NOTEBOOKS))
def test_notebook_runs_without_errors(name, tmp_path):
    if name.startswith("04"):  # the real-task notebook needs the E2E data and the GPT-2 tokenizer files
        data = pytest.importorskip("data")
        try:
            data.resolve_data_dir()
            data.gpt2_encoding()
        except (FileNotFoundError, RuntimeError) as e:
            pytest.skip(f"no real-task data or tokenizer here: {e}")
    committed = nbformat.read(NB_DIR / name, as_version=4)
    nbformat.validate(committed)
    expected = gen.build(gen.NOTEBOOKS[name])
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in expected.cells], \
        f"{name} is out of date: run .venv/bin/python notebooks/make_notebooks.py {name[:2]}"
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), f"{name} is committed unexecuted: run make_notebooks.py"
    assert gen.errors(committed) == []

    copy = tmp_path / name
    shutil.copy(NB_DIR / name, copy)
    nb = nbformat.read(copy, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    start = time.perf_counter()
    gen.execute(nb, cwd=NB_DIR)  # raises CellExecutionError (with the traceback) on the first failing cell
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    nbformat.write(nb, copy)
    assert gen.errors(nb) == []
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
