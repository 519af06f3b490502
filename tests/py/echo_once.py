"""Connect with Python `websockets`, send one text message, check the echo, exit 0 (else 1).

Usage: python echo_once.py ws://127.0.0.1:9001/ [message]
"""
import asyncio
import sys

import websockets


async def main(url: str, message: str) -> int:
    async with websockets.connect(url, open_timeout=10, close_timeout=10) as ws:
        await ws.send(message)
        answer = await asyncio.wait_for(ws.recv(), 10)
    if answer != message:
        print(f"echo_once: sent {message!r}, got {answer!r}", file=sys.stderr)
        return 1
    print(f"echo_once: {url} echoed {message!r}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "hello wsd")))
