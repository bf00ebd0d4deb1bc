"""The build-it exercises: notebooks/exercises/<name>.py holds a stub of one piece of the algorithm,
notebooks/solutions/<name>.py a solution, and notebooks/grade.py puts either in place of the
library's function in a copy of the project and runs the tests that guard that piece.

Fast: the grader's splice on a worked example; every stub and solution defines the function the
grader replaces and uses only names its library file provides. Slow: each solution grades PASS
and each untouched stub FAIL, through the grader itself."""
import ast
import builtins
import importlib.util

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("grade", ROOT / "notebooks" / "grade.py")
grade = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grade)
NAMES = sorted(grade.EXERCISES)


def test_there_are_build_it_exercises_for_the_pieces_of_the_algorithm():
    assert {"mask", "quantize", "sampling", "keep"} <= set(NAMES)
    for name in NAMES:
        assert (ROOT / "notebooks" / "exercises" / f"{name}.py").is_file()
        assert (ROOT / "notebooks" / "solutions" / f"{name}.py").is_file()


def test_the_grader_replaces_exactly_the_named_method_decorators_included():
    library = ("import torch\n\n\nclass A:\n    def f(self):\n        return 1\n\n    @torch.no_grad()\n"
               "    def g(self, x):\n        return x\n\n\ndef g(x):\n    return 0\n")
    yours = "import torch\n\n\n@torch.no_grad()\ndef g(self, x):\n\n    return 2 * x  # mine\n"
    expected = ("import torch\n\n\nclass A:\n    def f(self):\n        return 1\n\n    @torch.no_grad()\n"
                "    def g(self, x):\n\n        return 2 * x  # mine\n\n\ndef g(x):\n    return 0\n")
    assert grade.transplant(library, "A.g", yours) == expected
    assert grade.transplant(library, "g", "def g(x):\n    return 5\n").endswith("def g(x):\n    return 5\n")


def module_names(tree):
    """Names a module defines at its top: imports, functions, classes, assignments."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def free_names(function):
    """Names a function reads that it neither takes nor binds itself."""
    bound = {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}
    bound |= {n.id for n in ast.walk(function) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    bound |= {n.name for n in ast.walk(function) if isinstance(n, (ast.FunctionDef, ast.Lambda)) and n is not function
              and hasattr(n, "name")}
    read = {n.id for n in ast.walk(function) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return read - bound - set(dir(builtins))


@pytest.mark.parametrize("folder", ["exercises", "solutions"])
@pytest.mark.parametrize("name", NAMES)
def test_each_file_defines_the_function_and_uses_only_names_its_library_file_has(name, folder):
    file, qualname, _ = grade.EXERCISES[name]
    yours = (ROOT / "notebooks" / folder / f"{name}.py").read_text()
    library = (ROOT / file).read_text()
    mine = grade.find_function(ast.parse(yours), qualname.split(".")[-1])
    theirs = grade.find_function(ast.parse(library), qualname)
    assert ast.dump(mine.args) == ast.dump(theirs.args), "the same signature as the library's"
    imported = {n for n in module_names(ast.parse(yours)) if n != mine.name}
    assert imported <= module_names(ast.parse(library)), f"{folder}/{name}.py imports what {file} does not"
    if folder == "solutions":  # (a stub still lacks the names the student's lines will bind)
        missing = free_names(mine) - module_names(ast.parse(library))
        assert not missing, f"{folder}/{name}.py uses {missing}, which {file} does not define"
    compile(grade.transplant(library, qualname, yours), file, "exec")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_the_solution_passes_and_the_untouched_stub_fails(name):
    passed, failed, output = grade.grade(name, ROOT / "notebooks" / "solutions" / f"{name}.py")
    assert passed and not failed, output[-3000:]
    passed, failed, output = grade.grade(name, ROOT / "notebooks" / "exercises" / f"{name}.py")
    assert not passed and failed and "NotImplementedError" in output, output[-3000:]
