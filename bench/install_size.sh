#!/bin/sh
# Installed size of a fresh CPU environment: before (torch CPU build + medfusion's other
# dependencies) and after (OpenVINO instead of torch; ONNX Runtime shown for comparison).
# Each in a new venv under ${SCRATCH:-/tmp}; prints `du -sh` of its site-packages (pip, setuptools
# included in both) and the pip install's wall time. Usage: sh bench/install_size.sh
set -e
SCRATCH=${SCRATCH:-/tmp}
PYTHON=${PYTHON:-python3}
COMMON="SimpleITK>=2.3 numpy>=1.24 nibabel>=5.0 pydicom>=2.4 safetensors>=0.4 tqdm>=4.60 Pillow>=9.0"
TORCH_CPU=${TORCH_CPU:-"torch --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple"}
size() {  # name, packages...
    name=$1; shift
    rm -rf "$SCRATCH/sz-$name"
    "$PYTHON" -m venv "$SCRATCH/sz-$name"
    empty=$(du -sm "$SCRATCH/sz-$name"/lib/python*/site-packages | cut -f1)
    start=$(date +%s)
    "$SCRATCH/sz-$name/bin/pip" install -q $* >/dev/null 2>&1
    seconds=$(( $(date +%s) - start ))
    total=$(du -sm "$SCRATCH/sz-$name"/lib/python*/site-packages | cut -f1)
    echo "| $name | $total MB | $((total - empty)) MB | $seconds s |"
    "$SCRATCH/sz-$name/bin/pip" list --format=freeze 2>/dev/null | grep -i -E "^(torch|openvino|onnxruntime|simpleitk|numpy)=" | tr '\n' ' '
    echo
    echo "  largest:" $(du -sm "$SCRATCH/sz-$name"/lib/python*/site-packages/* | sort -rn | head -4 | awk '{n=split($2,p,"/"); printf "%s %s MB, ", p[n], $1}')
}
echo "| environment | site-packages | added by pip install | pip install wall |"
echo "|---|---|---|---|"
size before-torch "$TORCH_CPU" $COMMON
size after-openvino openvino $COMMON
size onnxruntime onnxruntime $COMMON
