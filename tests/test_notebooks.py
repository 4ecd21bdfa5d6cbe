"""The teaching notebooks run from top to bottom without an error, and each committed .ipynb is its .py source.

Every notebook is a jupytext percent-format source `notebooks/NN_name.py` (the file to read, diff and edit; cells
start at `# %%`, Markdown cells at `# %% [markdown]`), paired with `notebooks/NN_name.ipynb`, committed executed,
with its outputs. Shared drawing code lives in `notebooks/drawing.py` (not a notebook: no NN_ prefix).

To add a notebook: write `notebooks/NN_name.py` in the same format (copy the YAML header and the first code cell
of an existing one: `sys.path.insert(0, "..")`, since notebooks run with cwd = notebooks/), then build it with

    make notebooks NB=NN    # jupytext writes NN_name.ipynb from the .py, jupyter-execute runs it in place

(`make notebooks` rebuilds all of them) and commit both files. This test finds every `notebooks/NN_*.py` by
itself. It checks that the committed .ipynb has the same cells as the .py and was executed without errors, then
runs a fresh copy with its outputs cleared in a new python3 kernel of this interpreter (the .venv:
`VenvKernelManager`), with cwd = notebooks/. Nothing is installed.

Budgets on an unloaded 2-core CPU: 01 < 30 s, 02 < 60 s, 03 < 120 s, 04 < 60 s (04 needs the real-task data and
the GPT-2 tokenizer files; without trained models in checkpoints/tasks it trains a tiny --quick model).
"""
import os
import shutil
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(p.name for p in NB_DIR.glob("[0-9][0-9]_*.py"))


class VenvKernelManager(AsyncKernelManager):
    """The python3 kernel of *this* interpreter (the project's .venv): its kernelspec is looked up only under
    sys.prefix (ipykernel's wheel installs it there), and jupyter_client runs a `python` argv with sys.executable.
    A python3 kernel installed elsewhere (user or system Jupyter folders) is never picked. (`make notebooks` gets
    the same kernel by putting .venv/share/jupyter first in JUPYTER_PATH.)"""

    @default("kernel_spec_manager")
    def _venv_kernel_spec_manager(self):
        return KernelSpecManager(kernel_dirs=[os.path.join(sys.prefix, "share", "jupyter", "kernels")])


def errors(nb: nbformat.NotebookNode) -> list[str]:
    """Error outputs of a notebook, as 'cell i: ename: evalue'."""
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def test_every_notebook_has_a_source_and_a_build():
    assert len(SOURCES) >= 4, f"no notebook sources found in {NB_DIR}"
    built = sorted(p.name for p in NB_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert [n.replace(".py", ".ipynb") for n in SOURCES] == built, "every NN_*.py needs its built NN_*.ipynb"
    cmd = VenvKernelManager(kernel_name="python3").format_kernel_cmd()
    assert cmd[0] == sys.executable, f"the python3 kernel would run {cmd[0]}, not {sys.executable}"


@pytest.mark.parametrize("source", SOURCES)
def test_notebook_matches_its_source_and_runs(source, tmp_path):
    name = source.replace(".py", ".ipynb")
    if name.startswith("04"):  # the real-task notebook needs the E2E data and the GPT-2 tokenizer files
        data = pytest.importorskip("data")
        try:
            data.resolve_data_dir()
            data.gpt2_encoding()
        except (FileNotFoundError, RuntimeError) as e:
            pytest.skip(f"no real-task data or tokenizer here: {e}")
    committed = nbformat.read(NB_DIR / name, as_version=4)
    nbformat.validate(committed)
    expected = jupytext.read(NB_DIR / source)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in expected.cells], \
        f"{name} is out of date with {source}: run make notebooks NB={name[:2]}"
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), f"{name} is committed unexecuted: run make notebooks NB={name[:2]}"
    assert errors(committed) == []

    nb = jupytext.read(NB_DIR / source)  # a fresh copy, no outputs
    start = time.perf_counter()
    NotebookClient(nb, kernel_manager_class=VenvKernelManager, kernel_name="python3", timeout=600,
                   resources={"metadata": {"path": str(NB_DIR)}}).execute()  # raises on the first failing cell
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    nbformat.write(nb, tmp_path / name)
    assert errors(nb) == []
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
