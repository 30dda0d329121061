#!/usr/bin/env bash
# Builds sgmoe's wheel with `python -m build` and installs it in two fresh
# virtual environments (no access to this checkout), with the pins of
# constraints.txt:
#   1. [tf]: `sgmoe-train-lm --train_steps 20 --log_every 10` trains on the
#      packaged Brown corpus from an empty folder, `sgmoe-evaluate` scores
#      the saved model on the packaged test split, and
#      `sgmoe-train-translation --help` defaults to the packaged Ding data;
#   2. [jax], no TensorFlow: `import sgmoe.layers` and a MixtureOfExperts
#      call on the JAX backend.
# Prints one PASS line per check and exits non-zero at the first failure.
# Not run in CI: it downloads about 2.5 GB of wheels (cached in
# PIP_CACHE_DIR, default /tmp/pipcache) and takes minutes.
#
#   bash bench/wheel_check.sh          # KEEP=1 keeps the temporary folder
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-/tmp/pipcache}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
WORK="$(mktemp -d /tmp/sgmoe-wheel-check.XXXXXX)"
if [[ "${KEEP:-0}" != 1 ]]; then
  trap 'rm -rf "$WORK"' EXIT
fi
START=$SECONDS

stage() { echo "== $* ($((SECONDS - START)) s)"; }
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

stage "build the sdist and the wheel"
"$PYTHON" -m venv "$WORK/build-env"
"$WORK/build-env/bin/pip" install --quiet build
"$WORK/build-env/bin/python" -m build --outdir "$WORK/dist" "$ROOT" \
  > "$WORK/build.log" 2>&1 || { tail -20 "$WORK/build.log"; fail "build"; }
WHEEL="$(ls "$WORK"/dist/sgmoe-*.whl)"
pass "built $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"

stage "venv with [tf]"
"$PYTHON" -m venv "$WORK/tf-env"
"$WORK/tf-env/bin/pip" install --quiet -c "$ROOT/constraints.txt" \
  "$WHEEL[tf]"
pass "installed $(basename "$WHEEL")[tf]"

mkdir "$WORK/run"
cd "$WORK/run"  # an empty folder: nothing comes from the checkout
stage "sgmoe-train-lm --train_steps 20 --log_every 10"
if ! "$WORK/tf-env/bin/sgmoe-train-lm" --train_steps 20 --log_every 10 \
    --model_dir "$WORK/run/lm" 2>&1 | tee "$WORK/train_lm.log"; then
  fail "sgmoe-train-lm exited with status ${PIPESTATUS[0]}"
fi
grep -q "^validation perplexity: " "$WORK/train_lm.log" \
  || fail "sgmoe-train-lm printed no validation perplexity"
pass "sgmoe-train-lm trained on the packaged corpus (exit 0)"

stage "sgmoe-evaluate --model_dir lm"
if ! "$WORK/tf-env/bin/sgmoe-evaluate" --model_dir "$WORK/run/lm" 2>&1 \
    | tee "$WORK/evaluate.log"; then
  fail "sgmoe-evaluate exited with status ${PIPESTATUS[0]}"
fi
pass "sgmoe-evaluate scored the model on the packaged test split (exit 0)"

stage "sgmoe-train-translation --help"
# absl ends --help with exit status 1.
"$WORK/tf-env/bin/sgmoe-train-translation" --help > "$WORK/help.txt" || true
packaged="$("$WORK/tf-env/bin/python" -c \
  'import sgmoe_scripts.console as c; print(c.data_dir())')"
tr -d ' \n' < "$WORK/help.txt" \
  | grep -q "(default:'$packaged/ding.de-en.train')" \
  || fail "sgmoe-train-translation --help: no default in $packaged"
pass "sgmoe-train-translation defaults to $packaged"

stage "venv with [jax], no TensorFlow"
"$PYTHON" -m venv "$WORK/jax-env"
"$WORK/jax-env/bin/pip" install --quiet -c "$ROOT/constraints.txt" \
  "$WHEEL[jax]"
if "$WORK/jax-env/bin/python" -c "import tensorflow" 2> /dev/null; then
  fail "the [jax] environment has TensorFlow"
fi
KERAS_BACKEND=jax "$WORK/jax-env/bin/python" -c '
import numpy as np
import sgmoe.layers
import keras
layer = sgmoe.layers.MixtureOfExperts(4, 8, k=2)
outputs = layer(np.ones((2, 5, 16), "float32"))
assert keras.backend.backend() == "jax"
assert tuple(outputs.shape) == (2, 5, 16), outputs.shape
print("MixtureOfExperts on", keras.backend.backend(), "->",
      tuple(outputs.shape))
'
pass "import sgmoe.layers and a MixtureOfExperts call on JAX without TF"

stage "done"
echo "all checks passed in $((SECONDS - START)) s"
