"""Echo over wss:// with Python `websockets` and `ssl`, trusting only the test CA.

Usage: python tls_echo.py wss://localhost:PORT/ CA.pem 1.2|1.3
Sends a text, a 70 000-byte binary (several TLS records) and an empty message, checks each echo,
closes with 1000, and prints `ok TLSv1.x http/1.1` (the version and ALPN protocol agreed).
"""
import asyncio
import ssl
import sys

from websockets.asyncio.client import connect


async def main(url: str, cafile: str, version: str) -> int:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ctx.maximum_version = {
        "1.2": ssl.TLSVersion.TLSv1_2,
        "1.3": ssl.TLSVersion.TLSv1_3,
    }[version]
    ctx.set_alpn_protocols(["http/1.1"])
    async with connect(url, ssl=ctx, open_timeout=10, close_timeout=10, max_size=None) as ws:
        for message in ["héllo wss", bytes(range(256)) * 274, ""]:
            await ws.send(message)
            answer = await asyncio.wait_for(ws.recv(), 10)
            if answer != message:
                print(f"tls_echo: sent {len(message)} units, got {len(answer)}", file=sys.stderr)
                return 1
        tls = ws.transport.get_extra_info("ssl_object")
        print("ok", tls.version(), tls.selected_alpn_protocol())
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
