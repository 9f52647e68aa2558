#!/usr/bin/env bash
# Create or refresh the test-only environment .venv-d2main used by `make test-d2main`: the whole test suite
# run against detectron2 main (../shared/third_party/detectron2-<commit>.tar.gz, see the README there)
# instead of the detectron2 v0.6 that .venv holds.
#
# .venv-d2main is a thin layer over .venv, as .venv-parity is (tools/parity_env.sh): a `.pth` file makes
# .venv's site-packages (torch, torchvision, fvcore, ..., this package in editable mode) visible to it, and
# only detectron2 main is installed into the layer's own site-packages. A venv's own site-packages comes
# before anything a `.pth` adds, so the layer's detectron2 shadows .venv's v0.6 in every interpreter
# started from .venv-d2main/bin/python, and so in the subprocesses the tests spawn (train_net.py, the demo,
# multi-process workers: they run sys.executable). `check` below verifies exactly that, in a subprocess too.
#
# detectron2 main is built by tools/install_detectron2.py --source (the same rewrites as for v0.6, where
# they still apply: its compiled ops raise a clear error only when called, the model zoo needs no
# pkg_resources; no C++ extension is built). The layer is created without pip or setuptools of its own
# (--without-pip): .venv's pip and setuptools are used, and a setuptools old enough to ship pkg_resources
# cannot hide a missing-pkg_resources problem here.
#
# The layer is rebuilt only when it is missing, broken, or .venv / the archive / this script / the installer
# changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
BASE=${VENV:-.venv}
VENV=${D2MAIN_VENV:-.venv-d2main}
SHARED=${KNET_SHARED:-../shared}
STAMP="$VENV/.knet-d2main-stamp"

shopt -s nullglob
archives=("$SHARED"/third_party/detectron2-*.tar.gz)
shopt -u nullglob
if [[ ${#archives[@]} -ne 1 ]]; then
  echo "[d2main_env] expected exactly one detectron2 main archive $SHARED/third_party/detectron2-<commit>.tar.gz," \
       "found ${#archives[@]}. It comes with the project's shared reference sources (CI has them at ../shared;" \
       "set KNET_SHARED to their folder)." >&2
  exit 2
fi
ARCHIVE=$(cd "$(dirname "${archives[0]}")" && pwd)/$(basename "${archives[0]}")
base_site=$(cd "$BASE" && pwd)/lib/python3.11/site-packages
layer_site=$(pwd)/$VENV/lib/python3.11/site-packages
want=$( (cat tools/d2main_env.sh tools/install_detectron2.py "$BASE/.knet-stamp"; sha256sum "$ARCHIVE"; \
         echo "$base_site") | sha256sum | cut -c1-16)

check() {
  "$VENV/bin/python" - "$layer_site" <<'PYEOF'
import os, subprocess, sys
layer = os.path.realpath(sys.argv[1])
code = "import os, detectron2, knet, torch; print(os.path.realpath(detectron2.__file__))"
here = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
import detectron2, knet, torch  # noqa: E401,F401
for where, path in [("this interpreter", os.path.realpath(detectron2.__file__)),
                    ("a subprocess", here.stdout.strip().splitlines()[-1])]:
    assert path.startswith(layer + os.sep), f"{where} imports detectron2 from {path}, not from the layer {layer}"
import detectron2.model_zoo  # noqa: F401  (no pkg_resources needed)
from importlib.metadata import version
print(f"[d2main_env] detectron2 {version('detectron2')} from {os.path.dirname(detectron2.__file__)}")
PYEOF
}

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && check >/dev/null 2>&1; then
  exit 0
fi

start=$(date +%s)
echo "[d2main_env] creating $VENV with $PY, layered over $BASE, detectron2 from $ARCHIVE"
rm -rf "$VENV"
"$PY" -m venv --without-pip "$VENV"
# `import site; site.addsitedir(...)` (not a bare path) so that .venv's own .pth files, among them the
# editable install of this package, are processed too. It appends: the layer's site-packages stays first.
echo "import site; site.addsitedir('$base_site')" > "$layer_site/zz_knet_base_venv.pth"
# --force: install although .venv's detectron2 is importable (pip leaves that one, outside this
# environment, untouched); the wheel is cached under $KNET_CACHE like the v0.6 one.
"$VENV/bin/python" tools/install_detectron2.py --force --source "$ARCHIVE" 2>&1 | grep -v "^WARNING: Location" \
  || true
check || { echo "[d2main_env] the detectron2-main environment is incomplete (see the error above)" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[d2main_env] environment ready in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1) on disk)"
