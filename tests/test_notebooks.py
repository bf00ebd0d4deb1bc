"""The notebooks: the committed files carry real outputs, produced by the committed source (the drift
guard: notebooks/execute.py stamps every code cell with the hash of the source it ran), fast checks;
and every notebook runs top to bottom in fast mode (MINIVAR_FAST=1), its figures drawn and its own
`assert` cells passing (slow).

The lesson notebooks (01, 02, 03, 04, 07) state claims in prose and check them with `assert`s in
their cells, so a broken claim fails the notebook, and the notebook fails here. They read real
CIFAR-10 where a user keeps it ($MINIVAR_DATA_DIR, else ./data) when it is there, else a tiny
synthetic copy; their model comes from workspace.lesson_setup (your run, else the shipped model,
else a tiny one trained on the spot).
"""
import hashlib
import re

import pytest
import torch

from minivar.tokenizer import Tokenizer, TokenizerConfig
from minivar.training import workspace
from minivar.var import VAR, VARConfig
from tests.conftest import ROOT, has_real_cifar, real_cifar_dir, write_fake_cifar

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extra: pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the dev extra: pip install -e '.[dev]'")

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LESSONS = [p for p in NOTEBOOKS if p.name[:2] in ("01", "02", "03", "04", "07")]
PLOTS = re.compile(r"\bplt\.(show|imshow|plot|bar|subplots|figure)\b|\.imshow\(|\bdisplay\(")  # code that draws
MACHINE_PATH = re.compile(r"(?<![\w.])/(work|root|home|Users|tmp|private|mnt)/")  # this machine's absolute paths


def name(path):
    return path.name


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def images(cell):
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


def output_text(cell):
    parts = []
    for o in cell.outputs:
        parts.append(o.get("text", ""))
        parts.extend(str(v) for k, v in o.get("data", {}).items() if k.startswith("text/"))
        parts.extend(o.get("traceback", []))
    return "".join(parts)


def test_notebooks_are_numbered_01_to_08():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]
    assert [p.name[:2] for p in LESSONS] == ["01", "02", "03", "04", "07"]


# --- the committed files (fast) ---

@pytest.mark.parametrize("path", NOTEBOOKS, ids=name)
def test_committed_notebook_was_run_and_shows_its_figures(path):
    cells = code_cells(nbformat.read(path, as_version=4))
    not_run = [i for i, c in enumerate(cells) if c.source.strip() and c.execution_count is None]
    assert not not_run, f"code cells {not_run} have never been run: execute the notebook and commit its outputs"
    errors = [i for i, c in enumerate(cells) if any(o.output_type == "error" for o in c.outputs)]
    assert not errors, f"code cells {errors} end in an error"
    blank = [i for i, c in enumerate(cells) if PLOTS.search(c.source) and not images(c)]
    assert not blank, f"code cells {blank} draw a figure, but their committed outputs hold no image"


def stale_cells(nb):
    """Code cells whose source is not the one their outputs came from: the SHA-256 notebooks/execute.py
    recorded when it ran the cell differs from the source's now, or there is none (run another way)."""
    return [i for i, cell in enumerate(code_cells(nb))
            if cell.metadata.get("minivar", {}).get("source_sha256") != hashlib.sha256(cell.source.encode()).hexdigest()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=name)
def test_every_output_comes_from_the_committed_source(path):
    nb = nbformat.read(path, as_version=4)
    command = f"python notebooks/execute.py notebooks/{path.name}"
    assert nb.metadata.get("minivar", {}).get("mode") == "full", f"not run in full mode by the script: {command}"
    stale = stale_cells(nb)
    assert not stale, f"code cells {stale} changed since their outputs were produced; run them again: {command}"
    counts = [c.execution_count for c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), f"not run top to bottom in one kernel: {command}"


def test_the_drift_guard_catches_a_cell_edited_without_running_it_again():
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    assert stale_cells(nb) == []
    code_cells(nb)[2].source += "\nprint('a line added in an editor, never run')"
    assert stale_cells(nb) == [2]
    del code_cells(nb)[0].metadata["minivar"]  # run in Jupyter and saved: outputs, but no stamp
    assert stale_cells(nb) == [0, 2]


def test_execute_runs_a_notebook_in_full_mode_and_stamps_each_cell(tmp_path, monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("execute", ROOT / "notebooks" / "execute.py")
    execute = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(execute)
    monkeypatch.setenv("MINIVAR_FAST", "1")  # the script runs notebooks in full mode whatever the caller's setting
    path = tmp_path / "two_cells.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nprint(os.environ.get('MINIVAR_FAST'))"),
                                                   nbformat.v4.new_markdown_cell("text"),
                                                   nbformat.v4.new_code_cell("x = 1 + 1\nx")]), path)
    execute.execute(path)
    nb = nbformat.read(path, as_version=4)
    assert output_text(code_cells(nb)[0]) == "None\n" and output_text(code_cells(nb)[1]) == "2"
    assert stale_cells(nb) == [] and nb.metadata["minivar"]["mode"] == "full" and nb.metadata["minivar"]["seconds"] >= 0
    assert [c.execution_count for c in code_cells(nb)] == [1, 2]


def test_the_readme_lists_each_notebooks_full_run_time_as_measured():
    """README.md's table of notebooks gives each one's run time: the seconds execute.py recorded, in minutes."""
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        seconds = nbformat.read(path, as_version=4).metadata["minivar"]["seconds"]
        row = re.search(rf"^\| \[`{re.escape(path.name)}`\].*\| ([\d.]+) min \|$", readme, re.M)
        assert row, f"README.md has no row for {path.name}"
        assert row.group(1) == f"{seconds / 60:.1f}", (path.name, row.group(1), seconds)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=name)
def test_no_absolute_paths_of_this_machine(path):
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        outputs = output_text(cell) if cell.cell_type == "code" else ""
        for where, text in (("source", cell.source), ("outputs", outputs)):
            found = MACHINE_PATH.search(text)
            assert not found, f"cell {i} {where}: {text[max(0, found.start() - 60):found.end() + 60]!r}"


@pytest.mark.parametrize("path", LESSONS, ids=name)
def test_lessons_use_the_shared_setup_and_check_their_claims(path):
    cells = code_cells(nbformat.read(path, as_version=4))
    setup = [line for line in cells[0].source.splitlines() if line.strip()]
    assert "lesson_setup(" in cells[0].source and len(setup) <= 15, "a setup cell of a few lines"
    sources = "\n".join(c.source for c in cells)
    assert "import train" not in sources and "out-notebook" not in sources  # no train.py runs (small in-cell ones only)
    assert len(re.findall(r"^\s*assert ", sources, re.M)) >= 2, "state a claim, then assert it"


def test_exercises_have_checks_and_name_tests_that_exist():
    index = (ROOT / "notebooks" / "EXERCISES.md").read_text()
    sections = re.findall(r"^## (\d+)\. ", index, re.M)
    assert len(sections) >= 6 and sections == [str(i) for i in range(1, len(sections) + 1)]
    assert index.count("**Check:**") == len(sections)
    texts = [index] + [c.source for p in LESSONS for c in nbformat.read(p, as_version=4).cells]
    for path in LESSONS:  # each lesson ends with its exercises, each with a check
        last = nbformat.read(path, as_version=4).cells[-1]
        assert last.cell_type == "markdown" and "## Exercise" in last.source and "*Check:*" in last.source
    for file, test in {m for text in texts for m in re.findall(r"(tests/test_\w+\.py)::(\w+)", text)}:
        assert re.search(rf"^def {test}\(", (ROOT / file).read_text(), re.M), f"{file}::{test} is cited but gone"


# --- workspace.lesson_setup: which model a lesson runs on (fast) ---

def write_var_checkpoint(path, **extra):
    """A var checkpoint as train.py writes one (random weights; the config travels with them)."""
    tok_cfg = TokenizerConfig(widths=(8, 16, 16), vocab_size=16, latent_dim=4, scales=(1, 2, 4, 8))
    var_cfg = VARConfig(scales=tok_cfg.scales, vocab_size=16, latent_dim=4, dim=16, depth=1, heads=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "var", "model": VAR(var_cfg).state_dict(), "model_config": vars(var_cfg),
                "tokenizer_config": vars(tok_cfg), "tokenizer": Tokenizer(tok_cfg).state_dict(), "step": 1, **extra}, path)


@pytest.fixture
def places(tmp_path, monkeypatch):
    """No run in the default run folder, no shipped model, a small fake CIFAR-10."""
    write_fake_cifar(tmp_path / "data" / "cifar-10-batches-py", n_train=50, n_test=20)
    monkeypatch.setenv("MINIVAR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MINIVAR_OUT_DIR", raising=False)
    monkeypatch.setattr(workspace, "DEFAULT_OUT", tmp_path / "out")
    monkeypatch.setattr(workspace, "SHIPPED", tmp_path / "checkpoints" / "var_cpu.pt")
    return tmp_path


def test_your_run_comes_before_the_shipped_model(places, capsys):
    recommended = {"cfg_scale": 4.5, "top_k": 50, "top_p": 1.0, "temperature": 1.0}
    write_var_checkpoint(places / "checkpoints" / "var_cpu.pt", sampling=recommended)
    lesson = workspace.lesson_setup("var")
    assert lesson.source.startswith("the shipped model") and lesson.model.cfg.dim == 16
    assert lesson.sampling == recommended  # the exported checkpoint's settings, for the notebooks to sample with
    write_var_checkpoint(places / "out" / "var.pt")
    lesson = workspace.lesson_setup("var")
    assert lesson.source.startswith("your run") and isinstance(lesson.model, VAR) and not lesson.model.training
    assert lesson.sampling == {}  # train.py's checkpoints recommend none
    assert len(lesson.test_images) == 20 and lesson.tokenizer.cfg.scales == (1, 2, 4, 8)
    out = capsys.readouterr().out
    assert "NOTE" not in out and str(places) not in out  # no banner, no absolute path


def test_a_tokenizer_lesson_takes_your_tokenizer_alone(places):
    write_var_checkpoint(places / "checkpoints" / "var_cpu.pt")
    tok_cfg = TokenizerConfig(widths=(8, 16, 16), vocab_size=8, latent_dim=4, scales=(2, 8))
    (places / "out").mkdir()
    torch.save({"kind": "tokenizer", "model": Tokenizer(tok_cfg).state_dict(), "model_config": vars(tok_cfg)},
               places / "out" / "tokenizer.pt")
    lesson = workspace.lesson_setup("tokenizer")
    assert lesson.source.startswith("your run") and lesson.model is None and lesson.tokenizer.cfg.scales == (2, 8)
    assert workspace.lesson_setup("var").source.startswith("the shipped model")  # a VAR lesson needs a var.pt


def test_a_relative_out_dir_is_read_from_the_project_root_not_from_notebooks(places, monkeypatch):
    """`MINIVAR_OUT_DIR=out-euclid jupyter lab notebooks/`: the kernel runs in notebooks/, the run is in ./out-euclid."""
    write_var_checkpoint(places / "checkpoints" / "var_cpu.pt")
    write_var_checkpoint(places / "out-mine" / "var.pt")
    (places / "notebooks").mkdir()
    monkeypatch.chdir(places / "notebooks")
    monkeypatch.setattr(workspace, "ROOT", places)
    monkeypatch.setenv("MINIVAR_OUT_DIR", "out-mine")
    lesson = workspace.lesson_setup("var")
    assert lesson.source == "your run (out-mine/var.pt)"


@pytest.mark.parametrize("need", ["var", "tokenizer"])
def test_a_named_out_dir_without_a_run_is_an_error_not_the_shipped_model(places, monkeypatch, need):
    write_var_checkpoint(places / "checkpoints" / "var_cpu.pt")
    (places / "out-empty").mkdir()
    monkeypatch.setattr(workspace, "ROOT", places)
    monkeypatch.setenv("MINIVAR_OUT_DIR", "out-empty")
    with pytest.raises(FileNotFoundError, match="MINIVAR_OUT_DIR=out-empty names out-empty, which holds no"):
        workspace.lesson_setup(need)


def test_the_data_notice_is_one_line_that_points_to_where_it_is_explained(places, capsys):
    write_var_checkpoint(places / "checkpoints" / "var_cpu.pt")
    lesson = workspace.lesson_setup("var")  # the fake CIFAR-10 is not the official release
    out = capsys.readouterr().out
    assert lesson.data_differs and "official release" not in out.replace("the official release's", "")
    assert sum("official" in line for line in out.splitlines()) == 1 and "notebook 01" in out


# --- running them (slow) ---

@pytest.mark.slow
def test_with_no_model_anywhere_a_tiny_one_is_trained_and_said_loudly(places, capsys):
    lesson = workspace.lesson_setup("var")
    out = capsys.readouterr().out
    assert out.startswith("#") and "NOTE: no trained model found" in out and "samples are noise" in out
    assert lesson.source == "a tiny model trained just now" and isinstance(lesson.model, VAR)
    assert not (places / "out").exists()  # trained in a temporary folder, not in your run's
    assert str(places) not in out


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=name)
def test_notebook_runs_in_fast_mode_and_draws_its_figures(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVAR_FAST", "1")
    data = real_cifar_dir()
    if not has_real_cifar():
        data = tmp_path / "data"
        write_fake_cifar(data / "cifar-10-batches-py", n_train=500, n_test=500)
    monkeypatch.setenv("MINIVAR_DATA_DIR", str(data))
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # run from the source, not from the committed outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    try:
        nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    except nbclient.exceptions.CellExecutionError as e:  # a failed assert is a claim the notebook got wrong
        pytest.fail(f"{path.name}: {str(e)[-3000:]}")
    cells = code_cells(nb)
    blank = [i for i, c in enumerate(cells) if PLOTS.search(c.source) and not images(c)]
    assert not blank, f"code cells {blank} draw a figure, but showed no image"
    if path in LESSONS:
        assert sum(images(c) for c in cells) >= 1
