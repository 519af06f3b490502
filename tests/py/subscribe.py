"""Subscribe with Python `websockets`, print `subscribed`, then each of N messages as a line.

Usage: python subscribe.py ws://127.0.0.1:9001/news N
"""
import asyncio
import sys

import websockets


async def main(url: str, count: int) -> None:
    async with websockets.connect(url, open_timeout=10, close_timeout=10) as ws:
        print("subscribed", flush=True)
        for _ in range(count):
            m = await asyncio.wait_for(ws.recv(), 20)
            kind = "text" if isinstance(m, str) else "binary"
            print(f"{kind} {m!r}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
