"""The issue-11 stream burst: 200 requests written on one ModelStreamInfer stream, SIGTERM
20 ms after the first answer; counts what came back and how the stream ended.

    WHARF_BIN=target/release/wharf .venv-test/bin/python benches/stream_drain.py
"""
import sys, pathlib, tempfile, shutil, signal, time, threading
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))
import grpc
import test_reliability as t
from tritonclient.grpc import service_pb2
with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp) / "busy"; (folder / "1").mkdir(parents=True)
    shutil.copy(t.ROOT / "tests/faulty/busy.onnx", folder / "1/model.onnx")
    (folder / "config.yaml").write_text("max_batch_size: 0\nmodel_warmup: false\ninstance_group: [{ count: 1, kind: KIND_CPU }]\n")
    w = t.Wharf(tmp)
    stream = w.channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString)
    def requests():
        for i in range(200):
            r = service_pb2.ModelInferRequest(); r.ParseFromString(t.busy_request(1, str(i))); yield r
        time.sleep(30)  # keep the stream open, as a client that goes on writing would
    answers = stream(requests())
    ok = err = 0; ids = []
    status = "OK"
    try:
        for a in answers:
            if ok + err == 0:
                time.sleep(0.02); w.proc.send_signal(signal.SIGTERM)
            if a.error_message: err += 1
            else: ok += 1
            ids.append(int(a.infer_response.id))
    except grpc.RpcError as e:
        status = f"{e.code().name}: {e.details()}"
    print(f"sent 200 on one stream; SIGTERM 20 ms after the first answer: {ok} computed, {err} refused 'shutting down', "
          f"in order: {ids == list(range(len(ids)))}, unanswered {200 - ok - err}; stream ended {status}; exit {w.proc.wait(60)}")
