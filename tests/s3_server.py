"""A real local S3 server for the tests (moto's server mode on 127.0.0.1) and a proxy that cuts uploads.

The server speaks the S3 REST API over HTTP, so boto3 talks to it exactly as to a bucket
elsewhere: Object Lock, versioning, If-None-Match and SHA-256 checksums included.
:class:`CuttingProxy` sits between the client and the server and, once a connection has
carried more than ``after_bytes`` from the client, either drops it (a network failure) or
stops forwarding and holds it (an upload in flight, for a test to kill the process).
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials"}


class S3Server:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.host, self.port = host, int(port)
        self.url = f"http://{host}:{port}"

    def client(self, endpoint: str | None = None) -> Any:
        import boto3

        return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                     region_name="us-east-1").client("s3", endpoint_url=endpoint or self.url)

    def bucket(self, name: str, *, lock: bool = True) -> str:
        """A bucket; with ``lock`` it has Object Lock (and so versioning) enabled."""
        self.client().create_bucket(Bucket=name, **({"ObjectLockEnabledForBucket": True} if lock else {}))
        return name

    def stop(self) -> None:
        self._server.stop()


class CuttingProxy:
    """TCP proxy to ``upstream``; cuts each connection once it has sent more than ``after_bytes`` upstream."""

    def __init__(self, upstream: tuple[str, int], *, after_bytes: int, mode: str) -> None:
        assert mode in ("drop", "hold")
        self.upstream, self.after, self.mode = upstream, after_bytes, mode
        self.cut = threading.Event()  # set when a connection was cut
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counting: bool) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if counting and sent + len(data) > self.after:
                    self.cut.set()
                    if self.mode == "drop":
                        break
                    self._stop.wait()  # hold: nothing more goes through until the proxy closes
                    return
                sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for s in self._open:
            try:
                s.close()
            except OSError:
                pass
