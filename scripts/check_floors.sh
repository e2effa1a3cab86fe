#!/usr/bin/env bash
# Check the dependency floors: install the lowest version pyproject.toml allows of every dependency
# (each "name>=X" as "name==X") into a fresh virtualenv, then run a handful of fast tests with it.
# A floor the code has outgrown fails here: an import, a keyword argument, a missing feature.
#
#   scripts/check_floors.sh [VENV_DIR]       default: /tmp/jobformer-floors (recreated)
#
# PYTHON: the interpreter (python3.11). TORCH_INDEX_URL: where torch comes from, e.g.
# https://download.pytorch.org/whl/cpu for the CPU build; unset, PyPI's build (with its CUDA libraries,
# a few GB). Needs the test services: PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379.
# Not part of CI (it downloads old releases); run it after raising or lowering a floor.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/jobformer-floors}
PYTHON=${PYTHON:-python3.11}

# "name[extra]>=X; marker" -> "name[extra]==X; marker", for the [project] dependencies only.
mapfile -t FLOORS < <("$PYTHON" - <<'PY'
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
for dep in deps:
    spec, _, marker = dep.partition(";")
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)\s*>=\s*([^,\s]+)\s*(?:,.*)?", spec)
    if not m:
        raise SystemExit(f"no floor (>=) in dependency {dep!r}: give it one")
    print(f"{m[1]}=={m[2]}" + (f"; {marker.strip()}" if marker else ""))
PY
)
printf 'floors:\n'
printf '  %s\n' "${FLOORS[@]}"

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
TORCH=$(printf '%s\n' "${FLOORS[@]}" | grep '^torch==')
if [[ -n ${TORCH_INDEX_URL:-} ]]; then
    "${PIP[@]}" --index-url "$TORCH_INDEX_URL" "$TORCH"
else
    "${PIP[@]}" "$TORCH"
fi
# The package itself without its requirements: the floors above stand in for them.
"${PIP[@]}" "${FLOORS[@]}" pytest pytest-timeout
"${PIP[@]}" --no-deps -e .
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -m pip freeze | grep -iE "^($(printf '%s\n' "${FLOORS[@]}" | sed -E 's/(\[|==|;).*//' | paste -sd'|'))==" || true

# Left out: numbers recorded with the torch the suite pins (other torch versions compute other floats),
# and a prediction on one out-of-distribution word that flips with them. Old releases warn about their
# newer dependencies (starlette 0.46 about anyio's renames): the suite's `filterwarnings = error` is for
# the current versions, so deprecations are ignored here.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
    -m "not slow and not integration" -k "not recorded_numbers and not test_classify_from_a_run_directory" \
    tests/api/test_jobs.py tests/api/test_bad_input.py tests/core
