"""Echoes messages through wsd with permessage-deflate as Python websockets negotiates it.

Usage: deflate_echo.py URL [PARAM ...] where each PARAM is one of the client factory's
keyword arguments (server_no_context_takeover, client_no_context_takeover,
server_max_window_bits=N, client_max_window_bits=N or client_max_window_bits=True), or
`default` for the offer websockets makes by default. Prints the negotiated header line, then
`ok N` after N echoes came back equal.
"""
import json
import sys

from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect


def factory(params):
    kwargs = {}
    for p in params:
        if p == "default":
            return None
        name, _, value = p.partition("=")
        if not value:
            kwargs[name] = True
        elif value == "True":
            kwargs[name] = True
        else:
            kwargs[name] = int(value)
    return ClientPerMessageDeflateFactory(**kwargs)


def main():
    url, params = sys.argv[1], sys.argv[2:]
    f = factory(params)
    options = {"extensions": [f]} if f is not None else {}
    with connect(url, max_size=None, **options) as ws:
        print(ws.response.headers.get("Sec-WebSocket-Extensions", "none"), flush=True)
        record = {"type": "update", "user": "alice", "values": list(range(20)), "ok": True}
        messages = [
            json.dumps(record),
            json.dumps([record] * 50),
            "short",
            bytes(range(256)) * 40,
            "héllo wörld " * 30,
            json.dumps(record),
            b"",
            "x" * 100_000,
        ]
        for m in messages:
            ws.send(m)
            back = ws.recv()
            assert back == m, (len(back), len(m))
        print("ok", len(messages), flush=True)


if __name__ == "__main__":
    main()
