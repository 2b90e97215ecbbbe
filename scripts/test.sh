#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (real server on loopback), then the
# KServe conformance and onnxruntime parity suite through the real tritonclient package,
# and the metrics checked by a real Prometheus and promtool.
# The venv it makes also provides the ONNX Runtime library (onnxruntime==1.31.1 wheel) that
# the onnxruntime backend loads, and the PP-OCR det/rec models are fetched if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Prometheus and promtool (Debian's package) for the metrics tests; the CJK and Latin
# fonts the PP-OCR tests render their pages with (tests/python/ocr_images.py); Chromium and
# its driver for the operator page's test (tests/python/test_page.py).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null \
    || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
    || [ ! -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] \
    || [ ! -f /usr/share/fonts/truetype/arphic/ukai.ttc ] \
    || [ ! -f /usr/share/fonts/truetype/liberation2/LiberationSerif-Regular.ttf ]; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus chromium chromium-driver \
        fonts-noto-cjk fonts-wqy-zenhei fonts-arphic-uming fonts-arphic-ukai fonts-dejavu-core fonts-liberation2 >/dev/null
fi

venv=.venv-test
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
# KServe's API types, to validate deploy/kserve against; without the SDK's server half.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps kserve==0.21.0
ORT_DYLIB_PATH=$("$venv/bin/python" -c 'import glob, os, onnxruntime; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*"))[0])')
export ORT_DYLIB_PATH
[ -f models/ppocr_rec/1/model.onnx ] && [ -f models/ppocr_det/1/model.onnx ] || PATH="$PWD/$venv/bin:$PATH" scripts/fetch-ppocr-models.sh

# Where a Docker engine runs, the container test packs a static binary (FROM scratch, no
# onnxruntime feature). `cargo rustc` puts crt-static on the final link only, so the
# binary shares the dependencies the test build compiles (RUSTFLAGS would build them all
# again): only wharf and the few crates whose features the dev-dependencies widen compile
# twice. It lands in target/release/wharf, which `cargo test` then takes back.
# Relative relocations packed (RELR, glibc 2.36 and binutils 2.38 on): the static-pie
# binary keeps its ASLR and sheds ~2 MB of relocation table.
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    cargo rustc --release --locked --no-default-features --bin wharf -- -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs
    mkdir -p target/static && cp target/release/wharf "target/static/wharf-$(dpkg --print-architecture)"
else
    echo "no Docker engine: the container build-and-run test will skip"
fi
# One build: the integration tests build the `wharf` binary (target/release/wharf) with the
# test build's features, which the Python suite then runs. A separate `cargo build` would
# build most of the tree a second time (the dev-dependencies add features to tokio and
# regex, which much of the tree sits on).
cargo test --release --locked
WHARF_BIN="$PWD/target/release/wharf" "$venv/bin/python" -m pytest -q tests/python
