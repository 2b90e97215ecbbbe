"""Peak RSS of wharf under 32 concurrent 60 MB requests, at three in-flight byte budgets.

    WHARF_BIN=target/release/wharf .venv-test/bin/python benches/inflight_budget.py

Each budget gets a fresh server (the busy test model, one instance, queue of 64); the
server's baseline RSS after loading and its VmHWM after the burst are read from /proc.
"""
import sys, pathlib, tempfile, shutil
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))
import test_reliability as t
from concurrent.futures import ThreadPoolExecutor
MIB = 1 << 20
for budget in ["256MiB", "1GiB", "4GiB"]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp) / "busy"; (folder / "1").mkdir(parents=True)
        shutil.copy(t.ROOT / "tests/faulty/busy.onnx", folder / "1/model.onnx")
        (folder / "config.yaml").write_text(t.BUSY.replace("max_queue_size: 8", "max_queue_size: 64"))
        w = t.Wharf(tmp, "--max-inflight-bytes", budget)
        req = t.busy_request(60 * MIB // 4)
        base = w.status("VmRSS")
        with ThreadPoolExecutor(32) as pool:
            res = t.codes([pool.submit(w.infer_raw, req, timeout=120) for _ in range(32)])
        peak = w.status("VmHWM")
        ok = sum(c == "OK" for c, _ in res)
        print(f"budget {budget}: {ok} answered, {32-ok} refused; RSS baseline {base/MIB:.0f} MiB, peak {peak/MIB:.0f} MiB (+{(peak-base)/MIB:.0f})", flush=True)
        w.stop()
