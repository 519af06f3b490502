"""One Python `websockets` client that sends a message every INTERVAL for SECONDS and checks each
echo; prints its longest gap and exits 0 if every echo came back in order on one connection.

Usage: python echo_steady.py ws://127.0.0.1:9001/ SECONDS [INTERVAL]
"""
import asyncio
import sys
import time

import websockets


async def main(url: str, seconds: float, interval: float) -> int:
    worst = 0.0
    sent = 0
    async with websockets.connect(url, open_timeout=10, close_timeout=10) as ws:
        print("connected", flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.monotonic()
            await ws.send(f"steady {sent}")
            answer = await asyncio.wait_for(ws.recv(), 10)
            if answer != f"steady {sent}":
                print(f"echo_steady: expected 'steady {sent}', got {answer!r}", file=sys.stderr)
                return 1
            sent += 1
            worst = max(worst, time.monotonic() - t)
            await asyncio.sleep(interval)
    print(f"echo_steady: {sent} echoes on one connection, longest wait {worst * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.02
    sys.exit(asyncio.run(main(sys.argv[1], float(sys.argv[2]), interval)))
