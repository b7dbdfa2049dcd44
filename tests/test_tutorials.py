"""The tutorials are committed with their executed outputs (``make tutorials``), without
run-specific metadata; executing them is ``make test``'s job (nbmake)."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("*.ipynb"))


def _strip_module():
    path = Path(__file__).parents[1] / "tutorials" / "strip_metadata.py"
    spec = importlib.util.spec_from_file_location("strip_metadata", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorials_are_committed_with_outputs_and_no_errors(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert outputs, f"{path.name} has no outputs: run make tutorials"
    assert not [o for o in outputs if o.output_type == "error"], path.name
    assert all("execution" not in c.metadata for c in code), "run tutorials/strip_metadata.py"
    # Executed in order, top to bottom.
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), counts


def test_tutorial_1_shows_the_selection_curve():
    nb = nbformat.read(TUTORIALS[0], as_version=4)
    (cell,) = [c for c in nb.cells if "selection.plot(" in c.source]
    assert any("image/png" in o.get("data", {}) for o in cell.outputs)


def test_strip_drops_timings_widgets_and_widget_outputs_only(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"state": {}}
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01"}
    cell.metadata["tags"] = ["keep"]
    text = nbformat.v4.new_output("stream", text="1\n")
    widget = nbformat.v4.new_output(
        "display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"}}
    )
    cell.outputs = [text, widget]
    nb.cells = [cell]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    _strip_module().strip(path)
    out = nbformat.read(path, as_version=4)
    assert "widgets" not in out.metadata
    assert dict(out.cells[0].metadata) == {"tags": ["keep"]}
    assert out.cells[0].outputs == [text]
