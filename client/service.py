"""The device agent's local gRPC service (client/proto/device.proto) and a Python client for it.

Host apps in any language talk to the device SDK through it. It listens only on a Unix socket
(made 0600) or a loopback port: the API has no authentication of its own, so it must not be
reachable from the network.

    python -m client.service --store /data/confide.db --key-file /keys/k --listen unix:/run/c.sock
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from client.device import Device, ModelNotReady, NoInteractions, PrivacyBudget, Recommendation
from client.explain import Explanation
from client.proto import device_pb2 as pb
from client.proto import device_pb2_grpc as pb_grpc
from client.store import (
    CorruptStoreError,
    Interaction,
    NoSuchRecordError,
    StoreError,
    TamperedError,
)
from client.store_adapter import read_key_file

T = TypeVar("T")
SERVICE = "confide.device.v1.DeviceAgent"  # its name for the health service


class DeviceAgentService(pb_grpc.DeviceAgentServicer):
    """Maps the SDK's errors to status codes; one call at a time (the store is one file).

    ``device`` is None when the store could not be opened because it is damaged: every call then
    answers DATA_LOSS with ``damage``, so a host app learns why instead of finding no agent.
    """

    def __init__(
        self, device: Device | None, health: health.HealthServicer, damage: str = ""
    ) -> None:
        self.device = device
        self.health = health
        self.damage = damage
        self.lock = threading.Lock()
        self._serving(device is not None)

    def _serving(self, ok: bool) -> None:
        response = health_pb2.HealthCheckResponse
        status = response.SERVING if ok else response.NOT_SERVING
        for name in ("", SERVICE):
            self.health.set(name, status)

    def _call(self, context: grpc.ServicerContext, fn: Callable[[Device], T]) -> T:
        if self.device is None:
            context.abort(grpc.StatusCode.DATA_LOSS, self.damage)
        try:
            with self.lock:
                return fn(self.device)
        except NoSuchRecordError as err:
            context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        except ValueError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except (ModelNotReady, NoInteractions) as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        except TamperedError as err:  # CorruptStoreError too: the file's own structure
            self._serving(False)
            context.abort(grpc.StatusCode.DATA_LOSS, str(err))
        except StoreError as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        raise AssertionError("unreachable: abort raises")

    def Record(self, request: pb.RecordRequest, context) -> pb.RecordReply:  # noqa: N802
        def record(device: Device) -> pb.RecordReply:
            if not request.HasField("item"):
                raise ValueError("item is required: the catalogue index of the item")
            record_id = device.record(
                request.item,
                rating=request.rating if request.HasField("rating") else None,
                timestamp=request.timestamp if request.HasField("timestamp") else None,
            )
            return pb.RecordReply(record_id=record_id, interactions=len(device.interactions()))

        return self._call(context, record)

    def ListInteractions(self, request, context) -> pb.ListInteractionsReply:  # noqa: N802
        def listing(device: Device) -> pb.ListInteractionsReply:
            num_items = device.num_items or 0
            return pb.ListInteractionsReply(
                interactions=[
                    pb.Interaction(
                        record_id=i.record_id,
                        item=i.item,
                        timestamp=i.timestamp,
                        rating=i.rating,
                        outside_catalogue=bool(num_items) and i.item >= num_items,
                    )
                    for i in device.interactions()
                ]
            )

        return self._call(context, listing)

    def DeleteInteraction(self, request, context) -> pb.DeleteInteractionReply:  # noqa: N802
        def delete(device: Device) -> pb.DeleteInteractionReply:
            device.delete_interaction(request.record_id)
            return pb.DeleteInteractionReply(interactions=len(device.interactions()))

        return self._call(context, delete)

    def Recommend(self, request: pb.RecommendRequest, context) -> pb.RecommendReply:  # noqa: N802
        def recommend(device: Device) -> pb.RecommendReply:
            items = device.recommend(request.k)
            return pb.RecommendReply(
                items=[pb.Recommendation(item=r.item, score=r.score) for r in items],
                refitted=device.last_fit,
            )

        return self._call(context, recommend)

    def Explain(self, request: pb.ExplainRequest, context) -> pb.ExplainReply:  # noqa: N802
        def reasons(device: Device) -> pb.ExplainReply:
            if not request.HasField("item"):
                raise ValueError("item is required: the catalogue index of the item to explain")
            found = device.explain(request.item, request.k)
            return pb.ExplainReply(
                reasons=[
                    pb.Explanation(item=e.item, score=e.score, evidence=e.evidence) for e in found
                ]
            )

        return self._call(context, reasons)

    def GetPrivacyBudget(self, request, context) -> pb.PrivacyBudget:  # noqa: N802
        def budget(device: Device) -> pb.PrivacyBudget:
            b = device.privacy_budget()
            return pb.PrivacyBudget(
                epsilon=b.epsilon,
                cap=b.cap,
                delta=b.delta,
                unit=b.unit,
                accountant=b.accountant or "",
                steps=b.steps,
                remaining=b.remaining,
                cap_source=b.cap_source or "",
            )

        return self._call(context, budget)

    def Forget(self, request: pb.ForgetRequest, context) -> pb.ForgetReply:  # noqa: N802
        def forget(device: Device) -> pb.ForgetReply:
            device.forget(request.device_id)
            self._serving(True)
            return pb.ForgetReply()

        return self._call(context, forget)

    def GetStatus(self, request, context) -> pb.Status:  # noqa: N802
        return self._call(context, lambda device: pb.Status(**device.status()))

    def Verify(self, request, context) -> pb.VerifyReply:  # noqa: N802
        def verify(device: Device) -> pb.VerifyReply:
            records = device.store.verify()
            self._serving(True)
            return pb.VerifyReply(records=records)

        return self._call(context, verify)


def agent_handlers(service: DeviceAgentService) -> grpc.GenericRpcHandler:
    """The service's methods, as the generated ``add_DeviceAgentServicer_to_server`` registers
    them, except that each request is decoded here: bytes that are not the request message
    (a truncated varint, a string that is not UTF-8) get INVALID_ARGUMENT naming the RPC, where
    gRPC's own decoding answers INTERNAL "Exception deserializing request!" (a server fault)."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["DeviceAgent"].methods:
        request_type = getattr(pb, method.input_type.name)
        reply_type = getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _decoding(method.name, request_type, getattr(service, method.name)),
            response_serializer=reply_type.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _decoding(name: str, request_type: type, call: Callable) -> Callable:
    def handle(data: bytes, context: grpc.ServicerContext):
        try:
            request = request_type.FromString(data)
        except DecodeError:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{name}: the request is not a {request_type.DESCRIPTOR.full_name} message "
                "(build it from device.proto)",
            )
        return call(request, context)

    return handle


def check_address(address: str) -> str:
    """``unix:/abs/path`` or a loopback ``host:port``; anything reachable from outside: refused."""
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError(f"a unix socket path must be absolute (unix:/path/x.sock), got {path}")
        return address
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address must be unix:/path or 127.0.0.1:PORT, got {address!r}")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"refusing to listen on {host}: the agent has no authentication, so it listens "
            "only on a Unix socket or a loopback address (127.0.0.1, ::1, localhost)"
        )
    return address


def serve(
    device: Device | None, address: str, max_workers: int = 4, damage: str = ""
) -> tuple[grpc.Server, str]:
    """Start the agent; returns (server, the address clients use). Port 0 picks a free one.

    ``device`` None (with ``damage``, why): a store too damaged to open, reported on every call.
    """
    check_address(address)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    checks = health.HealthServicer()
    server.add_generic_rpc_handlers((agent_handlers(DeviceAgentService(device, checks, damage)),))
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port(address)  # local only (checked above): no TLS needed
    if not address.startswith("unix:") and port == 0:
        raise OSError(f"could not listen on {address}")
    server.start()
    if address.startswith("unix:"):
        os.chmod(address[len("unix:") :], 0o600)
        return server, address
    return server, f"{address.rpartition(':')[0]}:{port}"


class AgentClient:
    """A Python client of the agent; raises ``grpc.RpcError`` with the agent's status code."""

    def __init__(self, address: str, timeout: float = 60.0) -> None:
        self.channel = grpc.insecure_channel(check_address(address))
        self.stub = pb_grpc.DeviceAgentStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, item: int, rating: float | None = None, timestamp: float | None = None) -> int:
        reply = self.stub.Record(
            pb.RecordRequest(item=item, rating=rating, timestamp=timestamp), timeout=self.timeout
        )
        return reply.record_id

    def interactions(self) -> list[Interaction]:
        reply = self.stub.ListInteractions(pb.ListInteractionsRequest(), timeout=self.timeout)
        return [
            Interaction(
                i.record_id, i.item, i.timestamp, i.rating if i.HasField("rating") else None
            )
            for i in reply.interactions
        ]

    def delete_interaction(self, record_id: int) -> int:
        """Returns how many interactions are left."""
        request = pb.DeleteInteractionRequest(record_id=record_id)
        return self.stub.DeleteInteraction(request, timeout=self.timeout).interactions

    def recommend(self, k: int = 10) -> list[Recommendation]:
        reply = self.stub.Recommend(pb.RecommendRequest(k=k), timeout=self.timeout)
        return [Recommendation(r.item, r.score) for r in reply.items]

    def explain(self, item: int, k: int = 5) -> list[Explanation]:
        reply = self.stub.Explain(pb.ExplainRequest(item=item, k=k), timeout=self.timeout)
        return [Explanation(e.item, e.score, e.evidence) for e in reply.reasons]

    def privacy_budget(self) -> PrivacyBudget:
        b = self.stub.GetPrivacyBudget(pb.PrivacyBudgetRequest(), timeout=self.timeout)
        return PrivacyBudget(
            epsilon=b.epsilon,
            cap=b.cap if b.HasField("cap") else None,
            delta=b.delta if b.HasField("delta") else None,
            unit=b.unit,
            accountant=b.accountant or None,
            steps=b.steps,
            cap_source=b.cap_source or None,
        )

    def forget(self, device_id: str) -> None:
        """``device_id``: this device's id (``status()["device_id"]``), as the confirmation."""
        self.stub.Forget(pb.ForgetRequest(device_id=device_id), timeout=self.timeout)

    def status(self) -> dict[str, object]:
        """The Status fields by name; an optional field that is absent is None."""
        s = self.stub.GetStatus(pb.StatusRequest(), timeout=self.timeout)
        return {
            f.name: getattr(s, f.name) if not f.has_presence or s.HasField(f.name) else None
            for f in s.DESCRIPTOR.fields
        }

    def verify(self) -> int:
        return self.stub.Verify(pb.VerifyRequest(), timeout=self.timeout).records

    def serving(self, service: str = SERVICE) -> bool:
        """The standard health check (grpc.health.v1) for the agent's service."""
        request = health_pb2.HealthCheckRequest(service=service)
        reply = self.health.Check(request, timeout=self.timeout)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a device store as a local gRPC API")
    parser.add_argument("--store", required=True, help="the device's store (SQLite file)")
    parser.add_argument("--key-file", required=True, help="file with the key as 64 hex digits")
    parser.add_argument("--listen", required=True, help="unix:/abs/path.sock or 127.0.0.1:PORT")
    parser.add_argument(
        "--num-items",
        type=int,
        default=None,
        help="the catalogue size, if known before the first run: Record refuses items outside it",
    )
    args = parser.parse_args(argv)
    device: Device | None = None
    try:
        check_address(args.listen)  # before the store is opened (or created)
        key = read_key_file(Path(args.key_file), Path(args.store))
        if args.num_items is not None and args.num_items < 1:
            raise ValueError(f"--num-items must be at least 1, got {args.num_items}")
        try:
            device = Device.open(args.store, key, num_items=args.num_items)
            server, address = serve(device, args.listen)
        except CorruptStoreError as err:
            damage = (
                f"the store file is damaged ({err.detail}) and the agent could not open it: "
                "restore it from a backup, or remove it and restart the agent to start over"
            )
            print(f"confide device agent: {damage}", file=sys.stderr, flush=True)
            server, address = serve(None, args.listen, damage=damage)
    except (ValueError, StoreError, OSError) as err:
        print(f"confide device agent: {err}", file=sys.stderr)
        return 2
    name = device.device_id if device else "(damaged store)"
    print(f"confide device agent {name} listening on {address}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    if device is not None:
        device.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
