"""Every notebook runs top to bottom in fast mode (MINIVAR_FAST=1: tiny models trained on the spot).

They read real CIFAR-10 from ../shared/data when it is there, else a tiny synthetic copy."""
import pytest

from tests.conftest import ROOT, SHARED_CIFAR, write_fake_cifar

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extra: pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the dev extra: pip install -e '.[dev]'")

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_fast_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVAR_FAST", "1")
    if not (SHARED_CIFAR / "cifar-10-batches-py").is_dir():
        write_fake_cifar(tmp_path / "data" / "cifar-10-batches-py", n_train=500, n_test=500)
        monkeypatch.setenv("MINIVAR_DATA_DIR", str(tmp_path / "data"))
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # run from the source, not from the committed outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
