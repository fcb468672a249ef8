#!/usr/bin/env python3
"""Interop client for 13-interop-python.t: talks to websocket_echo with the
Python `websockets` library and prints one line per check:

    ok <check> <detail>
    not ok <check> <detail>

Usage: ws_client.py URL [deflate]   (e.g. ws://127.0.0.1:8080/interop)
The location must echo, allow 1 MiB messages and offer the subprotocol
"chat". With "deflate" the location has `websocket_deflate on`: the client
checks that permessage-deflate was negotiated and that frames carried RSV1
both ways; without, that the offer (websockets always makes one) was
declined. Exit status 0 when every check passed, 1 otherwise.
"""

import asyncio
import os
import random
import sys
import time

# Never go through a proxy: the server is on 127.0.0.1.
for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
    os.environ.pop(var, None)

import websockets  # noqa: E402
from websockets.extensions import permessage_deflate  # noqa: E402

FAILED = []
# Frames that carried RSV1 (a compressed message), as the library saw them.
RSV1 = {"received": 0, "sent": 0}


def count_compressed_frames():
    """Wraps the library's permessage-deflate codec to count RSV1 frames."""
    cls = permessage_deflate.PerMessageDeflate
    decode, encode = cls.decode, cls.encode

    def counting_decode(self, frame, *, max_size=None):
        RSV1["received"] += frame.rsv1
        return decode(self, frame, max_size=max_size)

    def counting_encode(self, frame):
        encoded = encode(self, frame)
        RSV1["sent"] += encoded.rsv1
        return encoded

    cls.decode, cls.encode = counting_decode, counting_encode


def report(check, passed, detail=""):
    if not passed:
        FAILED.append(check)
    print(f"{'ok' if passed else 'not ok'} {check} {detail}".rstrip(), flush=True)


def attr(ws, *names):
    """First attribute found on the connection or its protocol object
    (the legacy and the new implementations keep state in different places)."""
    for obj in (ws, getattr(ws, "protocol", None)):
        for name in names:
            if obj is not None and hasattr(obj, name):
                return getattr(obj, name)
    return None


async def expect_echo(ws, check, message, timeout=10):
    await ws.send(message)
    reply = await asyncio.wait_for(ws.recv(), timeout)
    same = type(reply) is type(message) and reply == message
    size = len(reply.encode()) if isinstance(reply, str) else len(reply)
    report(check, same, f"{type(reply).__name__} of {size} bytes")


async def main(url, deflate):
    kwargs = dict(subprotocols=["nope", "chat"], max_size=2 * 1024 * 1024, ping_interval=None,
                  open_timeout=5, close_timeout=5)
    ws = await websockets.connect(url, **kwargs)
    report("handshake", True, f"websockets {websockets.version.version}")
    report("subprotocol", ws.subprotocol == "chat", f"chose {ws.subprotocol!r}")
    extensions = attr(ws, "extensions") or []
    if deflate:
        header = ws.response.headers.get("Sec-WebSocket-Extensions")
        report("extension", [type(e).__name__ for e in extensions] == ["PerMessageDeflate"],
               f"server answered {header!r}")
    else:
        report("no-extension", len(extensions) == 0,
               "permessage-deflate offered and declined" if not extensions else repr(extensions))

    await expect_echo(ws, "text", "h\u00e9llo w\u00f6rld \u2713 \U0001F600")
    await expect_echo(ws, "binary", bytes(range(256)))
    await expect_echo(ws, "empty-text", "")

    rng = random.Random(6455)
    mib = 1024 * 1024
    await expect_echo(ws, "binary-1mib", rng.randbytes(mib) if hasattr(rng, "randbytes")
                      else bytes(rng.getrandbits(8) for _ in range(mib)))
    unit = "h\u00e9llo \u2713 \U0001F600 "
    text = (unit * (mib // len(unit.encode())))
    await expect_echo(ws, "text-1mib", text)

    # An iterable is sent as one fragmented message, one frame per item.
    await ws.send(["frag", "ment", "ed \u2713", ""])
    reply = await asyncio.wait_for(ws.recv(), 5)
    report("fragmented-text", reply == "fragmented \u2713", f"{reply!r}")
    chunks = [bytes([i]) * 70000 for i in range(4)]
    await ws.send(chunks)
    reply = await asyncio.wait_for(ws.recv(), 5)
    report("fragmented-binary", reply == b"".join(chunks), f"{len(reply)} bytes in 4 fragments")

    started = time.monotonic()
    pong = await ws.ping(b"interop ping")
    await asyncio.wait_for(pong, 5)
    report("ping", True, f"pong after {(time.monotonic() - started) * 1000:.1f} ms")

    for i in range(100):
        await ws.send(f"message {i}")
    replies = [await asyncio.wait_for(ws.recv(), 5) for _ in range(100)]
    report("in-order", replies == [f"message {i}" for i in range(100)], "100 messages")

    started = time.monotonic()
    await ws.close(code=1000, reason="bye")
    elapsed = time.monotonic() - started
    code = attr(ws, "close_code")
    rcvd = attr(ws, "close_rcvd")
    rcvd_code = rcvd.code if rcvd is not None else code
    report("close", code == 1000 and rcvd_code == 1000 and elapsed < 2,
           f"server answered {rcvd_code}, closed in {elapsed:.2f} s")
    if deflate:
        report("compressed-frames", RSV1["received"] > 0 and RSV1["sent"] > 0,
               f"{RSV1['received']} received and {RSV1['sent']} sent with RSV1")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["deflate"]):
        sys.exit(__doc__)
    count_compressed_frames()
    try:
        asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2:] == ["deflate"]), 30))
    except Exception as e:  # a check that could not even run
        report("run", False, f"{type(e).__name__}: {e}")
    sys.exit(1 if FAILED else 0)
