"""The notebooks run top to bottom in CI (nbclient), and print what they claim."""

import pathlib

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(name: str):
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") or str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def test_plan_exploration_notebook():
    nb = _run("plan_exploration.ipynb")
    text = _text(nb)
    assert "throughput" in text and "feasible splits of 441" in text
    # Three figures, and the last cell's table is the Pareto frontier.
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3
    tables = [o["data"]["text/plain"] for o in nb.cells[-1]["outputs"] if "text/plain" in o.get("data", {})]
    assert any("throughput_tok_s" in t and "total_latency_s" in t for t in tables)


def test_validation_notebook():
    nb = _run("validation.ipynb")
    text = _text(nb)
    assert "records;" in text and "median |error|" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2
    tables = [o["data"]["text/plain"] for o in nb.cells[-1]["outputs"] if "text/plain" in o.get("data", {})]
    assert any("median |error|" in t for t in tables)
