#!/usr/bin/env bash
# Set-up: fetches the PP-OCRv4 detection and recognition models (Apache-2.0) from the
# PyPI wheel rapidocr-onnxruntime==1.4.4 into a model repository, with their configs, and
# the ONNX Runtime 1.31.1 library (MIT) from the onnxruntime wheel into the data folder
# where `wharf serve` looks for it with no flag (checked against its pinned sha256).
#   scripts/fetch-ppocr-models.sh [REPOSITORY]   (default: models; what is there is kept)
# WHARF_ORT_DIR overrides the library's folder ($XDG_DATA_HOME/wharf/onnxruntime, by
# default ~/.local/share/wharf/onnxruntime). Without the library wharf serves on tract.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=${1:-"$here/../models"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

sha256() { python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"; }

if [ -f "$repo/ppocr_det/1/model.onnx" ] && [ -f "$repo/ppocr_rec/1/model.onnx" ]; then
  echo "PP-OCR det and rec already in $repo"
else
  python3 -m pip download --quiet --no-deps --dest "$tmp" rapidocr-onnxruntime==1.4.4
  python3 -m zipfile -e "$tmp"/rapidocr_onnxruntime-1.4.4-py3-none-any.whl "$tmp/wheel"
  models="$tmp/wheel/rapidocr_onnxruntime/models"
  install_model() { # name, file in the wheel
    mkdir -p "$repo/$1/1"
    cp "$models/$2" "$repo/$1/1/model.onnx"
    cp "$here/ppocr/$1.yaml" "$repo/$1/config.yaml"
    echo "installed $repo/$1 ($(du -h "$repo/$1/1/model.onnx" | cut -f1))"
  }
  install_model ppocr_det ch_PP-OCRv4_det_infer.onnx
  install_model ppocr_rec ch_PP-OCRv4_rec_infer.onnx
fi

# The library: the same file in every CPython wheel of a platform; its hash is pinned.
lib_dir=${WHARF_ORT_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/wharf/onnxruntime}
lib="$lib_dir/libonnxruntime.so.1.31.1"
case "$(uname -m)" in
  x86_64) platform=manylinux_2_28_x86_64; want=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3 ;;
  aarch64) platform=manylinux_2_28_aarch64; want=8aa3b76b28c778a2b1dd660d34161adb1d508c9ccd04ff9dc80e26eca5df8467 ;;
  *) echo "no ONNX Runtime build is pinned for $(uname -m): wharf serves PP-OCR on tract"; exit 0 ;;
esac
if [ -f "$lib" ] && [ "$(sha256 "$lib")" = "$want" ]; then
  echo "ONNX Runtime already at $lib"
  exit 0
fi
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform "$platform" --dest "$tmp/ort" onnxruntime==1.31.1
python3 - "$tmp"/ort/onnxruntime-1.31.1-*.whl "$tmp/libonnxruntime" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, open(sys.argv[2], "wb") as out:
    out.write(wheel.read("onnxruntime/capi/libonnxruntime.so.1.31.1"))
PY
got=$(sha256 "$tmp/libonnxruntime")
if [ "$got" != "$want" ]; then
  echo "ONNX Runtime from the wheel has sha256 $got, not the pinned $want: not installed" >&2
  exit 1
fi
# Written beside its final name and renamed: an interrupted fetch leaves no half a library.
mkdir -p "$lib_dir"
cp "$tmp/libonnxruntime" "$lib.part.$$"
mv -f "$lib.part.$$" "$lib"
echo "installed ONNX Runtime 1.31.1 at $lib"
