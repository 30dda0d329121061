"""Every `>>>` example in a docstring under sgmoe/ runs and prints what it
says (doctest, with ELLIPSIS and NORMALIZE_WHITESPACE).

An example sees its module's names, plus `keras`, `np`, `ops`, `sgmoe`
and the public names of `sgmoe.layers`, `sgmoe.models`, `sgmoe.data`,
`sgmoe.optimizers`, `sgmoe.training` and `sgmoe.evaluation`, the way a
user reading the docs would have them imported; it runs in an empty
folder holding the bundled corpora under data/. Snippets that need more
context than that (a trained model, a corpus on disk, several devices) are
written as plain code blocks, without `>>>`.
"""

import doctest
import importlib
import os
import pkgutil

import keras
import numpy as np
import pytest
from keras import ops

import sgmoe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC_PACKAGES = ("layers", "models", "data", "optimizers", "training",
                   "evaluation", "distribute")


def _modules():
    for info in pkgutil.walk_packages(sgmoe.__path__, "sgmoe."):
        yield importlib.import_module(info.name)


def _examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for module in _modules():
        for test in finder.find(module, module.__name__):
            if test.examples and test.name not in {t.name for t in found}:
                found.append(test)
    return found


def _globals(module_globals):
    names = {"keras": keras, "np": np, "ops": ops, "sgmoe": sgmoe}
    for package in PUBLIC_PACKAGES:
        package = getattr(sgmoe, package)
        names.update({name: getattr(package, name) for name in dir(package)
                      if not name.startswith("_")})
    names.update(module_globals)
    return names


EXAMPLES = _examples()


@pytest.mark.parametrize("test", EXAMPLES, ids=[t.name for t in EXAMPLES])
def test_docstring_example(test, tmp_path, monkeypatch):
    # Examples run in a fresh folder, with the bundled corpora in data/.
    os.symlink(os.path.join(ROOT, "data"), tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    test.globs = _globals(test.globs)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)
