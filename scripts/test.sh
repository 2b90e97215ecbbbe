#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (real server on loopback), then the
# KServe conformance and onnxruntime parity suite through the real tritonclient package.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked
cargo test --release --locked

venv=.venv-test
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
WHARF_BIN="$PWD/target/release/wharf" "$venv/bin/python" -m pytest -q tests/python
