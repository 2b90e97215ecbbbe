"""The built-in PP-OCR pipeline (`ppocr`, an ensemble) against rapidocr-onnxruntime 1.4.4
run in Python on the same rendered cheques, with the same onnxruntime: lines, boxes and
character accuracy against the text each page was rendered with; then bad images.

The measured figures are printed (pytest -s) and written to $OCR_REPORT when it is set."""
import json
import os
import pathlib
import re
import statistics
import subprocess
import shutil
import tempfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import PIPELINE, ROOT, WHARF, pipeline_repository, running_wharf, running_wharf_addresses
from ocr_images import render, render_varied

PAGES = 12

pytestmark = pytest.mark.skipif(
    not (ROOT / "models/ppocr_det/1/model.onnx").exists(),
    reason="PP-OCR det/rec not fetched (scripts/fetch-ppocr-models.sh; scripts/test.sh does it)",
)


def test_the_readmes_curl_command_reads_the_cheque(ocr):
    """The README's curl example, as written there, against this server."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"```sh\n(printf [^\n]*/v2/models/ppocr/infer[^\n]*)\n```", readme).group(1)
    command = command.replace("localhost:8000", ocr.http_address).replace(
        "cheque.png", str(ROOT / "benches" / "data" / "cheque.png"))
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (text,) = json.loads(out.stdout)["outputs"]
    assert text["name"] == "text" and len(text["data"]) == 13, text
    assert any("153,745.58" in line for line in text["data"]), text


def with_rapidocr_lines(pages):
    """(image, truth) pairs with rapidocr's lines for each added: (text, score, box)."""
    from rapidocr_onnxruntime import RapidOCR
    reference = RapidOCR()
    return [(image, truth, [(t, float(s), b) for b, t, s in (reference(image)[0] or [])])
            for image, truth in pages]


def varied_pages(count):
    """The varied set's first `count` pages (five CJK faces, three Latin, PNG and JPEG)
    and the README's cheque (no rendered truth)."""
    pages = [render_varied(seed)[:2] for seed in range(count)]
    return pages + [((ROOT / "benches" / "data" / "cheque.png").read_bytes(), None)]


@pytest.fixture(scope="module")
def rapidocr_pages():
    """rapidocr's lines for each page of the varied set, with the text it was rendered with."""
    return with_rapidocr_lines(varied_pages(PAGES))


def read(client, image: bytes, outputs=None):
    inp = grpcclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=object))
    asked = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer("ppocr", [inp], outputs=asked)


def lines_of(result):
    return [(t.decode(), float(s), b.tolist())
            for t, s, b in zip(result.as_numpy("text"), result.as_numpy("text_score"), result.as_numpy("boxes"))]


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def char_accuracy(found, truth):
    """1 - edit distance / length, each rendered line against its closest read line
    (spaces left out: neither engine is asked to find them, and their width is a guess)."""
    errors = total = 0
    for line in truth:
        want = line.replace(" ", "")
        errors += min((edit_distance(f.replace(" ", ""), want) for f in found), default=len(want))
        total += len(want)
    return 1 - errors / total


def agreement(client, rapidocr_pages):
    """wharf's lines against rapidocr's and the rendered text: the figures."""
    pairs = equal = equal_but_spaces = box_ok = 0
    worst_box = 0.0
    accuracy = {"wharf": [], "rapidocr": []}
    differing = []
    for seed, (image, truth, theirs) in enumerate(rapidocr_pages):
        ours = lines_of(read(client, image))
        assert len(ours) == len(theirs), (seed, [t for t, *_ in ours], [t for t, *_ in theirs])
        for (text, _, box), (ref_text, _, ref_box) in zip(ours, theirs):
            pairs += 1
            equal += text == ref_text
            equal_but_spaces += text.replace(" ", "") == ref_text.replace(" ", "")
            off = max(abs(a - b) for p, q in zip(box, ref_box) for a, b in zip(p, q))
            worst_box = max(worst_box, off)
            box_ok += off <= 3
            if text != ref_text:
                differing.append((seed, text, ref_text))
        if truth:
            accuracy["wharf"].append(char_accuracy([t for t, *_ in ours], truth))
            accuracy["rapidocr"].append(char_accuracy([t for t, *_ in theirs], truth))
    report = {
        "pages": len(rapidocr_pages),
        "lines": pairs,
        "equal": equal / pairs,
        "equal_ignoring_spaces": equal_but_spaces / pairs,
        "boxes_within_3px": box_ok / pairs,
        "worst_box_px": worst_box,
        "char_accuracy": {k: statistics.mean(v) for k, v in accuracy.items()},
        "differing": differing,
    }
    print(json.dumps(report, ensure_ascii=False, indent=1))
    return report


def report_to(name: str, report) -> None:
    if os.environ.get("OCR_REPORT"):
        path = pathlib.Path(os.environ["OCR_REPORT"])
        path.with_name(f"{path.stem}_{name}{path.suffix}").write_text(
            json.dumps(report, ensure_ascii=False, indent=1))


def test_lines_and_boxes_agree_with_rapidocr_and_the_rendered_text(ocr, rapidocr_pages):
    """The shipped pipeline (rapidocr's padding, `group_size: 6`) answers rapidocr's
    strings line for line: its pixels are rapidocr's to the bit and both run the same
    onnxruntime on them, so agreement does not move with the machine."""
    report = agreement(ocr, rapidocr_pages)
    report_to("groups", report)
    pairs = report["lines"]
    assert pairs >= PAGES * 10, "every page has 10 lines or more"
    assert report["boxes_within_3px"] == 1.0, report
    assert report["equal"] >= 0.995, report
    assert report["char_accuracy"]["wharf"] >= report["char_accuracy"]["rapidocr"] - 0.005, report


def test_with_width_buckets_characters_agree_and_spaces_may_move(rapidocr_pages):
    """`group_size: 0` pads each line to its width bucket, so lines of any image batch
    together. The recogniser reads a line differently when it is padded differently:
    spaces come and go (benches/README.md shows rapidocr itself changing its answer for
    one crop padded three ways). Characters other than spaces agree."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        pipeline_repository(repo, "onnxruntime", group_size=0)
        with running_wharf(repo, "--max-request-size", "8MiB") as address:
            client = grpcclient.InferenceServerClient(address)
            report = agreement(client, rapidocr_pages)
            client.close()
    report_to("buckets", report)
    assert report["boxes_within_3px"] == 1.0, report
    assert report["equal_ignoring_spaces"] >= 0.98, report
    assert report["char_accuracy"]["wharf"] >= report["char_accuracy"]["rapidocr"] - 0.005, report


def test_a_subset_of_outputs_and_a_page_without_text(ocr):
    image, truth = render(3, upside_down=True)
    result = read(ocr, image, outputs=["text"])
    assert result.as_numpy("boxes") is None and result.as_numpy("text_score") is None
    texts = [t.decode() for t in result.as_numpy("text")]
    assert char_accuracy(texts, truth) > 0.95, texts
    from PIL import Image
    import io
    blank = io.BytesIO()
    Image.new("RGB", (800, 400), "white").save(blank, format="JPEG")
    empty = read(ocr, blank.getvalue())
    assert empty.as_numpy("text").shape == (0,)
    assert empty.as_numpy("boxes").shape == (0, 4, 2)


def png(width, height, claimed=None):
    """A white PNG; with `claimed`, its header (checksum redone) claims that size instead."""
    import io
    import struct
    import zlib
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(out, format="PNG")
    data = bytearray(out.getvalue())
    if claimed:
        data[16:24] = struct.pack(">II", *claimed)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def broken_jpeg():
    """A JPEG whose size is readable but whose first Huffman table is nonsense."""
    import io
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(out, format="JPEG")
    data = bytearray(out.getvalue())
    table = data.index(b"\xff\xc4") + 5  # marker, length, class and id: then 16 counts
    data[table:table + 16] = b"\xff" * 16
    return bytes(data)


def test_bad_images_are_invalid_argument_naming_the_problem(ocr):
    image, _ = render(1)
    cases = {
        "not an image": (b"%PDF-1.7 not an image", "not a PNG or JPEG image"),
        "truncated": (image[: len(image) // 3], "cannot decode it"),
        "empty": (b"", "not a PNG or JPEG image"),
        "1x1": (png(1, 1), "1x1 is too small"),
        "broken JPEG": (broken_jpeg(), "Huffman table"),
        "bomb": (png(64, 64, claimed=(60000, 60000)), "60000x60000 is 3600000000 pixels, over the limit"),
        "over the request limit": (image + bytes(9 << 20), "over the limit of 8388608 bytes per request"),
    }
    for name, (data, why) in cases.items():
        with pytest.raises(InferenceServerException) as failure:
            read(ocr, data)
        assert failure.value.status() == "StatusCode.INVALID_ARGUMENT", (name, failure.value)
        message = failure.value.message()
        assert why in message, (name, message)
        # Refused at the door (the request's size) or by the step that read the image.
        assert name == "over the request limit" or "step 0 (model 'ppocr_image')" in message, message
    # The server serves on.
    assert len(lines_of(read(ocr, image))) >= 12


def test_a_step_called_with_boxes_beyond_the_page_serves_on(ocr):
    """A caller may call a built-in step directly: a box a billion pixels wide is cut to the
    page (a crop that size would not fail, it would abort), and a NaN is refused."""
    def crops(boxes):
        pixels = grpcclient.InferInput("pixels", [40, 60, 3], "UINT8")
        pixels.set_data_from_numpy(np.full((40, 60, 3), 200, dtype=np.uint8))
        given = grpcclient.InferInput("boxes", [1, 4, 2], "FP32")
        given.set_data_from_numpy(np.array([boxes], dtype=np.float32))
        return ocr.infer("ppocr_cls_crops", [pixels, given]).as_numpy("crops")

    assert crops([[0, 0], [1e9, 0], [1e9, 1e9], [0, 1e9]]).shape == (1, 3, 48, 192)
    with pytest.raises(InferenceServerException) as failure:
        crops([[0, 0], [float("nan"), 0], [10, 10], [0, 10]])
    assert failure.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "box 0 has a coordinate that is not a number" in failure.value.message()
    assert crops([[5, 5], [50, 5], [50, 30], [5, 30]]).shape == (1, 3, 48, 192)
    image, _ = render(2)
    assert len(lines_of(read(ocr, image))) >= 12


def test_the_pipeline_runs_on_tract_too():
    """The same pipeline with det, cls and rec on tract (the default models/ repository)."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        pipeline_repository(repo, "tract")
        with running_wharf(repo) as address:
            client = grpcclient.InferenceServerClient(address)
            image, truth = render(5)
            texts = [t for t, *_ in lines_of(read(client, image))]
            client.close()
    assert char_accuracy(texts, truth) > 0.98, texts


def rapidocr_det_input(page_bgr):
    """rapidocr's own detector preprocessing of a page (cv2.resize, its normalisation)."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess
    return DetPreProcess(736, "min", [0.5] * 3, [0.5] * 3)(page_bgr)


def rapidocr_cls_input(page_bgr, box):
    """rapidocr's crop of one box for the classifier: cv2.warpPerspective (cubic,
    replicated edges), cv2.resize, its normalisation."""
    import cv2
    points = np.array(box, dtype=np.float32)
    width = int(max(np.linalg.norm(points[0] - points[1]), np.linalg.norm(points[2] - points[3])))
    height = int(max(np.linalg.norm(points[0] - points[3]), np.linalg.norm(points[1] - points[2])))
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    crop = cv2.warpPerspective(page_bgr, cv2.getPerspectiveTransform(points, corners), (width, height),
                               borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    if crop.shape[0] / crop.shape[1] >= 1.5:
        crop = np.rot90(crop)
    ratio = crop.shape[1] / crop.shape[0]
    resized_w = min(192, int(np.ceil(48 * ratio)))
    resized = cv2.resize(crop, (resized_w, 48)).astype("float32").transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    out = np.zeros((3, 48, 192), dtype=np.float32)
    out[:, :, :resized_w] = resized
    return out


def test_resampling_is_opencv_to_the_bit(ocr):
    """The pixels wharf feeds the models are rapidocr's, bit for bit: the decoded page
    (cv2.imdecode, PNG and JPEG), the detector's input (cv2.resize) and the classifier's
    crops (cv2.warpPerspective, then cv2.resize), on
    pure noise (where any difference in a kernel shows) and on a rendered page. Equal
    inputs are what make the answers equal on any machine: both run the same onnxruntime
    on them."""
    import cv2
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (317, 451, 3), dtype=np.uint8)
    page = cv2.cvtColor(cv2.imdecode(np.frombuffer(render(4)[0], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    for name, rgb in (("noise", noise), ("page", page)):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        ok, png = cv2.imencode(".png", bgr)
        assert ok
        inp = grpcclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([png.tobytes()], dtype=object))
        got = ocr.infer("ppocr_image", [inp])
        np.testing.assert_array_equal(got.as_numpy("pixels"), bgr, err_msg=name)
        # JPEG, in both common chroma layouts: the pixels cv2.imdecode gives.
        for subsampling in (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444):
            ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85,
                                                  cv2.IMWRITE_JPEG_SAMPLING_FACTOR, subsampling])
            assert ok
            given = grpcclient.InferInput("image", [1], "BYTES")
            given.set_data_from_numpy(np.array([jpeg.tobytes()], dtype=object))
            decoded = ocr.infer("ppocr_image", [given]).as_numpy("pixels")
            want = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
            assert np.array_equal(decoded, want), (name, subsampling, int((decoded != want).sum()))
        det = got.as_numpy("det_input")
        want = rapidocr_det_input(bgr)
        assert det.shape == want.shape, (name, det.shape, want.shape)
        assert np.array_equal(det.view(np.uint32), want.view(np.uint32)), (
            name, int((det != want).sum()), "of", det.size)
        # Boxes of every kind: upright and tilted, thin and tall (laid flat), partly
        # off the page (edges replicated), with fractional corners.
        h, w = bgr.shape[:2]
        boxes = [
            [[10, 12], [220, 12], [220, 50], [10, 50]],
            [[30.5, 80.25], [300.75, 95.5], [298.5, 131], [28, 116.75]],
            [[400, 20], [440, 22], [438, 300], [398, 298]],
            [[-20, h - 30], [120, h - 35], [125, h + 15], [-15, h + 20]],
            [[5, 5], [9, 5], [9, 200], [5, 200]],
        ]
        boxes = [[[min(max(x, 0), w - 1), min(max(y, 0), h - 1)] for x, y in b] for b in boxes]
        pixels = grpcclient.InferInput("pixels", list(bgr.shape), "UINT8")
        pixels.set_data_from_numpy(bgr)
        given = grpcclient.InferInput("boxes", [len(boxes), 4, 2], "FP32")
        given.set_data_from_numpy(np.array(boxes, dtype=np.float32))
        crops = ocr.infer("ppocr_cls_crops", [pixels, given]).as_numpy("crops")
        for i, box in enumerate(boxes):
            want = rapidocr_cls_input(bgr, box)
            differ = int((crops[i].view(np.uint32) != want.view(np.uint32)).sum())
            assert differ == 0, (name, i, box, differ, "of", want.size)


def test_the_pipeline_converted_to_config_pbtxt_reads_the_cheque_the_same(ocr, tmp_path):
    """`wharf config --format pbtxt` converts the shipped repository to Triton's format;
    served from config.pbtxt files alone, the cheque reads as it does from the YAML."""
    yaml_repo, pbtxt_repo = tmp_path / "yaml", tmp_path / "pbtxt"
    pipeline_repository(yaml_repo, "onnxruntime")
    subprocess.run([WHARF, "config", "--model-repository", str(yaml_repo), "--format", "pbtxt",
                    "--write-to", str(pbtxt_repo)], check=True)
    for name in PIPELINE:
        shutil.copytree(yaml_repo / name, pbtxt_repo / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("config.yaml"))
    assert not list(pbtxt_repo.rglob("config.yaml"))
    assert "ensemble_scheduling {" in (pbtxt_repo / "ppocr" / "config.pbtxt").read_text()
    cheque = (ROOT / "benches" / "data" / "cheque.png").read_bytes()
    with running_wharf_addresses(pbtxt_repo, "--max-request-size", "8MiB") as addresses:
        client = grpcclient.InferenceServerClient(addresses["grpc"])
        from_pbtxt = lines_of(read(client, cheque))
    assert len(from_pbtxt) > 10
    assert from_pbtxt == lines_of(read(ocr, cheque))
