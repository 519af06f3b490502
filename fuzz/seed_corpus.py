#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from the byte strings of the unit tests
(src/protocol/*.rs) and the RFC 6455 examples. Run from anywhere; it only adds files."""
import hashlib
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def save(target, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frame(fin, op, payload, mask=MASK):
    out = bytearray([(0x80 if fin else 0) | op])
    n = len(payload)
    m = 0x80 if mask is not None else 0
    if n <= 125:
        out.append(m | n)
    elif n <= 0xFFFF:
        out.append(m | 126)
        out += struct.pack(">H", n)
    else:
        out.append(m | 127)
        out += struct.pack(">Q", n)
    if mask is not None:
        out += mask
        out += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    else:
        out += payload
    return bytes(out)


# handshake: [limit byte][request]; 0x7C is a limit of 8 KiB.
GOOD = (b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Origin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n")
requests = [
    GOOD,
    GOOD + frame(True, 0x1, b"Hello"),
    GOOD.replace(b"Connection: Upgrade", b"connection: keep-alive, UPGRADE"),
    GOOD.replace(b"Upgrade: websocket", b"upgrade: WebSocket"),
    GOOD.replace(b"GET /chat", b"POST /chat"),
    GOOD.replace(b"HTTP/1.1\r\nHost", b"HTTP/1.0\r\nHost"),
    GOOD.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
    GOOD.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="),
    GOOD.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"not base64!"),
    GOOD.replace(b"Host: server.example.com\r\n", b""),
    GOOD[:100],
    b"\x16\x03\x01garbage\r\n\r\n",
]
# The same target checks server responses with the client's check_response (wsd-load).
requests += [
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
]
for r in requests:
    save("handshake", b"\x7c" + r)
save("handshake", b"\x00" + GOOD)

# frame_header: raw header bytes (§5.7 examples and the header_rules cases).
headers = [
    bytes([0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]),
    bytes([0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]),
    bytes([0x01, 0x03, 0x48, 0x65, 0x6c]),
    bytes([0x80, 0x02, 0x6c, 0x6f]),
    bytes([0x82, 0x7E, 0x01, 0x00]),
    bytes([0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]),
    bytes([0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4]),
    bytes([0xC1, 0x80, 0, 0, 0, 0]),
    bytes([0x83, 0x80, 0, 0, 0, 0]),
    bytes([0x09, 0x80, 0, 0, 0, 0]),
    bytes([0x89, 0xFE, 0, 126]),
    bytes([0x89, 0xFD, 0, 0, 0, 0]),
    bytes([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    bytes([0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]),
]
for h in headers:
    save("frame_header", h)

# close_payload: the payload alone.
closes = [b"", b"\x03", b"\x03\xe8", b"\x03\xe8" + "bye κόσμε".encode(),
          bytes([0x03, 0xE8, 0xCE, 0xBA, 0xE1, 0xBD]), struct.pack(">H", 1005),
          struct.pack(">H", 999), struct.pack(">H", 2000), struct.pack(">H", 5000),
          struct.pack(">H", 3000) + b"app", struct.pack(">H", 4999),
          b"\x03\xe8" + "é".encode() * 62]
for c in closes:
    save("close_payload", c)

# message: [limits][split seed] then frames as [FIN<<7 | kind<<4][len][payload]; kinds:
# 0 continuation, 1 text, 2 binary, 3 ping, 4 pong, 5 close, 6 reserved 0x3, 7 reserved 0xB.
def spec(fin, kind, payload):
    return bytes([(0x80 if fin else 0) | kind << 4, len(payload)]) + payload

kosme = "κόσμε".encode()
messages = [
    [spec(True, 1, b"Hello")],
    [spec(False, 1, kosme[:3]), spec(True, 3, b"mid"), spec(False, 0, kosme[3:7]),
     spec(True, 0, kosme[7:]), spec(False, 2, b"\x01\x02"), spec(True, 0, b"\x03")],
    [spec(False, 1, b"\xf4"), spec(False, 0, b"\x90"), spec(True, 0, b"\x80\x80")],
    [spec(False, 1, b"ok"), spec(True, 0, b"\xe2\x82")],
    [spec(True, 1, "κόσμε".encode() + b"\xed\xa0\x80edited")],
    [spec(True, 0, b"x")],
    [spec(False, 1, b"a"), spec(True, 1, b"b")],
    [spec(False, 1, b"frag"), spec(True, 5, b"\x03\xe8bye"), spec(True, 0, b"ment")],
    [spec(True, 3, bytes(126))],
    [spec(False, 3, b"x")],
    [spec(True, 6, b"")],
    [spec(True, 1, "Hello-µ@ßöäüàá-UTF-8!! κόσμε 𝄞 end".encode())],
]
for i, m in enumerate(messages):
    for limits, split in [(5, 1), (3 + 16, 7), (1, 255)]:
        save("message", bytes([limits, split]) + b"".join(m))

# session: [limits][n][wire bytes][n op bytes]; an op feeds (op & 63) + 1 bytes, ×16 with
# bit 7, then closes from our side with bit 6.
wires = [
    frame(True, 0x1, b"Hello"),
    frame(False, 0x1, kosme[:3]) + frame(True, 0x9, b"mid") + frame(False, 0x0, kosme[3:7])
    + frame(True, 0x0, kosme[7:]),
    frame(True, 0x8, b"\x03\xe8bye"),
    frame(True, 0x2, bytes(300)) + frame(True, 0x8, b""),
    bytes([0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4]),
    frame(True, 0x1, b"a" * 40) + frame(True, 0x8, b"\x03\xe8"),
    frame(False, 0x1, b"\xf4") + frame(False, 0x0, b"\x90") + frame(True, 0x0, b"\x80\x80"),
    bytes([0x81, 0x02, ord("h"), ord("i")]),
]
for w in wires:
    save("session", bytes([5, 0]) + w)
    ops = bytes([0] * min(len(w), 40))  # one byte at a time
    save("session", bytes([5, len(ops)]) + w + ops)
    ops = bytes([9, 0x40 | 3, 63])  # ten bytes, close from our side mid-frame, the rest
    save("session", bytes([3, len(ops)]) + w + ops)

# api_request: [knobs][request]; knobs 0x03 is a 1 KiB body limit, 0x83 the same with the token.
api = [
    b"POST /publish/news HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /publish/chat%2Froom-1 HTTP/1.1\r\nContent-Length: 3\r\n\r\n\x00\x01\xff",
    b"POST /publish/a HTTP/1.1\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    b"GET /channels HTTP/1.1\r\nHost: wsd\r\n\r\n",
    b"GET /metrics HTTP/1.0\r\n\r\n",
    b"GET /channels HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n",
    b"POST /publish/news HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /publish/news HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
    b"DELETE /channels HTTP/1.1\r\n\r\n",
    b"POST /publish/news HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n\xc3\x28",
]
for r in api:
    save("api_request", b"\x03" + r)
    save("api_request", b"\x83" + r)
