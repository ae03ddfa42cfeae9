"""The documentation's contract: every public name has a numpy-style docstring (with an example
for the package-level names), appears in the API reference, and its examples run (doctests);
every page under docs/ is reachable from the index. The site itself is built, with its examples
executed and warnings as errors, by .ci/run (step 1a: ``sphinx-build -W``)."""
import dataclasses
import doctest
import importlib
import inspect
import pathlib
import re

import pytest

import ntkfast
import ntkfast.predict

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"

#: Modules whose docstring examples run here (ntkfast.dask's only where Dask is installed,
#: ntkfast.sklearn's only where scikit-learn is).
DOCTEST_MODULES = ["ntkfast", "ntkfast._layers", "ntkfast._gram", "ntkfast._validation",
                   "ntkfast._operator", "ntkfast._errors", "ntkfast._config", "ntkfast._solvers",
                   "ntkfast.predict", "ntkfast.dask", "ntkfast.sklearn"]


def _public(module):
    return [(f"{module.__name__}.{name}", getattr(module, name)) for name in module.__all__]


def _public_names():
    names = _public(ntkfast) + _public(ntkfast.predict)
    for optional in ("ntkfast.dask", "ntkfast.sklearn"):
        try:
            module = importlib.import_module(optional)
        except ImportError:
            continue
        names += _public(module)
    return names


def _is_data(obj):
    return not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj))


def _own_docstring(obj):
    """obj's own docstring, '' where it has none (or only the one a dataclass or namedtuple
    makes up from the signature, or one inherited from a builtin base)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    doc = (doc or "").strip()
    if inspect.isclass(obj) and (
            (dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("))
            or doc.startswith(obj.__name__ + "(") and hasattr(obj, "_fields")):
        return ""
    return doc


def _public_members(cls):
    """Public methods and properties that cls defines or inherits from an ntkfast class."""
    members = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("ntkfast"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            if inspect.isfunction(value) or isinstance(value, (property, staticmethod, classmethod)):
                members[name] = value
    return members


def _documented_objects():
    objects = []
    for name, obj in _public_names():
        if _is_data(obj):
            continue
        objects.append((name, obj))
        if inspect.isclass(obj):
            for member, value in _public_members(obj).items():
                objects.append((f"{name}.{member}", value.fget if isinstance(value, property)
                                else value))
    return objects


@pytest.mark.parametrize("name,obj", _documented_objects(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_public_name_has_a_docstring(name, obj):
    doc = _own_docstring(obj)
    assert doc, f"{name} has no docstring"
    assert len(doc.split()) >= 3, f"{name}'s docstring says almost nothing: {doc!r}"


def test_package_level_names_have_an_example():
    missing = [name for name, obj in _public_names()
               if not _is_data(obj) and not inspect.ismodule(obj)
               and "Examples\n" not in inspect.cleandoc(_own_docstring(obj))]
    assert not missing, f"no Examples section: {missing}"


def test_docstring_test_detects_a_missing_docstring():
    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        a: int = 1

    def bare():
        pass

    assert _own_docstring(Undocumented) == "" and _own_docstring(bare) == ""


def _api_pages():
    return "\n".join(path.read_text(encoding="utf-8") for path in (DOCS / "api").glob("*.rst"))


def test_every_public_name_is_in_the_api_reference():
    pages = _api_pages()
    listed = set(re.findall(r"^\s+~?([A-Za-z_][\w.]*)\s*$", pages, flags=re.M))
    data = set(re.findall(r"^\.\. data:: (\S+)", pages, flags=re.M))
    modules = set(re.findall(r"^\.\. automodule:: (\S+)", pages, flags=re.M))
    missing = []
    for name, obj in _public_names():
        short = name.rsplit(".", 1)[1]
        if inspect.ismodule(obj):
            found = obj.__name__ in modules
        elif _is_data(obj):
            found = short in data
        else:
            found = short in listed
        if not found:
            missing.append(name)
    assert not missing, f"public names missing from docs/api/*.rst: {missing}"


def _toctree_entries(path):
    entries, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(".. toctree::"):
            inside = True
        elif inside and line.strip() and not line.startswith(" "):
            inside = False
        elif inside and line.strip() and not line.strip().startswith(":"):
            entries.append(line.strip())
    return entries


def test_every_page_is_reachable_from_the_index():
    entries = set(_toctree_entries(DOCS / "index.rst"))
    pages = sorted(p.stem for p in DOCS.glob("*.md")) + sorted(p.stem for p in DOCS.glob("*.rst"))
    generated = {"index", "sg_execution_times"}  # the root, and sphinx-gallery's (orphan) timing page
    missing = [page for page in pages if page not in generated and page not in entries]
    assert not missing, f"docs pages not in index.rst's toctree: {missing}"
    assert "api/index" in entries and "auto_examples/index" in entries
    api = set(_toctree_entries(DOCS / "api" / "index.rst"))
    assert api == {p.stem for p in (DOCS / "api").glob("*.rst")} - {"index"}


def test_examples_are_executed_gallery_scripts():
    examples = sorted((DOCS / "examples").glob("*.py"))
    assert len(examples) >= 5
    for path in examples:
        assert path.name.startswith("plot_"), f"{path.name} would not run in the build"
        text = path.read_text(encoding="utf-8")
        assert text.startswith('"""\n') and "\n===" in text.split('"""')[1], \
            f"{path.name}: sphinx-gallery needs a docstring with a title"


@pytest.mark.parametrize("module_name", DOCTEST_MODULES)
def test_docstring_examples_run(module_name):
    if module_name == "ntkfast.dask":
        pytest.importorskip("distributed")
    if module_name == "ntkfast.sklearn":
        pytest.importorskip("sklearn")
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = []
    tests = [t for t in finder.find(module, module_name) if t.examples]
    assert tests, f"{module_name} has no docstring examples"
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
