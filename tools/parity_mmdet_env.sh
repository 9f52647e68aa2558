#!/usr/bin/env bash
# Create or refresh the test-only environment .venv-parity-mmdet used by `make parity`: the OFFICIAL K-Net
# (ZwwWayne/K-Net, an mmdet 2.x plugin) with mmdet 2.28.2 and mmcv 1.7.2, so that
# tests/parity/test_parity_train_knet.py can compare a panoptic / instance training step of our K-Net with it.
#
# Like .venv-parity (tools/parity_env.sh), this is a thin layer over .venv: a `.pth` file makes .venv's
# site-packages (torch, torchvision, detectron2, this package in editable mode) visible to it, so only the
# mm* packages are installed here. It is a separate layer because mmcv 1.x (needed by mmdet 2.x) and the
# mmcv-lite 2.x of .venv-parity are both the module `mmcv`. None of these packages is a runtime requirement of
# knet: they live only in this environment.
# Pins and why:
#   * torch / torchvision / numpy: whatever .venv holds; the constraints file keeps pip from pulling another.
#   * mmcv 1.7.2, built from its source distribution with MMCV_WITH_OPS=0 (no compiled ops, no CUDA): the last
#     mmcv 1.x, which mmdet 2.28.2 accepts (mmcv>=1.3.17,<1.8.0). Its setup.py needs setuptools<70 (it uses
#     pkg_resources / distutils APIs removed later), installed into this layer first, and
#     --no-build-isolation so that it builds against the layer (torch comes from .venv).
#     tests/parity/mmcv1_shim.py stands in for the compiled `mmcv.ops` names that mmdet imports at module
#     level (K-Net's training path never calls one).
#   * mmdet 2.28.2: the last mmdet 2.x (K-Net's official code is an mmdet 2.x plugin).
#   * yapf 0.40.1: mmcv 1.x's Config calls yapf's FormatCode(..., verify=True), which 0.40.2 removed.
#   * the official K-Net sources, ../shared/third_party/K-Net-5e50ee5.tar.gz (commit 5e50ee5, unmodified),
#     extracted into $VENV/src; their package `knet` would shadow this project's `knet`, so the layer exposes it
#     as the top-level name `knet_official` (its modules import each other only relatively).
#
# The layer is rebuilt only when it is missing, broken, or .venv / this script / setup.cfg / the archive changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
BASE=${VENV:-.venv}
VENV=${PARITY_MMDET_VENV:-.venv-parity-mmdet}
SHARED=${KNET_SHARED:-../shared}
ARCHIVE="$SHARED/third_party/K-Net-5e50ee5.tar.gz"
STAMP="$VENV/.knet-parity-stamp"
if [[ ! -f "$ARCHIVE" ]]; then
  echo "[parity_mmdet_env] $ARCHIVE is missing (the reference sources that CI has at ../shared);" \
    "the official-K-Net training parity tests will be skipped" >&2
  exit 0
fi
base_site=$(cd "$BASE" && pwd)/lib/python3.11/site-packages
want=$( (cat tools/parity_mmdet_env.sh setup.cfg "$BASE/.knet-stamp" "$ARCHIVE"; echo "$base_site") \
  | sha256sum | cut -c1-16)

check() {
  "$VENV/bin/python" - <<'PYEOF'
import sys
sys.path.insert(0, "tests")
from parity.mmcv1_shim import install_mmcv1_ops_shim
install_mmcv1_ops_shim()
import torch, torchvision, detectron2, knet, mmcv, mmdet  # noqa: F401
import mmdet.models  # noqa: F401
import knet_official.det.knet  # noqa: F401
assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__
assert mmcv.__version__ == "1.7.2" and mmdet.__version__ == "2.28.2", (mmcv.__version__, mmdet.__version__)
print(f"[parity_mmdet_env] torch {torch.__version__}, mmdet {mmdet.__version__}, mmcv {mmcv.__version__}")
PYEOF
}

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && check >/dev/null 2>&1; then
  exit 0
fi

start=$(date +%s)
echo "[parity_mmdet_env] creating $VENV with $PY, layered over $BASE"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
site="$VENV/lib/python3.11/site-packages"
# `import site; site.addsitedir(...)` (not a bare path) so that .venv's own .pth files, among them the
# editable install of this package, are processed too.
echo "import site; site.addsitedir('$base_site')" > "$site/zz_knet_base_venv.pth"
CONSTRAINTS="$(cd "$VENV" && pwd)/constraints.txt"
"$BASE/bin/python" - > "$CONSTRAINTS" <<'PYEOF'
import numpy, torch, torchvision
print(f"torch=={torch.__version__.split('+')[0]}\ntorchvision=={torchvision.__version__.split('+')[0]}")
print(f"numpy=={numpy.__version__}\nmmcv==1.7.2\nmmdet==2.28.2\nyapf==0.40.1")
PYEOF
quiet() { grep -v "^WARNING: Location" || true; }
echo "[parity_mmdet_env] setuptools<70, mmcv 1.7.2 (MMCV_WITH_OPS=0), mmdet 2.28.2 (reusing $BASE for torch)"
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" "setuptools<70" wheel 2>&1 | quiet
MMCV_WITH_OPS=0 "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" --no-build-isolation \
  mmcv==1.7.2 yapf==0.40.1 2>&1 | quiet
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" mmdet==2.28.2 2>&1 | quiet
echo "[parity_mmdet_env] official K-Net sources from $ARCHIVE -> $VENV/src, importable as knet_official"
mkdir -p "$VENV/src"
tar xzf "$ARCHIVE" -C "$VENV/src"
ln -s "$(cd "$VENV/src/K-Net-5e50ee5/knet" && pwd)" "$site/knet_official"
check || { echo "[parity_mmdet_env] the parity environment is incomplete (see the error above)" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[parity_mmdet_env] environment ready in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1) on disk)"
