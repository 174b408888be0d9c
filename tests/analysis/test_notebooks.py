"""Notebook tier (`pytest -m notebooks`, also in `make test-full`): every analysis notebook runs top to
bottom with nbclient against the repo's results/, and is committed with its outputs stripped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# Notebooks of this tier and the results/ files each one needs (a missing file is a failure, not a skip:
# the committed tiny results must be there).
NEEDS = {
    "known_distribution.ipynb": ["known_distribution/results.json"],
    "tspd.ipynb": ["figures/table1_tiny/tspd"],
    "token_distribution.ipynb": ["token_distribution/table1_tiny/official_8b.json"],
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_stripped(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"{path.name} cell {i}"


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_notebook_executes(name, tmp_path):
    nbformat = pytest.importorskip(
        "nbformat", reason="the notebook tier needs nbformat, nbclient and ipykernel (pyproject dev extra)"
    )
    nbclient = pytest.importorskip("nbclient", reason="the notebook tier needs nbclient and ipykernel")
    pytest.importorskip("ipykernel", reason="the notebook tier needs ipykernel")
    for need in NEEDS[name]:
        assert (REPO / "results" / need).exists(), f"{name} needs results/{need}"
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    env = {"TS2_RESULTS_DIR": str(REPO / "results"), "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(tmp_path)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
        )
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert any(c.outputs for c in nb.cells if c.cell_type == "code")
