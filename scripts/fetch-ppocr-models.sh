#!/usr/bin/env bash
# Fetches the PP-OCRv4 detection and recognition models (Apache-2.0) from the PyPI wheel
# rapidocr-onnxruntime==1.4.4 into a model repository, with their configs.
#   scripts/fetch-ppocr-models.sh [REPOSITORY]   (default: models; nothing to do if both are there)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=${1:-"$here/../models"}
if [ -f "$repo/ppocr_det/1/model.onnx" ] && [ -f "$repo/ppocr_rec/1/model.onnx" ]; then
  echo "PP-OCR det and rec already in $repo"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

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
