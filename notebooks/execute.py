"""Run notebooks top to bottom and stamp their outputs with the source that produced them.

    python notebooks/execute.py notebooks/01_multiscale_tokenizer.ipynb   # one
    python notebooks/execute.py notebooks/*.ipynb                         # all of them, one after another

Each notebook runs in a fresh kernel whose working folder is notebooks/ (as Jupyter and the
tests run them), in full mode (MINIVAR_FAST is removed from the kernel's environment), every
code cell in order. The outputs are written into the file, and each code cell's metadata
records the SHA-256 of the source that produced them (`minivar.source_sha256`); the
notebook's metadata records the mode and how long the run took (`minivar.seconds`, the
README's table of run times).

That stamp is what `tests/test_notebooks.py::test_every_output_comes_from_the_committed_source`
checks: edit a cell and save it without running the notebook again through this script, and
the test names the cell. A notebook that stops on an error (a failed `assert`: a claim its
own numbers refute) is not written at all.
"""
import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def execute(path: Path, timeout: int = 3600) -> float:
    """Run one notebook in full mode and write it back stamped; returns the seconds it took."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
            cell.metadata.pop("minivar", None)
    fast = os.environ.pop("MINIVAR_FAST", None)  # full mode: the kernel inherits this environment
    started = time.perf_counter()
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        if fast is not None:
            os.environ["MINIVAR_FAST"] = fast
    seconds = time.perf_counter() - started
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata["minivar"] = {"source_sha256": source_sha256(cell.source)}
    nb.metadata["minivar"] = {"mode": "full", "seconds": round(seconds)}
    nbformat.write(nb, path)
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="+", type=Path, help="the .ipynb files to run")
    p.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take (default: 3600)")
    args = p.parse_args(argv)
    for path in args.notebooks:
        print(f"{path.name}: running ...", flush=True)
        try:
            seconds = execute(path.resolve(), args.timeout)
        except Exception as e:  # nbclient's CellExecutionError holds the cell and its traceback
            sys.exit(f"{path.name}: stopped, the file is left as it was:\n{str(e)[-3000:]}")
        print(f"{path.name}: {seconds / 60:.1f} min, outputs written and stamped", flush=True)


if __name__ == "__main__":
    main()
