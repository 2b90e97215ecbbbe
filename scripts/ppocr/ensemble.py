"""Writes the PP-OCR ensemble's configs for a set of recogniser width buckets: one rec step
per width in models/ppocr/config.yaml, and the same list in ppocr_lines and ppocr_ctc.

    python3 scripts/ppocr/ensemble.py [--repository models] 320,400,480,560,640,800,960,1280,1920
"""
import argparse
import pathlib
import re

HEADER = """\
# PP-OCR as one model: an image in, its text lines out, in reading order (top to bottom,
# then left to right). Steps: decode (ppocr_image) -> detect (ppocr_det) -> boxes
# (ppocr_db) -> crops (ppocr_cls_crops) -> direction (ppocr_cls) -> upright lines padded
# to bucket widths (ppocr_lines) -> recognise, one step per width (ppocr_rec) -> text
# (ppocr_ctc). Each step is queued with its model's other requests, so the recogniser
# batches lines from many images. The det/rec models come from
# scripts/fetch-ppocr-models.sh, with the ONNX Runtime library they run on (else tract).
# Written by scripts/ppocr/ensemble.py (the rec steps follow the bucket widths).
platform: ensemble
max_batch_size: 0
input:
  - { name: image, data_type: TYPE_STRING, dims: [1] }
output:
  - { name: text, data_type: TYPE_STRING, dims: [-1] }
  - { name: text_score, data_type: TYPE_FP32, dims: [-1] }
  - { name: boxes, data_type: TYPE_FP32, dims: [-1, 4, 2] }
ensemble_scheduling:
  step:
    - { model_name: ppocr_image, input_map: { image: image }, output_map: { det_input: det_input, pixels: pixels, geometry: geometry } }
    - { model_name: ppocr_det, input_map: { x: det_input }, output_map: { sigmoid_0.tmp_0: det_map } }
    - { model_name: ppocr_db, input_map: { maps: det_map, pixels: pixels }, output_map: { boxes: page_boxes } }
    - { model_name: ppocr_cls_crops, input_map: { pixels: pixels, boxes: page_boxes }, output_map: { crops: cls_input } }
    - { model_name: ppocr_cls, input_map: { x: cls_input }, output_map: { "save_infer_model/scale_0.tmp_1": directions } }
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("buckets")
    parser.add_argument("--repository", default=str(pathlib.Path(__file__).resolve().parents[2] / "models"))
    args = parser.parse_args()
    widths = sorted({int(w) for w in args.buckets.split(",")})
    repo = pathlib.Path(args.repository)
    lines_out = ", ".join(f"lines_{w}: lines_{w}" for w in widths)
    scores_in = ", ".join(f"scores_{w}: scores_{w}" for w in widths)
    text = HEADER + f"""\
    - model_name: ppocr_lines
      input_map: {{ pixels: pixels, boxes: page_boxes, directions: directions }}
      output_map: {{ {lines_out}, line_bucket: line_bucket }}
"""
    text += "".join(
        f"    - {{ model_name: ppocr_rec, input_map: {{ x: lines_{w} }}, output_map: {{ softmax_11.tmp_0: scores_{w} }} }}\n"
        for w in widths)
    text += f"""\
    - model_name: ppocr_ctc
      input_map: {{ {scores_in}, line_bucket: line_bucket, boxes: page_boxes, geometry: geometry }}
      output_map: {{ text: text, text_score: text_score, boxes: boxes }}
"""
    (repo / "ppocr" / "config.yaml").write_text(text)
    listed = ",".join(map(str, widths))
    for step in ("ppocr_lines", "ppocr_ctc"):
        config = repo / step / "config.yaml"
        config.write_text(re.sub(r'buckets: \{ string_value: "[^"]*" \}',
                                 f'buckets: {{ string_value: "{listed}" }}', config.read_text()))


if __name__ == "__main__":
    main()
