"""The wheel built from this checkout holds what an installed sgmoe runs:
every package of the library, the console scripts and their package
`sgmoe_scripts`, the bundled corpora as its package data, LICENSE and
NOTICE; its console scripts find the packaged corpora; and
`import sgmoe.layers` loads no TensorFlow (JAX users need not install
it).

The wheel is built with the installed setuptools, without build isolation
and without an index (`pip wheel --no-deps --no-build-isolation
--no-index`), from a copy of the files pyproject.toml names, so the
checkout gets no build/ folder. `bench/wheel_check.sh` installs it with
its dependencies in fresh virtual environments instead.
"""

import ast
import configparser
import email.parser
import glob
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What pyproject.toml builds from: its readme, license files and packages.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "NOTICE", "LICENSES",
           "sgmoe", "scripts", "data")
CONSOLE_SCRIPTS = {"sgmoe-train-lm": "train_lm",
                   "sgmoe-train-translation": "train_translation",
                   "sgmoe-evaluate": "evaluate",
                   "sgmoe-export": "export",
                   "sgmoe-inspect-experts": "inspect_experts"}
CORPORA = sorted(os.path.basename(path)
                 for path in glob.glob(os.path.join(ROOT, "data", "*.gz")))


def _version():
    with open(os.path.join(ROOT, "sgmoe", "__init__.py"),
              encoding="utf-8") as file:
        for node in ast.parse(file.read()).body:
            if (isinstance(node, ast.Assign)
                    and node.targets[0].id == "__version__"):
                return node.value.value
    raise AssertionError("sgmoe/__init__.py sets no __version__")


def _source_packages():
    """Dotted names of the packages under sgmoe/ (folders with an
    __init__.py)."""
    packages = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "sgmoe")):
        if "__init__.py" in files:
            relative = os.path.relpath(folder, ROOT)
            packages.add(relative.replace(os.sep, "."))
    return packages


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory):
    setuptools_major = int(
        importlib.metadata.version("setuptools").split(".")[0])
    if setuptools_major < 77:
        pytest.fail(
            f"setuptools {importlib.metadata.version('setuptools')} cannot "
            "build sgmoe (pyproject.toml needs setuptools>=77, which the "
            "[test] extra installs: pip install -c constraints.txt -e "
            "'.[tf,jax,test]')")
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc"))
        else:
            shutil.copy(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "--no-build-isolation", "--no-index", "--disable-pip-version-check",
         "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list(out.glob("*.whl"))
    assert [w.name for w in wheels] == [f"sgmoe-{_version()}-py3-none-any.whl"]
    return wheels[0]


@pytest.fixture(scope="module")
def wheel_files(wheel_path):
    """Path in the wheel -> bytes."""
    with zipfile.ZipFile(wheel_path) as wheel:
        return {name: wheel.read(name) for name in wheel.namelist()}


def _dist_info(wheel_files, name):
    return wheel_files[f"sgmoe-{_version()}.dist-info/{name}"]


def test_entry_points_name_the_run_function_of_each_script(wheel_files):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(
        _dist_info(wheel_files, "entry_points.txt").decode())
    scripts = dict(entry_points["console_scripts"])
    assert scripts == {command: f"sgmoe_scripts.{module}:run"
                       for command, module in CONSOLE_SCRIPTS.items()}
    for module in CONSOLE_SCRIPTS.values():
        tree = ast.parse(wheel_files[f"sgmoe_scripts/{module}.py"])
        functions = {node.name for node in tree.body
                     if isinstance(node, ast.FunctionDef)}
        assert {"main", "run"} <= functions, module


def test_wheel_holds_every_module_of_sgmoe_and_the_scripts(wheel_files):
    packages = {os.path.dirname(name).replace("/", ".")
                for name in wheel_files if name.endswith("/__init__.py")}
    assert packages == _source_packages() | {"sgmoe_scripts"}
    expected = set()
    for folder in ("sgmoe", "scripts"):
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"),
                              recursive=True):
            relative = os.path.relpath(path, ROOT).replace(os.sep, "/")
            expected.add(relative.replace("scripts/", "sgmoe_scripts/", 1))
    modules = {name for name in wheel_files if name.endswith(".py")}
    assert modules == expected
    assert not [name for name in wheel_files
                if name.startswith(("tests/", "bench/", "data/"))]


def test_wheel_holds_the_bundled_corpora_unchanged(wheel_files):
    assert len(CORPORA) == 24
    packaged = sorted(name[len("sgmoe_scripts/data/"):]
                      for name in wheel_files
                      if name.startswith("sgmoe_scripts/data/")
                      and name.endswith(".gz"))
    assert packaged == CORPORA
    for corpus in CORPORA:
        with open(os.path.join(ROOT, "data", corpus), "rb") as file:
            digest = hashlib.sha256(file.read()).hexdigest()
        packaged = wheel_files[f"sgmoe_scripts/data/{corpus}"]
        assert hashlib.sha256(packaged).hexdigest() == digest, corpus
    assert b"# Bundled data" in wheel_files["sgmoe_scripts/data/README.md"]


def test_wheel_holds_license_and_notice(wheel_files):
    license_text = _dist_info(wheel_files, "licenses/LICENSE").decode()
    assert "Apache License" in license_text
    assert "Version 2.0, January 2004" in license_text
    notice = _dist_info(wheel_files, "licenses/NOTICE").decode()
    # Every bundled corpus and its license is named.
    for corpus in {name.split(".")[0] for name in CORPORA}:
        assert f"{corpus}." in notice, corpus
    for license_name in ("GPL-2.0-or-later", "MPL-2.0", "MIT"):
        assert license_name in notice, license_name
    metadata = email.parser.Parser().parsestr(
        _dist_info(wheel_files, "METADATA").decode())
    assert metadata["License-Expression"].startswith("Apache-2.0")
    assert {"LICENSE", "NOTICE"} <= set(metadata.get_all("License-File"))
    for license_file in metadata.get_all("License-File"):
        _dist_info(wheel_files, f"licenses/{license_file}")


def test_dependencies_are_ranges_and_tensorflow_is_an_extra(wheel_files):
    metadata = email.parser.Parser().parsestr(
        _dist_info(wheel_files, "METADATA").decode())
    assert metadata["Version"] == _version()
    requirements = metadata.get_all("Requires-Dist")
    assert not [r for r in requirements if "==" in r.split(";")[0]]
    base = [r for r in requirements if "extra ==" not in r]
    assert sorted(r.split("<")[0].split(">")[0] for r in base) == [
        "keras", "numpy"]
    assert set(metadata.get_all("Provides-Extra")) == {
        "tf", "jax", "jax-gpu", "test"}
    tensorflow = [r for r in requirements if r.startswith("tensorflow<")]
    assert tensorflow == ['tensorflow<2.22,>=2.21; extra == "tf"']


def test_installed_console_script_finds_the_packaged_corpora(
        wheel_path, tmp_path):
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "-q", "--target", str(target),
         str(wheel_path)],
        capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = dict(os.environ, PYTHONPATH=str(target))
    command = str(target / "bin" / "sgmoe-train-lm")
    # Runs in an empty folder: nothing may come from the checkout.
    work = tmp_path / "work"
    work.mkdir()
    shown = subprocess.run([command, "--help"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=120)
    # absl ends --help with exit status 1.
    assert shown.returncode == 1, shown.stdout + shown.stderr
    # The script's docstring and its own flags, as `python
    # scripts/train_lm.py --help` shows them.
    assert shown.stdout.startswith("Trains an LSTM-MoE language model")
    packaged = os.path.join(str(target), "sgmoe_scripts", "data")
    # absl wraps long defaults over lines.
    assert (f"(default:'{packaged}/brown.train.txt.gz')"
            in "".join(shown.stdout.split()))
    assert os.path.isfile(os.path.join(packaged, "brown.train.txt.gz"))
    refused = subprocess.run([command, "--no_such_flag"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "sgmoe-train-lm: Unknown command line flag 'no_such_flag'")


NO_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = None  # any import of tensorflow raises
import sgmoe.layers
import keras
import sgmoe
layer = sgmoe.layers.MixtureOfExperts(4, 8, k=2)
restored = sgmoe.layers.MixtureOfExperts.from_config(layer.get_config())
print(keras.backend.backend(), restored.num_experts,
      type(sgmoe.models.MoELanguageModel).__name__,
      callable(sgmoe.distribute.parse_mesh_spec))
try:
    sgmoe.evaluation
except ImportError as error:
    print("sgmoe.evaluation:", error)
"""


def test_layers_load_on_jax_without_tensorflow():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("needs JAX (the [jax] extra)")
    env = dict(os.environ, KERAS_BACKEND="jax")
    ran = subprocess.run([sys.executable, "-c", NO_TENSORFLOW], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "jax 4 type True"
    # The data pipeline behind sgmoe.evaluation needs TensorFlow.
    assert lines[1].startswith("sgmoe.evaluation: import of tensorflow")
