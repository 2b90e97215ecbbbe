"""How much the PP-OCR recogniser's answer depends on padding: rapidocr-onnxruntime 1.4.4's
own crops of one rendered cheque, each recognised padded to 320, 480 and 640 pixels wide
(rapidocr pads each line to the widest of the six lines around it), lines whose text
changes printed.

    .venv-test/bin/python benches/ppocr_padding.py [SEED]
"""
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))
from ocr_images import render  # noqa: E402


def main():
    from rapidocr_onnxruntime import RapidOCR
    engine = RapidOCR()
    image, _ = render(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
    page, _, _ = engine.preprocess(engine.load_img(image))
    page, _ = engine.maybe_add_letterbox(page, {})
    boxes, _ = engine.auto_text_det(page)
    crops, _, _ = engine.text_cls(engine.get_crop_img_list(page, boxes))
    changed = 0
    for i, crop in enumerate(crops):
        width = crop.shape[1] * 48 / crop.shape[0]
        texts = []
        for padded in (max(320, width), 480, 640):
            x = engine.text_rec.resize_norm_img(crop, padded / 48)[None].astype(np.float32)
            texts.append(engine.text_rec.postprocess_op(engine.text_rec.session(x)[0])[0][0])
        if len(set(texts)) > 1:
            changed += 1
            print(f"line {i} ({width:.0f} px at height 48): {texts}")
    print(f"{changed} of {len(crops)} lines read differently at another padding")


if __name__ == "__main__":
    main()
