#!/usr/bin/env bash
# Triton's perf_analyzer against a running wharf, over HTTP and gRPC, concurrency 1-8.
# perf_analyzer comes from the tritonclient 2.41.0 wheel's data/bin (the perf-analyzer
# package does not install here); it needs Debian's libb64-0d and, only to start, the CUDA
# runtime library of PyPI's nvidia-cuda-runtime-cu12 (no GPU is used).
#   target/release/wharf serve --model-repository REPO &     # e.g. the test repository
#   bash benches/perf_analyzer.sh [MODEL] [extra perf_analyzer flags]
# e.g. `--shared-memory system` (start wharf with --allow-client-shm). Each concurrency's
# client and server sections are printed, then the summary.
set -euo pipefail
model=${1:-add_sub}
shift || true
tools=${PA_DIR:-/tmp/wharf-perf-analyzer}
if [ ! -x "$tools/bin/perf_analyzer" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet nvidia-cuda-runtime-cu12
  "$tools/venv/bin/pip" download --quiet --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 --dest "$tools/wheel" tritonclient==2.41.0
  python3 -m zipfile -e "$tools"/wheel/tritonclient-2.41.0-*.whl "$tools/x"
  mkdir -p "$tools/bin"
  cp "$tools/x/tritonclient-2.41.0.data/data/bin/perf_analyzer" "$tools/bin/"
  chmod +x "$tools/bin/perf_analyzer"
fi
export LD_LIBRARY_PATH="$(dirname "$(find "$tools/venv" -name 'libcudart.so.12' | head -1)")"
for protocol in http grpc; do
  url=$([ "$protocol" = http ] && echo localhost:8000 || echo localhost:8001)
  echo "== $model over $protocol"
  "$tools/bin/perf_analyzer" -m "$model" -i "$protocol" -u "$url" --concurrency-range 1:8:1 \
    --measurement-interval 3000 "$@" |
    sed -n '/^Request concurrency/,/Avg request latency/p;/Inferences\/Second vs/,$p'
done
