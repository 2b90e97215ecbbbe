"""A real OTLP trace receiver for the tests, over gRPC (TraceService/Export, grpcio) and
HTTP/protobuf (POST /v1/traces), on PyPI's opentelemetry-proto messages: it keeps every
span it is sent, and can answer slowly or be stopped to play a failing collector."""
import http.server
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Receiver:
    """What a collector received: each span as a dict of its fields."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self._spans = []
        self._changed = threading.Condition()
        self.requests = 0

    def take(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        if self.delay:
            time.sleep(self.delay)
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append({
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(),
                        "kind": span.kind,
                        "start": span.start_time_unix_nano,
                        "end": span.end_time_unix_nano,
                        "status": span.status.code,
                        "status_message": span.status.message,
                        "attributes": {a.key: _value(a.value) for a in span.attributes},
                        "resource": resource,
                    })
        with self._changed:
            self.requests += 1
            self._spans.extend(spans)
            self._changed.notify_all()

    def spans(self) -> list:
        with self._changed:
            return list(self._spans)

    def wait_for(self, predicate, timeout: float = 30.0) -> list:
        """The spans received once `predicate(spans)` holds; fails past `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self._spans):
                left = deadline - time.monotonic()
                assert left > 0, f"the collector did not receive what was awaited: {self._spans}"
                self._changed.wait(left)
            return list(self._spans)


class GrpcReceiver(Receiver):
    """OTLP over gRPC on a free loopback port; `endpoint` is what wharf is pointed at."""

    def __init__(self, delay: float = 0.0):
        super().__init__(delay)
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver.take(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{port}"

    def stop(self):
        self.server.stop(grace=None)


class HttpReceiver(Receiver):
    """OTLP over HTTP/protobuf on a free loopback port; `endpoint` is its /v1/traces URL."""

    def __init__(self, delay: float = 0.0):
        super().__init__(delay)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces" or \
                        self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(400)
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.take(request)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
