#!/usr/bin/env bash
# The aarch64 build tested under emulation on an x86-64 host: cross-builds it
# (scripts/cross-aarch64.sh), installs Debian's qemu-user-static and buildah where
# missing, and runs tests/python/test_aarch64.py against it: health, metadata, infer, a
# PP-OCR cheque on tract with the x86-64 build's lines, and the image for linux/amd64 and
# linux/arm64 in one manifest list (the arm64 image's binary smoke-tested under qemu).
# Not in CI: the cross build of the whole tree takes longer than CI's budget leaves.
# Expects the test venv and models of scripts/test.sh. About 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/cross-aarch64.sh
if ! command -v qemu-aarch64-static >/dev/null || ! command -v buildah >/dev/null; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-user-static buildah >/dev/null
fi
[ -x .venv-test/bin/python ] || { echo "run bash scripts/test.sh once first (the test venv)"; exit 1; }
[ -f models/ppocr_rec/1/model.onnx ] || PATH="$PWD/.venv-test/bin:$PATH" scripts/fetch-ppocr-models.sh
# The x86-64 image's binary, as scripts/test.sh makes it; then the test build's binary.
cargo rustc --release --locked --no-default-features --bin wharf -- -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs
cp target/release/wharf "target/static/wharf-$(dpkg --print-architecture)"
cargo build --release --locked --bin wharf
WHARF_BIN="$PWD/target/release/wharf" WHARF_AARCH64="$PWD/target/aarch64-unknown-linux-gnu/release/wharf" \
    .venv-test/bin/python -m pytest -q tests/python/test_aarch64.py
