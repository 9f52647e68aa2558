#!/usr/bin/env bash
# Create or refresh the test-only environment .venv-parity used by `make parity`: the reference
# mmsegmentation K-Net (mmsegmentation 1.2.2 + mmcv-lite + mmengine) next to this package, so that
# tests/parity/test_parity_mmseg.py can compare our semantic K-Net with the reference one.
#
# .venv-parity is a thin layer over .venv: a `.pth` file makes .venv's site-packages (torch, torchvision,
# detectron2, this package in editable mode) visible to it, so only the mm* packages are installed here
# (about 240 MB instead of a second 5.5 GB copy of the CUDA torch build; CI machines have little disk).
# None of these packages is a runtime requirement of knet: they live only in this environment.
# Pins and why:
#   * torch 2.14.1 / torchvision 0.29.1 / numpy < 2: whatever .venv holds; the constraints file below keeps
#     pip from pulling another torch or a numpy 2 into the layer (detectron2 v0.6 and pycocotools are used
#     with numpy 1.x; it also keeps opencv-python, an mmengine requirement, at a numpy-1 build).
#   * mmcv-lite 2.1.0: mmsegmentation 1.2.2 asserts 2.0.0rc4 <= mmcv < 2.2.0 at import time.
#     mmcv-lite has no compiled ops; tests/parity/mmcv_shim.py stands in for `mmcv.ops` (the K-Net head
#     never calls a compiled op).
#   * ftfy, regex: `import mmseg.utils` imports its CLIP tokenizer, which needs them.
#
# The layer is rebuilt only when it is missing, broken, or .venv / this script / setup.cfg changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
BASE=${VENV:-.venv}
VENV=${PARITY_VENV:-.venv-parity}
STAMP="$VENV/.knet-parity-stamp"
base_site=$(cd "$BASE" && pwd)/lib/python3.11/site-packages
want=$( (cat tools/parity_env.sh setup.cfg "$BASE/.knet-stamp"; echo "$base_site") | sha256sum | cut -c1-16)

check() {
  "$VENV/bin/python" - <<'PYEOF'
import sys
sys.path.insert(0, "tests")
from parity.mmcv_shim import install_mmcv_ops_shim
install_mmcv_ops_shim()
import torch, torchvision, detectron2, knet, mmseg, mmengine, mmcv  # noqa: F401
import mmseg.models  # noqa: F401
assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__
print(f"[parity_env] torch {torch.__version__}, mmseg {mmseg.__version__}, mmcv {mmcv.__version__}, "
      f"mmengine {mmengine.__version__}")
PYEOF
}

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && check >/dev/null 2>&1; then
  exit 0
fi

start=$(date +%s)
echo "[parity_env] creating $VENV with $PY, layered over $BASE"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
# `import site; site.addsitedir(...)` (not a bare path) so that .venv's own .pth files, among them the
# editable install of this package, are processed too.
echo "import site; site.addsitedir('$base_site')" \
  > "$VENV/lib/python3.11/site-packages/zz_knet_base_venv.pth"
CONSTRAINTS="$(cd "$VENV" && pwd)/constraints.txt"
"$BASE/bin/python" - > "$CONSTRAINTS" <<'PYEOF'
import numpy, torch, torchvision
print(f"torch=={torch.__version__.split('+')[0]}\ntorchvision=={torchvision.__version__.split('+')[0]}")
print(f"numpy=={numpy.__version__}\nmmcv-lite==2.1.0\nmmsegmentation==1.2.2")
PYEOF
quiet() { grep -v "^WARNING: Location" || true; }
echo "[parity_env] mmsegmentation 1.2.2, mmcv-lite 2.1.0, mmengine (reusing $BASE for torch, detectron2, knet)"
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" mmsegmentation==1.2.2 mmcv-lite==2.1.0 \
  "mmengine>=0.5,<1" ftfy regex 2>&1 | quiet
check || { echo "[parity_env] the parity environment is incomplete (see the error above)" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[parity_env] environment ready in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1) on disk)"
