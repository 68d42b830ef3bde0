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
    """The package's public modules (the private ones hold no `>>>` example: counted below)."""
    names = [m.name for m in pkgutil.walk_packages(keras_convx.__path__, "keras_convx.")]
    return [name for name in names if not name.rsplit(".", 1)[-1].startswith("_")]


MODULES = _modules()


class _ShapeChecker(doctest.OutputChecker):
    """Reads torch's and tensorflow's shape reprs as the tuple they are on jax."""

    SHAPE = re.compile(r"(?:torch\.Size|TensorShape)\(\[([^\]]*)\]\)")

    def check_output(self, want, got, optionflags):
        def as_tuple(match):
            dims = [n.strip() for n in match.group(1).split(",") if n.strip()]
            return str(tuple(None if n == "None" else int(n) for n in dims))

        return super().check_output(want, self.SHAPE.sub(as_tuple, got), optionflags)


def _examples(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    globs = dict(vars(module), np=np, keras=keras, keras_convx=keras_convx)
    return [t for t in finder.find(module, module_name, globs=globs) if t.examples]


WITH_EXAMPLES = [name for name in MODULES if _examples(name)]


def test_every_example_in_the_package_is_run():
    """Every `>>>` line of the library's files is an example the run below finds (none in a
    private module, none hidden from doctest by a decorator)."""
    lines = 0
    for folder, _, files in os.walk(os.path.join(ROOT, "keras_convx")):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                lines += len(re.findall(r"^\s*>>> ", text, re.M))
    found = sum(len(test.examples) for name in WITH_EXAMPLES for test in _examples(name))
    assert found == lines > 150


@pytest.fixture
def _dispatch_state_kept():
    """The ops switches as they were, even after an example that fails half-way."""
    from keras_convx import ops  # noqa: PLC0415

    reference, opt_in = ops.reference_only(), ops.opt_in_fast_paths()
    yield
    ops.set_reference_only(reference)
    ops.set_opt_in_fast_paths(opt_in)


@pytest.mark.usefixtures("_dispatch_state_kept")
@pytest.mark.parametrize("module_name", WITH_EXAMPLES)
def test_docstring_examples_run(module_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    runner = doctest.DocTestRunner(
        checker=_ShapeChecker(), verbose=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in _examples(module_name):
        runner.run(test, out=report.append, clear_globs=True)
    assert runner.failures == 0, "".join(report)


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
            doc = obj.__doc__ or ""  # its own (getdoc would inherit a parent's)
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
    if keras.backend.backend() == "torch":
        # The reloaded model's compiled predict is torch.compile of every layer the quick
        # start names (98 s, cold cache, 2 cores): called eagerly here; its layers' compiled
        # steps are tests/test_robustness.py's every-layer sweep.
        assert tuple(model(x).shape) == (2, 10)
    else:
        assert model.predict(x, verbose=0).shape == (2, 10)


# --- names and keywords in every documented call --------------------------------------------

LAYER_KEYWORDS = set(inspect.signature(keras.layers.Layer.__init__).parameters) | {
    "input_shape", "input_dim"}


def _documented_code():
    """(where, code, names, carries) for every README block, docstring ```python block and
    `>>>` example; `names` maps the names a docstring's module gives its examples to objects;
    README blocks carry their imports to the blocks after them (`carries`)."""
    for i, block in enumerate(_code_blocks(open(README, encoding="utf-8").read())):
        yield f"README.md block {i + 1}", block, {}, True
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names = {k: v for k, v in vars(module).items() if _ours(v)}
        for test in doctest.DocTestFinder(exclude_empty=True).find(module, module_name):
            for j, block in enumerate(_code_blocks(test.docstring or "")):
                yield f"{test.name} block {j + 1}", block, names, False
            if test.examples:
                yield f"{test.name} >>>", "".join(e.source for e in test.examples), names, False


def _public_names():
    return {name for module in USER_MODULES
            for name in importlib.import_module(f"keras_convx.{module}").__all__}


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


def _imports(tree, names, where, problems):
    """Adds the keras_convx names a block imports to `names`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "keras_convx":
                    continue
                if alias.asname:  # import keras_convx.layers as L
                    names[alias.asname] = importlib.import_module(alias.name)
                else:  # import keras_convx(.layers): binds keras_convx
                    names["keras_convx"] = keras_convx
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_convx"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    names[alias.asname or alias.name] = getattr(module, alias.name)
                else:
                    problems.append(f"{where}: {node.module}.{alias.name} does not exist")


def _problems(where, code, names, public):
    """The problems of one block: names that do not exist, keywords a callee refuses, and
    public keras_convx names called without being imported. `names` gains its imports."""
    try:
        tree = ast.parse(code)
    except SyntaxError as error:
        return [f"{where}: {error}"]
    problems = []
    _imports(tree, names, where, problems)  # before the calls: a block imports, then calls
    names.setdefault("keras_convx", keras_convx)
    defined = {node.id for node in ast.walk(tree)
               if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)} | {
        node.name for node in ast.walk(tree) if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    for node in ast.walk(tree):
        try:
            if isinstance(node, ast.Attribute):
                _resolve(node, names)
            if not isinstance(node, ast.Call):
                continue
            target = _resolve(node.func, names)
            if target is not None and callable(target):
                problem = _check_call(node, target)
                if problem:
                    problems.append(f"{where}, line {node.lineno}: {problem}")
            elif (isinstance(node.func, ast.Name) and node.func.id in public
                  and node.func.id not in names and node.func.id not in defined):
                problems.append(f"{where}, line {node.lineno}: {node.func.id} is called "
                                "but never imported")
        except AttributeError as error:
            problems.append(f"{where}, line {node.lineno}: {error}")
    return list(dict.fromkeys(problems))  # an attribute and its call: reported once


@pytest.mark.skipif(BACKEND != "jax", reason="names and signatures are the same on every backend")
def test_documented_calls_use_real_names_and_keywords():
    blocks = list(_documented_code())
    assert len(blocks) > 50
    public, readme_names, problems = _public_names(), {}, []
    for where, code, names, carries in blocks:
        names = readme_names if carries else dict(names)
        problems += _problems(where, code, names, public)
    assert not problems, "\n".join(problems)
