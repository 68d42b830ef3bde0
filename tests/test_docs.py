"""The documentation's code runs, on this backend.

- Every `>>>` example in the package's docstrings runs (doctest) and prints what it says, on
  every backend. Convention (Keras' own): `np` and `keras` are imported, and the example sees
  its module's names and `keras_convx`; a shape prints as a tuple on every backend (torch's
  `torch.Size([2, 3])` and tensorflow's `TensorShape([2, 3])` are read as `(2, 3)`).
  Snippets that need the reader's own model or data are ```python blocks, not `>>>`.
- The README's first block (the quick start) runs as written, in a scratch folder.
- Every call of a keras_convx function or class in the README's blocks, in the ```python
  snippets of the docstrings and in the `>>>` examples names keywords its target accepts, and
  every `keras_convx.a.b` name they use exists (backend-independent: run on jax only).
"""

import ast
import doctest
import importlib
import inspect
import os
import pkgutil
import re

import keras
import numpy as np
import pytest

import keras_convx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()
README = os.path.join(ROOT, "README.md")


def _modules():
    names = [m.name for m in pkgutil.walk_packages(keras_convx.__path__, "keras_convx.")]
    return [name for name in names if not name.rsplit(".", 1)[-1].startswith("_")
            or name.endswith("__init__")]


MODULES = _modules()


class _ShapeChecker(doctest.OutputChecker):
    """Reads torch's and tensorflow's shape reprs as the tuple they are on jax."""

    SHAPE = re.compile(r"(?:torch\.Size|TensorShape)\(\[([^\]]*)\]\)")

    def check_output(self, want, got, optionflags):
        got = self.SHAPE.sub(
            lambda m: str(tuple(int(n) for n in m.group(1).split(",") if n.strip())), got)
        return super().check_output(want, got, optionflags)


def _examples(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    globs = dict(vars(module), np=np, keras=keras, keras_convx=keras_convx)
    return [t for t in finder.find(module, module_name, globs=globs) if t.examples]


WITH_EXAMPLES = [name for name in MODULES if _examples(name)]


def test_the_examples_are_found():
    assert len(WITH_EXAMPLES) >= 20, WITH_EXAMPLES


@pytest.mark.parametrize("module_name", WITH_EXAMPLES)
def test_docstring_examples_run(module_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    runner = doctest.DocTestRunner(
        checker=_ShapeChecker(),
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    for test in _examples(module_name):
        result = runner.run(test, out=failures.append, clear_globs=True)
        assert result.failed == 0, "".join(failures)


USER_MODULES = ("layers", "pruning", "callbacks", "regularizers", "constraints",
                "initializers", "analysis", "export", "training", "applications", "ops")


def test_every_public_name_has_an_example():
    """Every class and function the user-facing modules export (`__all__`) shows an example
    (`>>>` or a ```python block); exceptions are exempt."""
    missing = []
    for module_name in USER_MODULES:
        module = importlib.import_module(f"keras_convx.{module_name}")
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or (
                    inspect.isclass(obj) and issubclass(obj, Exception)):
                continue
            doc = inspect.getdoc(obj) or ""
            if ">>>" not in doc and "```python" not in doc:
                missing.append(f"keras_convx.{module_name}.{name}")
    assert not missing, missing


def _code_blocks(text):
    """The ```python blocks of a Markdown text or a docstring, dedented."""
    blocks = re.findall(r"^([ \t]*)```python\n(.*?)^[ \t]*```", text, re.M | re.S)
    return [inspect.cleandoc("\n" + "\n".join(line[len(indent):] for line in body.splitlines()))
            for indent, body in blocks]


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quick_start = _code_blocks(open(README, encoding="utf-8").read())[0]
    namespace = {}
    exec(compile(quick_start, "README.md (quick start)", "exec"), namespace)
    model = namespace["model"]
    assert os.path.exists(tmp_path / "model.keras")
    x = np.random.default_rng(0).random((2, 20, 24, 1)).astype("float32")
    assert model.predict(x, verbose=0).shape == (2, 10)


# --- names and keywords in every documented call --------------------------------------------

LAYER_KEYWORDS = set(inspect.signature(keras.layers.Layer.__init__).parameters) | {
    "input_shape", "input_dim"}


def _documented_code():
    """(where, code, names) for every README block, docstring ```python block and `>>>`
    example; `names` maps the names a docstring's module gives its examples to objects."""
    for i, block in enumerate(_code_blocks(open(README, encoding="utf-8").read())):
        yield f"README.md block {i + 1}", block, {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names = {k: v for k, v in vars(module).items() if _ours(v)}
        for test in doctest.DocTestFinder(exclude_empty=True).find(module, module_name):
            for j, block in enumerate(_code_blocks(test.docstring or "")):
                yield f"{test.name} block {j + 1}", block, names
            if test.examples:
                yield f"{test.name} >>>", "".join(e.source for e in test.examples), names


def _ours(obj):
    name = getattr(obj, "__name__", "") if inspect.ismodule(obj) else getattr(obj, "__module__", "")
    return isinstance(name, str) and name.startswith("keras_convx")


def _resolve(node, names):
    """The object a Name / Attribute chain denotes, or None where it is not keras_convx's.
    Raises AttributeError for a keras_convx name that does not exist."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, names)
        if base is None or not inspect.ismodule(base):
            return None
        if not hasattr(base, node.attr):
            raise AttributeError(f"{base.__name__}.{node.attr} does not exist")
        return getattr(base, node.attr)
    return None


def _check_call(call, target):
    if any(isinstance(a, ast.Starred) for a in call.args) or any(
            k.arg is None for k in call.keywords):
        return None  # *args / **kwargs: not checked
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    keywords = {k.arg: None for k in call.keywords}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    if takes_any and inspect.isclass(target) and issubclass(target, keras.layers.Layer):
        own = {k: v for k, v in keywords.items() if k in signature.parameters}
        unknown = set(keywords) - set(own) - LAYER_KEYWORDS
        if unknown:
            return f"{target.__name__} takes no keyword {sorted(unknown)}"
        keywords = own
    try:
        signature.bind(*[None] * len(call.args), **keywords)
    except TypeError as error:
        return f"{getattr(target, '__qualname__', target)}{signature}: {error}"
    return None


def _problems(where, code, names):
    try:
        tree = ast.parse(code)
    except SyntaxError as error:
        return [f"{where}: {error}"]
    names = dict(names)
    problems = []
    for node in ast.walk(tree):  # imports first: a block uses names after importing them
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "keras_convx":
                    top = alias.asname or alias.name.split(".")[0]
                    names[top] = importlib.import_module(alias.asname and alias.name
                                                         or "keras_convx")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_convx"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    problems.append(f"{where}: {node.module}.{alias.name} does not exist")
                else:
                    names[alias.asname or alias.name] = getattr(module, alias.name)
    names.setdefault("keras_convx", keras_convx)
    for node in ast.walk(tree):
        try:
            if isinstance(node, ast.Attribute):
                _resolve(node, names)
            if isinstance(node, ast.Call):
                target = _resolve(node.func, names)
                if target is not None and callable(target):
                    problem = _check_call(node, target)
                    if problem:
                        problems.append(f"{where}, line {node.lineno}: {problem}")
        except AttributeError as error:
            problems.append(f"{where}, line {node.lineno}: {error}")
    return problems


@pytest.mark.skipif(BACKEND != "jax", reason="names and signatures are the same on every backend")
def test_documented_calls_use_real_names_and_keywords():
    blocks = list(_documented_code())
    assert len(blocks) > 50
    problems = [p for block in blocks for p in _problems(*block)]
    assert not problems, "\n".join(problems)
