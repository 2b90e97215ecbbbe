"""PP-OCR accuracy: wharf's shipped pipeline (and width buckets) against
rapidocr-onnxruntime 1.4.4 line for line, and both against the rendered text, on the
varied set (tests/python/ocr_images.py `render_varied`: five CJK faces of three families,
three Latin faces, 24-44 px, a quarter upside down, noise, blur, PNG and JPEG) plus
benches/data/cheque.png.

    .venv-test/bin/python benches/ppocr_accuracy.py [--pages 40]

Lines equal: the same string as rapidocr's line at the same place in reading order.
Character accuracy: 1 - edit distance / length against the rendered text (spaces left
out), for wharf and for rapidocr. wharf's det/cls/rec run where the shipped configs say
(onnxruntime where its library is found).
"""
import argparse
import contextlib
import io
import json
import pathlib
import sys
import tempfile

import tritonclient.grpc as grpcclient
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from conftest import running_wharf  # noqa: E402
from test_ppocr import agreement, pipeline_repository, varied_pages, with_rapidocr_lines  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=40)
    args = parser.parse_args()
    pages = with_rapidocr_lines(varied_pages(args.pages))
    kinds = {"PNG": [], "JPEG": []}
    for page in pages:
        kinds[Image.open(io.BytesIO(page[0])).format].append(page)
    rows = []
    for label, group_size in (("shipped (group_size 6)", None), ("width buckets (group_size 0)", 0)):
        with tempfile.TemporaryDirectory() as tmp:
            repo = pathlib.Path(tmp)
            pipeline_repository(repo, None, group_size)
            with running_wharf(repo, "--max-request-size", "16MiB") as address:
                client = grpcclient.InferenceServerClient(address)
                with contextlib.redirect_stdout(io.StringIO()):  # agreement prints its report
                    for kind, subset in kinds.items():
                        rows.append((label, kind, agreement(client, subset)))
                client.close()
    print(f"{len(pages)} pages ({len(kinds['PNG'])} PNG, including the cheque; {len(kinds['JPEG'])} JPEG)\n")
    print("| wharf | pages | lines | equal to rapidocr's | equal but for spaces | boxes within 3 px | worst box px "
          "| character accuracy, wharf | rapidocr |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, kind, r in rows:
        print(f"| {label} | {r['pages']} {kind} | {r['lines']} | {r['equal']:.1%} | {r['equal_ignoring_spaces']:.1%} | "
              f"{r['boxes_within_3px']:.1%} | {r['worst_box_px']:.1f} | {r['char_accuracy']['wharf']:.2%} | "
              f"{r['char_accuracy']['rapidocr']:.2%} |")
    print("\nLines that differ (page, wharf, rapidocr):")
    for label, kind, r in rows:
        for seed, ours, theirs in r["differing"]:
            print(f"- {label}, {kind} page {seed}: {json.dumps(ours, ensure_ascii=False)} vs "
                  f"{json.dumps(theirs, ensure_ascii=False)}")


if __name__ == "__main__":
    main()
