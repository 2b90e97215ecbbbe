#!/usr/bin/env bash
# Builds wharf for 64-bit ARM (aarch64-unknown-linux-gnu) on an x86-64 Debian/Ubuntu
# host: one static binary with the tract engine (no onnxruntime feature, no native
# dependency beyond libc, linked in), at target/aarch64-unknown-linux-gnu/release/wharf
# and, for the image, target/static/wharf-arm64.
# Installs Debian's cross toolchain and the Rust target where they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
if ! command -v aarch64-linux-gnu-gcc >/dev/null || [ ! -f /usr/aarch64-linux-gnu/lib/libc.a ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
fi
rustup target add aarch64-unknown-linux-gnu >/dev/null
# C parts (mimalloc, libjpeg-turbo, ring) compile with the cross compiler, which also
# links, statically (Debian's arm64 libc.a); relative relocations packed as in the
# x86-64 image.
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs"
cargo build --release --locked --target aarch64-unknown-linux-gnu --no-default-features --bin wharf
# Where the Dockerfile's prebuilt stage takes it for linux/arm64.
mkdir -p target/static && cp target/aarch64-unknown-linux-gnu/release/wharf target/static/wharf-arm64
ls -l target/static/wharf-arm64
