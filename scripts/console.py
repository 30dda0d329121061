"""What the scripts print: their own lines, not native libraries' logs.

TensorFlow 2.21 writes a dozen `I0000`/`W0000` lines (oneDNN, CUDA
drivers, CPU features) straight to file descriptor 2 while it loads,
before its logging is set up, so neither TF_CPP_MIN_LOG_LEVEL nor Python
can filter them. `import_quietly` points descriptor 2 at a temporary file
while TensorFlow, Keras and sgmoe load and shows what was written only
with --verbose or when the import fails.

`data_dir` and `help_for_module` let the same scripts run from a checkout
and as the console scripts of an installed wheel (`sgmoe-train-lm`, ...).
"""

import contextlib
import importlib
import os
import sys
import tempfile


def one_line(message):
    """`message` (an exception or text) as one line, for `sys.exit`."""
    return " ".join(line.strip() for line in str(message).splitlines()
                    if line.strip())


def parse_flags(argv):
    """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`,
    with an invalid or unknown flag ending the script in one line."""
    from absl import flags

    name = os.path.splitext(os.path.basename(argv[0]))[0]
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.exit(f"{name}: {one_line(error)}")


def plain_warnings():
    """Python warnings as one line each (`RuntimeWarning: text`), without
    the file and source line a user of the script does not need."""
    import warnings

    warnings.formatwarning = (
        lambda message, category, *_, **__:
        f"{category.__name__}: {one_line(message)}\n")


def import_quietly(modules=("tensorflow", "keras", "sgmoe"), verbose=False):
    """Imports `modules` with native log lines held back (see above)."""
    error = None
    with _captured_descriptor(2) as captured:
        try:
            for module in modules:
                importlib.import_module(module)
        except BaseException as raised:  # shown with the held-back lines
            error = raised
        text = captured()
    if verbose or error is not None:
        sys.stderr.write(text)
        sys.stderr.flush()
    if error is not None:
        raise error


def data_dir():
    """The folder of the bundled corpora: the repository's `data/` when the
    scripts run from a checkout (or an editable install), the package data
    `sgmoe_scripts/data` when they run from an installed wheel."""
    scripts_dir = os.path.dirname(os.path.abspath(__file__))
    packaged = os.path.join(scripts_dir, "data")
    if os.path.isdir(packaged):
        return packaged
    return os.path.join(scripts_dir, "..", "data")


def help_for_module(module_name):
    """Makes `--help` describe the script `module_name` (its `__name__`)
    also when it runs as an installed console script.

    absl's `--help` prints the docstring of `__main__` and the key flags
    of the module named `sys.argv[0]`; a script run as a file is both, but
    a console script's `__main__` is a wrapper that imports the script as
    `sgmoe_scripts.NAME`. Nothing changes when `module_name` is
    "__main__". Call it before `app.run`."""
    from absl import flags

    if module_name == "__main__":
        return
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    main_module = sys.modules.get("__main__")
    if main_module is not None and not main_module.__doc__:
        main_module.__doc__ = sys.modules[module_name].__doc__


@contextlib.contextmanager
def _captured_descriptor(descriptor):
    """Sends `descriptor`'s output to a temporary file; yields a function
    returning what was written so far."""
    sys.stderr.flush()
    saved = os.dup(descriptor)
    with tempfile.TemporaryFile(mode="w+b") as file:
        os.dup2(file.fileno(), descriptor)

        def captured():
            file.seek(0)
            return file.read().decode("utf-8", errors="replace")

        try:
            yield captured
        finally:
            os.dup2(saved, descriptor)
            os.close(saved)
