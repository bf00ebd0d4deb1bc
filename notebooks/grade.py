"""Grade a build-it exercise: your function, put into a copy of minivar, against the tests that guard it.

    python notebooks/grade.py mask                # grades notebooks/exercises/mask.py
    python notebooks/grade.py mask --solution     # the same for notebooks/solutions/mask.py
    python notebooks/grade.py --list              # the exercises and the tests that grade each

Each exercise is one piece of the algorithm, a function with its signature and docstring in
notebooks/exercises/<name>.py, whose body you write. This script copies the project into a
temporary folder, replaces the library's function (or method) of that name by yours, runs the
tests that guard that piece there (the table in tests/README.md) and prints PASS, or FAIL with
the tests that failed and the first error. Your checkout is never changed. Exit status 0 for
PASS, 1 for FAIL.
"""
import argparse
import ast
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parent

# name: (the library file, the function or Class.method your code replaces, the tests that grade it)
# (Left out everywhere: the two tests that train for a hundred steps. They take most of the time and
# judge nothing the other tests do not judge more closely.)
LEFT_OUT = "not loss_falls_on_a_tiny_batch and not training_steps_drop_labels"
EXERCISES = {
    "quantize": ("minivar/quantizer.py", "MultiScaleQuantizer.quantize",
                 ["tests/test_quantizer.py", "tests/test_tokenizer.py"]),
    "mask": ("minivar/mask.py", "block_causal_mask", ["tests/test_var.py", "tests/test_ar.py"]),
    "block": ("minivar/transformer.py", "AdaLNBlock.forward", ["tests/test_transformer.py", "tests/test_var.py"]),
    "sampling": ("minivar/var.py", "VAR.generate", ["tests/test_var.py", "tests/test_editing.py"]),
    "keep": ("minivar/applications/editing.py", "keep_mask", ["tests/test_editing.py"]),
}


def find_function(tree, qualname):
    """The FunctionDef node of `name` or `Class.name` at the top of a module."""
    *owner, name = qualname.split(".")
    body = tree.body
    if owner:
        body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == owner[0]).body
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise LookupError(f"no function {qualname}")


def lines_of(node):
    """(first, last) line numbers of a function, its decorators included (1-based, inclusive)."""
    return min([node.lineno] + [d.lineno for d in node.decorator_list]), node.end_lineno


def transplant(library_source: str, qualname: str, yours: str) -> str:
    """library_source with the function `qualname` replaced by the function of the same name in `yours`."""
    target = find_function(ast.parse(library_source), qualname)
    mine = find_function(ast.parse(yours), qualname.split(".")[-1])
    first, last = lines_of(mine)
    body = yours.splitlines()[first - 1:last]
    indent = " " * target.col_offset
    body = [indent + line if line.strip() else "" for line in body]
    lines = library_source.splitlines()
    first, last = lines_of(target)
    return "\n".join(lines[:first - 1] + body + lines[last:]) + "\n"


def scratch_copy(folder: Path):
    """The project's files, with no outputs, and ./data linked so that real-data tests still find it."""
    ignore = shutil.ignore_patterns(".git", "out", "out-*", "data", "__pycache__", "*.egg-info", ".pytest_cache",
                                    "*.ipynb", "*.png")
    shutil.copytree(ROOT, folder, ignore=ignore, symlinks=True)
    if (ROOT / "data").exists():
        (folder / "data").symlink_to((ROOT / "data").resolve())


def grade(name: str, yours: Path, timeout=900):
    """Run the exercise's tests on a copy of the project holding your function.
    Returns (passed, the ids of the tests that failed, pytest's output)."""
    file, qualname, tests = EXERCISES[name]
    with tempfile.TemporaryDirectory(prefix="minivar-grade-") as tmp:
        folder = Path(tmp) / "minivar"
        scratch_copy(folder)
        target = folder / file
        target.write_text(transplant(target.read_text(), qualname, yours.read_text()))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", "-o", "addopts=",
               "--tb=line", "-m", "not slow", "-k", LEFT_OUT, *tests]
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout)
    done.stdout = done.stdout.replace(f"{folder}/", "")  # paths as in your checkout
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.M)
    return done.returncode == 0 and not failed, failed, done.stdout + done.stderr


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", choices=sorted(EXERCISES), help="the exercise to grade")
    p.add_argument("--solution", action="store_true", help="grade notebooks/solutions/<name>.py instead of yours")
    p.add_argument("--list", action="store_true", help="list the exercises and the tests that grade each")
    args = p.parse_args(argv)
    if args.list or not args.name:
        for name, (file, qualname, tests) in EXERCISES.items():
            print(f"{name:9s} notebooks/exercises/{name}.py -> {qualname} in {file}; graded by {', '.join(tests)}")
        return
    yours = NOTEBOOKS / ("solutions" if args.solution else "exercises") / f"{args.name}.py"
    file, qualname, tests = EXERCISES[args.name]
    print(f"grading {yours.relative_to(ROOT)}: your {qualname.split('.')[-1]} in place of {qualname} "
          f"({file}), against {', '.join(tests)} ...", flush=True)
    try:
        passed, failed, output = grade(args.name, yours)
    except (SyntaxError, LookupError) as e:
        sys.exit(f"FAIL: {yours.relative_to(ROOT)} cannot be read: {e}")
    if passed:
        count = re.search(r"(\d+) passed", output)
        print(f"PASS: all {count.group(1) if count else 'the'} tests that guard {qualname} pass with your code")
        return
    errors = [line for line in output.splitlines() if re.match(r"^\S+\.py:\d+: ", line)]
    print(f"FAIL: {len(failed)} test{'s' * (len(failed) != 1)} fail with your code:")
    for test in failed:
        print(f"  {test}")
    if errors:
        print(f"first error: {errors[0]}")
    sys.exit(1)


if __name__ == "__main__":
    main()
