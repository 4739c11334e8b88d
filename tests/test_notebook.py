"""experiments/colab.ipynb runs top to bottom on the CPU with its tiny parameters
(LADDER_JAX_NOTEBOOK_TINY=1): any cell error fails the test. It is committed without outputs."""

from __future__ import annotations

import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "experiments", "colab.ipynb")


def test_notebook_is_committed_without_outputs():
    with open(NOTEBOOK) as f:
        nb = json.load(f)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert "parameters" in code[0]["metadata"].get("tags", [])


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch, mnist):
    del mnist  # the data is cached before the kernel starts
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("LADDER_JAX_NOTEBOOK_TINY", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs if o.get("output_type") == "stream")
    assert "seed 0: test error" in text and "seed 1: test error" in text
    assert "shifted digits:" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 3  # learning curves, label efficiency, misclassified grid
    assert (tmp_path / "runs" / "colab" / "seeds").is_dir()
