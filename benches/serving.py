"""What the bench scripts share: a free loopback port, waiting for a KServe server's
ServerReady, stopping a server."""
import socket
import time

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(address, proc, timeout=120):
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"server at {address} exited"
            try:
                if stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=1).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise TimeoutError(address)


def stop(proc):
    proc.terminate()
    proc.wait(timeout=30)
