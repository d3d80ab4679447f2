#!/usr/bin/env bash
# Runs the whole test suite inside the project venv. Used by `make test` (and so by CI).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export AZKABAN_CORPUS="${AZKABAN_CORPUS:-$(cd .. && pwd)/shared/azkaban-corpus}"
# Keep TensorFlow quiet and on the CPU.
export TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=""
.venv/bin/python -m pytest -q --timeout=900 "$@"
rc=$?
# pytest exit 5 = no tests collected: a failure for CI.
exit $rc
