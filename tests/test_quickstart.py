"""The README's quick start, as a newcomer follows it: train, sample, open notebook 04.

The commands are read from README.md itself (with the tiny preset in place of the cpu
one), run in a fresh folder holding a copy of the project and a local data folder, with
no MINIVAR_* variables set; then notebook 04 must find and use that run's checkpoint.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, write_fake_cifar

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extra: pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the dev extra: pip install -e '.[dev]'")


def readme_command(script):
    """The first README command running `script` (the part after any `pip install ... &&`)."""
    for line in (ROOT / "README.md").read_text().splitlines():
        command = line.split("#")[0].split("&&")[-1].strip()
        if command.startswith(f"python {script}"):
            return shlex.split(command)
    raise AssertionError(f"README.md has no `python {script}` command")


def test_the_readme_starts_with_install_and_sample_then_the_tests_then_training():
    """In the order of reward: seconds to the shipped model's samples, then the tests, then an hour of training."""
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    lines = [line for line in first_block.splitlines() if line.strip()]
    assert "pip install" in lines[0] and "python sample.py" in lines[0]
    assert "python -m pytest" in lines[-1]
    assert readme.index("python sample.py") < readme.index("python train.py")
    cpu_only = [line for line in lines if "download.pytorch.org/whl/cpu" in line]
    assert not cpu_only or ("CPU only" in cpu_only[0] and lines.index(cpu_only[0]) == 0)  # first, and marked


@pytest.mark.slow
def test_quick_start_trains_samples_and_notebook_04_uses_that_run(tmp_path):
    for item in ("train.py", "sample.py", "minivar", "notebooks"):
        copy = shutil.copytree if (ROOT / item).is_dir() else shutil.copy
        copy(ROOT / item, tmp_path / item, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                             if (ROOT / item).is_dir() else {}))
    write_fake_cifar(tmp_path / "data" / "cifar-10-batches-py")  # the README's ./data
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIVAR_")}
    env["MINIVAR_CIFAR_URL"] = "file:///nonexistent/cifar-10-python.tar.gz"  # never download in a test

    def run(argv):
        result = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, f"{' '.join(argv)}\n{result.stderr[-3000:]}"
        return result

    train = readme_command("train.py")
    train = train + ["--preset", "tiny"] if "--preset" not in train else \
        [("tiny" if previous == "--preset" else arg) for previous, arg in zip([""] + train, train)]
    run(train)
    assert (tmp_path / "out" / "var.pt").is_file()
    sample = readme_command("sample.py")
    printed = run(sample).stdout
    assert "out/var.pt" in printed  # sampled from the run just made, not the shipped model
    out = sample[sample.index("--out") + 1] if "--out" in sample else "samples.png"
    assert (tmp_path / out).is_file()

    notebook = nbformat.read(tmp_path / "notebooks" / "04_train_and_sample.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MINIVAR_")}
    os.environ["MINIVAR_FAST"] = "1"  # the short version of its own training cells; the paths are the defaults
    try:
        nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path / "notebooks")}}).execute()
    finally:
        os.environ.pop("MINIVAR_FAST")
        os.environ.update(saved)
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")
    assert "out/var.pt" in text and "no trained model" not in text
