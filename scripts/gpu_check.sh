#!/usr/bin/env bash
# Runs scripts/gpu_check.py on a GPU host: rebuilds the CUDA build of ONNX Runtime from the
# parts ../shared/gpu/pack-onnxruntime-gpu.sh made, and puts the CUDA, cuBLAS and cuDNN
# libraries its CUDA provider links against on LD_LIBRARY_PATH (PyTorch's pip packages there).
#
#   usage: scripts/gpu_check.sh PARTS_DIR UNPACK_SH OUT_DIR [gpu_check.py flags...]
set -uo pipefail
parts=${1:?usage: gpu_check.sh PARTS_DIR UNPACK_SH OUT_DIR [flags]}
unpack=${2:?} out=${3:?}
shift 3
bash "$unpack" "$parts" > "$parts/env.sh" || echo "unpack.sh exited $?; looking for the CUDA libraries below"
# shellcheck disable=SC1091
source "$parts/env.sh"
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$parts/lib/libonnxruntime.so.1.31.1}
export LD_LIBRARY_PATH=$parts/lib:${LD_LIBRARY_PATH:-}
cuda_provider=$(dirname "$ORT_DYLIB_PATH")/libonnxruntime_providers_cuda.so
# unpack.sh finds the pip CUDA libraries by their usual layout; look wider for any it missed.
for lib in $(ldd "$cuda_provider" | awk '/not found/ {print $1}'); do
  found=$(find /opt /usr /root /home -name "$lib" 2>/dev/null | head -1)
  [ -n "$found" ] && LD_LIBRARY_PATH=$(dirname "$found"):$LD_LIBRARY_PATH
done
export LD_LIBRARY_PATH
echo "CUDA provider libraries still missing: $(ldd "$cuda_provider" | grep -c 'not found')"
ldd "$cuda_provider" | grep 'not found'
nvidia-smi
python3 "$(dirname "$0")/gpu_check.py" --out "$out" "$@"
