"""The layout a reader relies on: a short core that imports nothing around it, short files,
no import cycles, and one training step or one sampling call readable in a few files."""
import ast
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from tests.conftest import ROOT

PACKAGE = ROOT / "minivar"
MUST_READ = ["quantizer", "tokenizer", "mask", "transformer", "sampling", "var"]  # the README's reading order
CORE = MUST_READ + ["ar", "data", "flex_attention"]  # the top of the package: what the rest builds on


def module_name(path):
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path):
    """The minivar modules a file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("minivar"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("minivar"))
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {n for n in names if n in modules and n != "minivar"}


def test_the_core_a_student_must_read_is_at_most_650_lines():
    lines = sum(len((PACKAGE / f"{name}.py").read_text().splitlines()) for name in MUST_READ)
    assert lines <= 650, lines


def test_no_file_is_over_300_lines():
    files = list(PACKAGE.rglob("*.py")) + [ROOT / "train.py", ROOT / "sample.py"]
    long = {str(f.relative_to(ROOT)): n for f in files if (n := len(f.read_text().splitlines())) > 300}
    assert not long


def test_imports_run_one_way():
    for name in CORE:
        outside = {m for m in imports_of(PACKAGE / f"{name}.py") if m.count(".") > 1 or m.split(".")[1] not in CORE}
        assert not outside, f"the core's {name}.py imports {outside}"
    for path in (PACKAGE / "training").glob("*.py"):
        assert not {m for m in imports_of(path) if m.startswith(("minivar.studies", "minivar.applications"))}, path
    for path in (PACKAGE / "applications").glob("*.py"):
        assert all(m.count(".") == 1 for m in imports_of(path)), path  # the core only


def test_no_import_cycles():
    graph = {module_name(p): {m for m in imports_of(p) if m != module_name(p)} for p in PACKAGE.rglob("*.py")}
    done, path = set(), []

    def visit(node):
        assert node not in path, f"import cycle: {' -> '.join(path[path.index(node):] + [node])}"
        if node in done:
            return
        path.append(node)
        for child in graph.get(node, ()):
            visit(child)
        path.pop()
        done.add(node)

    for node in graph:
        visit(node)


def files_run_by(fn):
    """The project's files whose Python functions run while fn() runs."""
    seen = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith((str(PACKAGE), str(ROOT / "train.py"))):
            seen.add(Path(frame.f_code.co_filename).relative_to(ROOT).as_posix())

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


def test_one_training_step_and_one_sampling_call_cross_at_most_five_files(tmp_path):
    from minivar.tokenizer import Tokenizer, TokenizerConfig
    from minivar.training.stages import VARStage
    from minivar.var import VARConfig
    torch.manual_seed(0)
    tok = Tokenizer(TokenizerConfig(widths=(8, 16, 16), vocab_size=32, latent_dim=8))
    images, labels = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (40,))
    run = SimpleNamespace(batch_size=8, seed=0, eval_images=8, out_dir=tmp_path, ema_decay=0.0)
    stage = VARStage(run, VARConfig(vocab_size=32, latent_dim=8, dim=32, depth=1, heads=2), (images, labels),
                     (images, labels), torch.device("cpu"),
                     tokenizer={"tokenizer_config": vars(tok.cfg), "tokenizer": tok.state_dict()})
    optimizer = torch.optim.AdamW(stage.model.parameters())
    stage.train_step(0, optimizer, 1e-3, 1.0)  # warm: first calls build caches
    step = files_run_by(lambda: stage.train_step(1, optimizer, 1e-3, 1.0, log=False))  # (as between log lines)
    assert len(step) <= 5 and "minivar/var.py" in step, step
    sampling = files_run_by(lambda: stage.model.generate(stage.tokenizer.quantizer, torch.tensor([3])))
    assert len(sampling) <= 5 and "minivar/sampling.py" in sampling, sampling
