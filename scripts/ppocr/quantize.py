"""INT8 PP-OCR det and rec, made with ONNX Runtime's own quantization tools, and measured
against the fp32 models on the varied rendered set (tests/python/ocr_images.py).

    .venv-test/bin/pip install onnx==1.23.2          # onnxruntime.quantization needs it
    .venv-test/bin/python scripts/ppocr/quantize.py [--out /tmp/ppocr-int8] [--ops Conv,MatMul]

Static quantization (QDQ, per-channel int8 weights, uint8 activations), calibrated on the
inputs rapidocr-onnxruntime 1.4.4 itself gives its sessions for 16 pages (seeds apart
from the 40 it is measured on). The Paddle exports are opset 12, and per-channel QDQ
needs 13: each model is pre-processed (quant_pre_process) and converted first. The
measure runs rapidocr's own pipeline with each model swapped, so only the model differs:
ms a page, and lines equal to fp32 rapidocr's.
"""
import argparse
import pathlib
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from ocr_images import render_varied  # noqa: E402


def calibration_inputs():
    """What rapidocr gives its det and rec sessions for 16 calibration pages."""
    from rapidocr_onnxruntime import RapidOCR
    from rapidocr_onnxruntime.utils import infer_engine
    seen = {"det": [], "rec": []}
    call = infer_engine.OrtInferSession.__call__

    def record(session, x):
        if x.shape[2] != 48:
            seen["det"].append(x)
        elif x.shape[3] != 192:  # 3x48x192 is the classifier's
            seen["rec"].append(x)
        return call(session, x)

    infer_engine.OrtInferSession.__call__ = record
    try:
        engine = RapidOCR()
        for seed in range(1000, 1016):
            engine(render_varied(seed)[0])
    finally:
        infer_engine.OrtInferSession.__call__ = call
    return seen


class Inputs(CalibrationDataReader):
    def __init__(self, name, arrays):
        self.feeds = iter([{name: a} for a in arrays])

    def get_next(self):
        return next(self.feeds, None)


def quantize(name, arrays, out, ops):
    source = ROOT / "models" / f"ppocr_{name}" / "1" / "model.onnx"
    pre, opset13, target = out / f"{name}.pre.onnx", out / f"{name}.opset13.onnx", out / f"{name}.int8.onnx"
    quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
    onnx.save(version_converter.convert_version(onnx.load(str(pre)), 13), str(opset13))
    input_name = ort.InferenceSession(str(opset13)).get_inputs()[0].name
    quantize_static(str(opset13), str(target), Inputs(input_name, arrays), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=ops)
    # The rec model's dictionary lives in its metadata: keep it.
    model = onnx.load(str(target))
    del model.metadata_props[:]
    model.metadata_props.extend(onnx.load(str(source)).metadata_props)
    onnx.save(model, str(target))
    return target


def lines_equal(engine, pages, reference):
    started = time.monotonic()
    found = [[text for _, text, _ in (engine(p)[0] or [])] for p in pages]
    ms = (time.monotonic() - started) / len(pages) * 1000
    equal = sum(sum(1 for text in want if text in got) for got, want in zip(found, reference))
    return ms, equal


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/ppocr-int8"))
    parser.add_argument("--ops", default=None, help="op types to quantize (default: all ONNX Runtime can)")
    parser.add_argument("--pages", type=int, default=40)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ops = args.ops.split(",") if args.ops else None
    seen = calibration_inputs()
    models = {name: quantize(name, seen[name][:48], args.out, ops) for name in ("det", "rec")}
    from rapidocr_onnxruntime import RapidOCR
    pages = [render_varied(seed)[0] for seed in range(args.pages)]
    reference_engine = RapidOCR()
    reference_engine(pages[0])
    started = time.monotonic()
    reference = [[text for _, text, _ in (reference_engine(p)[0] or [])] for p in pages]
    fp32_ms = (time.monotonic() - started) / len(pages) * 1000
    total = sum(map(len, reference))
    print(f"{len(pages)} varied pages, {total} lines; ops quantized: {args.ops or 'all'}\n")
    print("| det | rec | ms a page (rapidocr's pipeline) | lines equal to fp32 |")
    print("|---|---|---|---|")
    print(f"| fp32 | fp32 | {fp32_ms:.0f} | {total}/{total} |")
    for det, rec in (("int8", "fp32"), ("fp32", "int8"), ("int8", "int8")):
        paths = {f"{n}_model_path": str(models[n]) for n, kind in (("det", det), ("rec", rec)) if kind == "int8"}
        engine = RapidOCR(**paths)
        engine(pages[0])
        ms, equal = lines_equal(engine, pages, reference)
        print(f"| {det} | {rec} | {ms:.0f} | {equal}/{total} = {equal / total:.1%} |", flush=True)


if __name__ == "__main__":
    main()
