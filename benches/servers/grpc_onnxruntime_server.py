"""A plain Python KServe v2 gRPC server around onnxruntime, as a user writes it in an
afternoon: a baseline for wharf. Serves one ONNX model; raw FP32 input, raw outputs.

    python grpc_onnxruntime_server.py MODEL.onnx NAME PORT [THREADS]
"""
import sys
from concurrent import futures

import grpc
import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2, service_pb2_grpc


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, path, name):
        self.name = name
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()
        self.outputs = [o.name for o in self.session.get_outputs()]

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=request.name == self.name)

    def ModelMetadata(self, request, context):
        meta = service_pb2.ModelMetadataResponse(name=self.name, versions=["1"], platform="onnxruntime_onnx")
        for i in self.inputs:
            meta.inputs.add(name=i.name, datatype="FP32", shape=[d if isinstance(d, int) and d > 0 else -1 for d in i.shape])
        for o in self.session.get_outputs():
            meta.outputs.add(name=o.name, datatype="FP32", shape=[d if isinstance(d, int) and d > 0 else -1 for d in o.shape])
        return meta

    def ModelInfer(self, request, context):
        feeds = {
            t.name: np.frombuffer(raw, dtype=np.float32).reshape(list(t.shape))
            for t, raw in zip(request.inputs, request.raw_input_contents)
        }
        results = self.session.run(self.outputs, feeds)
        response = service_pb2.ModelInferResponse(model_name=self.name, model_version="1", id=request.id)
        for name, value in zip(self.outputs, results):
            response.outputs.add(name=name, datatype="FP32", shape=list(value.shape))
            response.raw_output_contents.append(np.ascontiguousarray(value).tobytes())
        return response


def main():
    path, name, port = sys.argv[1], sys.argv[2], sys.argv[3]
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads),
        options=[("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(path, name), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
