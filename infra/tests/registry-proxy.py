#!/usr/bin/env python3
"""Give builds inside a private network namespace the package registries, and nothing else.

The throwaway Docker engine of the infra tests runs in its own network namespace, which has
only a loopback interface. `docker build --network host` puts the build containers in that
namespace, where `cargo` (crates.io) and `apt-get` (Debian) reach the registries through an
HTTP proxy: the relay below listens inside the namespace and passes every connection over a
Unix socket (sockets on the file system cross network namespaces) to the proxy, which runs in
the host's namespace and connects only to the allow-listed registry hosts.

    registry-proxy.py serve SOCKET          host side: HTTP proxy (CONNECT and plain GET)
    registry-proxy.py relay ADDR:PORT SOCKET   inside the namespace: TCP -> SOCKET

Each connection is logged on stderr with its host and whether it was allowed.
"""

import asyncio
import os
import sys

ALLOWED_HOSTS = {
    "crates.io",
    "index.crates.io",
    "static.crates.io",
    "deb.debian.org",
    "security.debian.org",
    "pypi.org",
    "files.pythonhosted.org",
}
ALLOWED_PORTS = {80, 443}


def log(message):
    print(f"registry-proxy: {message}", file=sys.stderr, flush=True)


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - closing a broken stream
            pass


async def refuse(writer, status, host):
    log(f"refused {host}: {status}")
    writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    writer.close()


async def handle_proxy(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    first, _, rest = head.partition(b"\r\n")
    try:
        method, target, version = first.decode("latin-1").split(" ")
    except ValueError:
        await refuse(writer, "400 Bad Request", "?")
        return
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        port = int(port or 443)
        forward = b""
    else:
        if not target.startswith("http://"):
            await refuse(writer, "400 Bad Request", target)
            return
        authority, _, path = target[len("http://"):].partition("/")
        host, _, port = authority.partition(":")
        port = int(port or 80)
        forward = f"{method} /{path} {version}\r\n".encode() + rest
    if host not in ALLOWED_HOSTS or port not in ALLOWED_PORTS:
        await refuse(writer, "403 Forbidden", f"{host}:{port}")
        return
    try:
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
    except (OSError, asyncio.TimeoutError) as error:
        await refuse(writer, "502 Bad Gateway", f"{host}:{port} ({error})")
        return
    log(f"{method} {host}:{port}")
    if method == "CONNECT":
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
    else:
        up_writer.write(forward)
        await up_writer.drain()
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def serve(path):
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.start_unix_server(handle_proxy, path=path, limit=1 << 20)
    os.chmod(path, 0o600)
    log(f"listening on {path}")
    async with server:
        await server.serve_forever()


async def relay(address, path):
    host, _, port = address.rpartition(":")

    async def handle(reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(path)
        except OSError as error:
            log(f"relay: cannot reach {path}: {error}")
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, host, int(port))
    log(f"relay {address} -> {path}")
    async with server:
        await server.serve_forever()


def main(argv):
    if len(argv) == 3 and argv[1] == "serve":
        asyncio.run(serve(argv[2]))
    elif len(argv) == 4 and argv[1] == "relay":
        asyncio.run(relay(argv[2], argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
