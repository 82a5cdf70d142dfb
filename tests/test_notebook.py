"""The walkthrough notebook runs top to bottom on small settings and shows its pictures."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_walkthrough_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMINE_FAST", "1")
    monkeypatch.setenv("DIFFMINE_WORK", str(tmp_path / "work"))
    nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # contact sheet, samples, maps, cluster grid
    assert (tmp_path / "work" / "mine" / "report.html").exists()
    last = nb.cells[-1].outputs[0]["data"]["text/plain"]
    assert "pointing_game" in last
