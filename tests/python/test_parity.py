"""The PP-OCR classifier served by wharf (tract) gives onnxruntime's outputs."""
import pathlib

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUTPUT = "save_infer_model/scale_0.tmp_1"


def test_cls_matches_onnxruntime(client):
    rng = np.random.default_rng(7)
    # Normalised crops as PP-OCR feeds them: (pixel / 255 - 0.5) / 0.5.
    batch = ((rng.integers(0, 256, size=(4, 3, 48, 192)) / 255.0 - 0.5) / 0.5).astype(np.float32)
    session = ort.InferenceSession(str(ROOT / "models/ppocr_cls/1/model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": batch})[0]
    for rows in (batch[:1], batch):
        inp = grpcclient.InferInput("x", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        got = client.infer("ppocr_cls", [inp]).as_numpy(OUTPUT)
        want = expected[: len(rows)]
        assert got.shape == want.shape
        diff = float(np.abs(got - want).max())
        assert diff < 1e-4, diff
        # Not vacuous: the outputs are real probabilities, not zeros.
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-4)
