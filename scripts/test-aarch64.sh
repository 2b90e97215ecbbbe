#!/usr/bin/env bash
# The aarch64 build tested under emulation on an x86-64 host: cross-builds it
# (scripts/cross-aarch64.sh), installs Debian's qemu-user-static where missing, and runs
# tests/python/test_aarch64.py (health, metadata, infer, and a PP-OCR cheque on tract with
# the x86-64 build's lines) against it. Not in CI: the cross build of the whole tree takes
# longer than CI's budget leaves. Expects the test venv and models of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/cross-aarch64.sh
if ! command -v qemu-aarch64-static >/dev/null; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-user-static >/dev/null
fi
[ -x .venv-test/bin/python ] || { echo "run bash scripts/test.sh once first (the test venv)"; exit 1; }
[ -f models/ppocr_rec/1/model.onnx ] || PATH="$PWD/.venv-test/bin:$PATH" scripts/fetch-ppocr-models.sh
cargo build --release --locked --bin wharf
WHARF_BIN="$PWD/target/release/wharf" WHARF_AARCH64="$PWD/target/aarch64-unknown-linux-gnu/release/wharf" \
    .venv-test/bin/python -m pytest -q tests/python/test_aarch64.py
