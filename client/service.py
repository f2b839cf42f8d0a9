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

from client.device import Device, ModelNotReady, PrivacyBudget, Recommendation
from client.proto import device_pb2 as pb
from client.proto import device_pb2_grpc as pb_grpc
from client.store import StoreError, TamperedError
from client.store_adapter import read_key_file

T = TypeVar("T")


class DeviceAgentService(pb_grpc.DeviceAgentServicer):
    """Maps the SDK's errors to status codes; one call at a time (the store is one file)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.lock = threading.Lock()

    def _call(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        try:
            with self.lock:
                return fn()
        except ValueError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except ModelNotReady as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        except TamperedError as err:
            context.abort(grpc.StatusCode.DATA_LOSS, str(err))
        except StoreError as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        raise AssertionError("unreachable: abort raises")

    def Record(self, request: pb.RecordRequest, context) -> pb.RecordReply:  # noqa: N802
        def record() -> pb.RecordReply:
            if not request.HasField("item"):
                raise ValueError("item is required: the catalogue index of the item")
            record_id = self.device.record(
                request.item,
                rating=request.rating if request.HasField("rating") else None,
                timestamp=request.timestamp if request.HasField("timestamp") else None,
            )
            return pb.RecordReply(
                record_id=record_id, interactions=self.device.store.count_interactions()
            )

        return self._call(context, record)

    def Recommend(self, request: pb.RecommendRequest, context) -> pb.RecommendReply:  # noqa: N802
        def recommend() -> pb.RecommendReply:
            items = self.device.recommend(request.k)
            return pb.RecommendReply(
                items=[pb.Recommendation(item=r.item, score=r.score) for r in items],
                refitted=self.device.last_fit,
            )

        return self._call(context, recommend)

    def GetPrivacyBudget(self, request, context) -> pb.PrivacyBudget:  # noqa: N802
        def budget() -> pb.PrivacyBudget:
            b = self.device.privacy_budget()
            return pb.PrivacyBudget(
                epsilon=b.epsilon,
                cap=b.cap,
                delta=b.delta,
                unit=b.unit,
                accountant=b.accountant or "",
                steps=b.steps,
            )

        return self._call(context, budget)

    def Forget(self, request: pb.ForgetRequest, context) -> pb.ForgetReply:  # noqa: N802
        def forget() -> pb.ForgetReply:
            if not request.confirm:
                raise ValueError(
                    "forget deletes every interaction, embedding and the accountant for good: "
                    "send confirm=true to do it"
                )
            self.device.forget()
            return pb.ForgetReply()

        return self._call(context, forget)

    def GetStatus(self, request, context) -> pb.Status:  # noqa: N802
        return self._call(context, lambda: pb.Status(**self.device.status()))


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


def serve(device: Device, address: str, max_workers: int = 4) -> tuple[grpc.Server, str]:
    """Start the agent; returns (server, the address clients use). Port 0 picks a free one."""
    check_address(address)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    pb_grpc.add_DeviceAgentServicer_to_server(DeviceAgentService(device), server)
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

    def recommend(self, k: int = 10) -> list[Recommendation]:
        reply = self.stub.Recommend(pb.RecommendRequest(k=k), timeout=self.timeout)
        return [Recommendation(r.item, r.score) for r in reply.items]

    def privacy_budget(self) -> PrivacyBudget:
        b = self.stub.GetPrivacyBudget(pb.PrivacyBudgetRequest(), timeout=self.timeout)
        return PrivacyBudget(
            epsilon=b.epsilon,
            cap=b.cap if b.HasField("cap") else None,
            delta=b.delta if b.HasField("delta") else None,
            unit=b.unit,
            accountant=b.accountant or None,
            steps=b.steps,
        )

    def forget(self, confirm: bool = True) -> None:
        self.stub.Forget(pb.ForgetRequest(confirm=confirm), timeout=self.timeout)

    def status(self) -> dict[str, object]:
        s = self.stub.GetStatus(pb.StatusRequest(), timeout=self.timeout)
        return {f.name: getattr(s, f.name) for f in s.DESCRIPTOR.fields}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a device store as a local gRPC API")
    parser.add_argument("--store", required=True, help="the device's store (SQLite file)")
    parser.add_argument("--key-file", required=True, help="file with the key as 64 hex digits")
    parser.add_argument("--listen", required=True, help="unix:/abs/path.sock or 127.0.0.1:PORT")
    args = parser.parse_args(argv)
    try:
        check_address(args.listen)  # before the store is opened (or created)
        key = read_key_file(Path(args.key_file), Path(args.store))
        device = Device.open(args.store, key)
        server, address = serve(device, args.listen)
    except (ValueError, StoreError, OSError) as err:
        print(f"confide device agent: {err}", file=sys.stderr)
        return 2
    print(f"confide device agent {device.device_id} listening on {address}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    device.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
