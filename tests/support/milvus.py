"""Real Milvus servers on 127.0.0.1 (the Lite server and the C++ standalone), shared through unique collections."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.support.processes import free_port

MILVUS_SERVERS = ["milvus-lite-server", "milvus-2.3-standalone"]


def milvus_ready(port: int) -> bool:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=f"http://127.0.0.1:{port}", timeout=5)
    try:
        client.list_collections()
        return True
    finally:
        client.close()


def milvus_command(kind: str, data_dir: Path) -> Callable[[int], list[str]]:
    bin_dir = Path(sys.executable).parent
    if kind == "milvus-lite-server":
        return lambda port: [
            str(bin_dir / "milvus-lite"),
            "server",
            "--data-dir",
            str(data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]

    # The C++ standalone listens on a dozen fixed ports by default (etcd on 2379/2380 among them): give each a
    # free one. Its embedded etcd reads its addresses from the file ETCD_CONFIG_PATH names.
    def command(port: int) -> list[str]:
        client, peer = free_port(), free_port()
        (data_dir / "etcd.yaml").write_text(
            f"listen-client-urls: http://127.0.0.1:{client}\nadvertise-client-urls: http://127.0.0.1:{client}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer}\n"
        )
        ports = [
            f"--{name}-port={free_port()}"
            for name in (
                "root-coord",
                "proxy-internal",
                "query-coord",
                "query-node",
                "index-coord",
                "index-node",
                "data-coord",
                "data-node",
            )
        ]
        return [
            str(bin_dir / "milvus-server"),
            "--data",
            str(data_dir),
            "--proxy-port",
            str(port),
            "--etcd-port",
            str(client),
            *ports,
        ]

    return command


def unique_collection() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"
