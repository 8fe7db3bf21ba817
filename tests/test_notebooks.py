"""The notebooks in ``notebooks/`` run from top to bottom, and are stored without outputs.

Each notebook is executed by a Jupyter kernel running this interpreter (a first, injected cell
checks that), in a temporary working directory, with one CPU device like a user's machine
(the fake-device flag that ``conftest.py`` sets for the tests is removed from the kernel's
environment; ``07_scaling_out`` asks for its 8 CPU devices itself, in its first cell). A
failing cell fails its test and shows the cell and its traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# name -> seconds one run takes inside the default suite (`pytest -n 2` on a 2-core CPU, wall,
# kernel start included; 03 and 06 measured alone, times 1.5; 07 measured alone next to other
# jobs, load average 8; 08 measured alone, 16.6 s; 02 re-measured in the default run, 17 s).
# Those over SLOW_AFTER_S run with the slow tests (`-m slow`), which CI runs too; CI's docs
# build executes all of them again.
TIMINGS = {
    "01_quickstart": 18,
    "02_state": 17,
    "03_transforms": 24,
    "04_checkpoints": 16,
    "05_mixed_precision": 17,
    "06_coming_from": 24,
    "07_scaling_out": 46,
    "08_deployment": 17,
}
SLOW_AFTER_S = 15

_STRIP_HINT = (
    "Fix: clear them before committing: in Jupyter, 'Kernel > Restart Kernel and Clear Outputs "
    "of All Cells', then save; or `jupyter nbconvert --clear-output --inplace {path}`."
)


def _read(name: str) -> dict:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))


def _stored_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_expected_notebooks_exist():
    names = sorted(p.stem for p in _stored_notebooks())
    assert names == sorted(TIMINGS), (
        f"notebooks/ holds {names}, the tests know {sorted(TIMINGS)}. A new notebook needs "
        "an entry in TIMINGS (tests/test_notebooks.py) so that it is executed."
    )
    index = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    missing = [n for n in TIMINGS if f"{n}.ipynb" not in index]
    assert not missing, f"notebooks/README.md does not list {missing}"


@pytest.mark.parametrize("path", _stored_notebooks(), ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert notebook.get("nbformat") == 4, f"{path.name}: not an nbformat-4 notebook"
    dirty = [
        f"cell {i}: {len(cell.get('outputs', []))} outputs, "
        f"execution_count {cell.get('execution_count')}"
        for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name} is stored with outputs or execution counts:\n  "
        + "\n  ".join(dirty)
        + "\n"
        + _STRIP_HINT.format(path=f"notebooks/{path.name}")
    )


def test_quickstart_keeps_the_display_cell():
    """The cell tagged "display" is where ``nnx.display(model)`` shows the model in Jupyter."""
    cells = [
        c for c in _read("01_quickstart")["cells"] if "display" in c["metadata"].get("tags", [])
    ]
    assert len(cells) == 1, "01_quickstart.ipynb needs exactly one cell tagged 'display'"
    source = "".join(cells[0]["source"])
    assert "nnx.display(model)" in source and "hasattr" not in source


def _kernel_env() -> dict[str, str]:
    """This process's environment without the fake-device flag conftest.py adds."""
    env = dict(os.environ)
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count=")
    ]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    return env


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

_CHECK_INTERPRETER = f"""\
import sys
assert sys.prefix == {sys.prefix!r}, (
    "the notebook kernel runs " + sys.executable + ", not the interpreter running the tests "
    + {sys.executable!r} + ": install ipykernel into this environment"
)
"""


def _params() -> list:
    return [
        pytest.param(name, marks=pytest.mark.slow) if seconds > SLOW_AFTER_S else name
        for name, seconds in TIMINGS.items()
    ]


@pytest.mark.parametrize("name", _params())
def test_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("sklearn")  # the notebooks' data
    pytest.importorskip("matplotlib")
    from nbclient.exceptions import CellExecutionError

    # The `python3` kernel of this environment comes first (a user-wide kernelspec of the same
    # name could otherwise start another interpreter).
    monkeypatch.setenv("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(_CHECK_INTERPRETER))
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    failure = None
    try:
        client.execute(env=_kernel_env())
    except CellExecutionError as err:  # reported below, outside the except: no chained copy
        failure = _ANSI.sub("", str(err))
    if failure is not None:
        pytest.fail(f"{name}.ipynb: a cell failed.\n{failure}", pytrace=False)
