#!/usr/bin/env bash
# Create or refresh the test-only environment .venv-parity used by `make parity`: the reference
# mmsegmentation K-Net (mmsegmentation 1.2.2 + mmcv-lite + mmengine) next to this package, so that
# tests/test_parity_mmseg.py can compare our semantic K-Net with the reference one.
#
# None of these packages is a runtime requirement of knet: they live only in this environment.
# Pins and why:
#   * torch 2.14.1 / torchvision 0.29.1: the same build as .venv (it installs offline here); it is pinned
#     through a constraints file for every later step, so that no mm* package can pull another torch.
#   * mmcv-lite 2.1.0: mmsegmentation 1.2.2 asserts 2.0.0rc4 <= mmcv < 2.2.0 at import time.
#     mmcv-lite has no compiled ops; tests/parity/mmcv_shim.py stands in for `mmcv.ops` (the K-Net head
#     never calls a compiled op).
#   * numpy < 2: the same major version as .venv (detectron2 v0.6 and pycocotools are used with numpy 1.x);
#     it also keeps opencv-python (an mmengine requirement) at a numpy-1 build.
#   * ftfy, regex: `import mmseg.utils` imports its CLIP tokenizer, which needs them.
# detectron2 comes from the wheel cached by tools/install_detectron2.py (built once for .venv).
#
# The environment is rebuilt only when it is missing, broken, or this script / setup.cfg changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${PARITY_VENV:-.venv-parity}
STAMP="$VENV/.knet-parity-stamp"
want=$(cat tools/parity_env.sh setup.cfg setup.py tools/install_detectron2.py | sha256sum | cut -c1-16)

check() {
  "$VENV/bin/python" - <<'EOF'
import sys
sys.path.insert(0, "tests")
from parity.mmcv_shim import install_mmcv_ops_shim
install_mmcv_ops_shim()
import torch, torchvision, detectron2, knet, mmseg, mmengine, mmcv  # noqa: F401
import mmseg.models  # noqa: F401
assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__
print(f"[parity_env] torch {torch.__version__}, mmseg {mmseg.__version__}, mmcv {mmcv.__version__}, "
      f"mmengine {mmengine.__version__}")
EOF
}

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && check >/dev/null 2>&1; then
  exit 0
fi

start=$(date +%s)
if ! "$VENV/bin/python" -c "import sys; assert sys.version_info[:2] == (3, 11)" >/dev/null 2>&1; then
  echo "[parity_env] creating $VENV with $PY"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)
CONSTRAINTS="$(cd "$VENV" && pwd)/constraints.txt"
cat > "$CONSTRAINTS" <<'EOF'
torch==2.14.1
torchvision==0.29.1
numpy<2
mmcv-lite==2.1.0
mmsegmentation==1.2.2
EOF
quiet() { grep -v "^WARNING: Location" || true; }
export PIP_CONSTRAINT="$CONSTRAINTS"  # also for the pip calls inside tools/install_detectron2.py
echo "[parity_env] torch 2.14.1 + torchvision 0.29.1 (offline wheels)"
"${PIP[@]}" --upgrade "setuptools>=64" wheel 2>&1 | quiet
"${PIP[@]}" -c "$CONSTRAINTS" torch==2.14.1 torchvision==0.29.1 2>&1 | quiet
echo "[parity_env] mmsegmentation 1.2.2, mmcv-lite 2.1.0, mmengine"
"${PIP[@]}" -c "$CONSTRAINTS" mmsegmentation==1.2.2 mmcv-lite==2.1.0 "mmengine>=0.5,<1" ftfy regex 2>&1 | quiet
echo "[parity_env] this package (editable) and its dependencies"
"${PIP[@]}" -c "$CONSTRAINTS" --no-build-isolation -e ".[dev]" 2>&1 | quiet
echo "[parity_env] detectron2 (cached wheel)"
"$VENV/bin/python" tools/install_detectron2.py 2>&1 | quiet
check || { echo "[parity_env] the parity environment is incomplete (see the error above)" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[parity_env] environment ready in $(( $(date +%s) - start )) s"
