#!/usr/bin/env bash
# Install ftbridge with its test tools into .venv and run every check: ruff, mypy, pytest.
# Needs only Python 3.11+. PostgreSQL tests run when FTBRIDGE_TEST_POSTGRES_URL (default
# postgresql://postgres@127.0.0.1:5432/postgres) answers, and say why they skip when it does not.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
bash scripts/install-helm.sh  # a real helm binary, for rendering the chart in the tests
echo "== ruff"
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
echo "== mypy"
.venv/bin/python -m mypy
echo "== pytest"
# Two workers (this project's machines have 2 cores); a test file stays on one worker.
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
