#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv), then exit 0 when it is ready.
# Called by every Makefile target; a user never runs it by hand. The environment is rebuilt when it is
# missing, broken, or when setup.cfg / the detectron2 installer changed since it was made ("stale").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
STAMP="$VENV/.knet-stamp"
want=$(cat setup.cfg setup.py tools/install_detectron2.py tools/bootstrap.sh | sha256sum | cut -c1-16)

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
   && "$VENV/bin/python" -c "import knet, detectron2" >/dev/null 2>&1; then
  exit 0
fi

start=$(date +%s)
if ! "$VENV/bin/python" -c "import sys; assert sys.version_info[:2] == (3, 11)" >/dev/null 2>&1; then
  echo "[bootstrap] creating $VENV with $PY"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi
echo "[bootstrap] installing the project and its dependencies into $VENV (torch first, offline wheels)"
# setuptools>=64 for editable installs of a setup.cfg project without build isolation.
"$VENV/bin/python" -m pip install -q --upgrade "setuptools>=64" wheel 2>&1 | grep -v "^WARNING: Location" || true
# --no-compile, then compileall on every core: pip byte-compiles the ~10,000 modules (torch alone 2,351) one at a
# time, 57 of the 144 s this install took on 2 cores; compileall -j 0 takes 29 s. Compiled they must be: with
# PYTHONDONTWRITEBYTECODE set (as on our machines) every process would compile what it imports, 8 s for torch.
"$VENV/bin/python" -m pip install -q --no-compile --no-build-isolation -e ".[dev]" 2>&1 \
  | grep -v "^WARNING: Location" || true
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# (a few vendored files written for other Python versions do not compile: pip skips them, and so does this)
"$VENV/bin/python" -m compileall -qq -j 0 "$site" >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import torch, torchvision" || { echo "[bootstrap] torch did not install" >&2; exit 1; }
"$VENV/bin/python" tools/install_detectron2.py 2>&1 | grep -v "^WARNING: Location"
"$VENV/bin/python" -c "import knet, detectron2" || { echo "[bootstrap] the environment is incomplete" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[bootstrap] environment ready in $(( $(date +%s) - start )) s"
