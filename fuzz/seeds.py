#!/usr/bin/env python3
"""Writes the hand-made seeds of each target to corpus/<target>/seed-*.

The input layouts are described at the top of each fuzz_targets/*.rs. The
rest of the committed corpus is what `cargo fuzz cmin` kept from runs; run
this again only to restore or extend the hand-made part.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = bytes([0xA1, 0xB2, 0xC3, 0xD4])


def frame(fin, opcode, payload, mask=None, rsv=0):
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes([first, mbit | n])
    elif n < 65536:
        head = bytes([first, mbit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, mbit | 127]) + struct.pack(">Q", n)
    if mask:
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


def stream(mask):
    return b"".join([
        frame(False, 1, "Hé".encode(), mask),
        frame(True, 9, b"ping!", mask),
        frame(False, 0, b"", mask),
        frame(True, 0, "llo €".encode(), mask),
        frame(True, 2, bytes([0, 1, 2, 255]), mask),
        frame(True, 2, bytes([7]) * 300, mask),
        frame(True, 10, b"", mask),
        frame(True, 8, b"\x03\xe8done", mask),
    ])


def decoder_seed(mask_mode, rsv=0, payload_idx=0, message_idx=0, sizes=b"", data=b""):
    cfg0 = mask_mode | (rsv << 2) | (payload_idx << 5)
    cfg1 = message_idx | (len(sizes) << 3)
    return bytes([cfg0, cfg1]) + sizes + data


def roundtrip_seed(fin, rsv, op_index, masked, force, cut, length, payload):
    b0 = (0x80 if fin else 0) | (rsv << 4) | op_index
    b1 = (1 if masked else 0) | (2 if force else 0) | (cut << 2)
    return bytes([b0, b1]) + KEY + struct.pack(">Q", length) + payload


def seeds():
    out = {}
    out["frame_decoder"] = [
        decoder_seed(0, sizes=b"\x01\x02\x03\x05\x07", data=stream(KEY)),
        decoder_seed(1, sizes=b"\x0e\x00\x02", data=stream(None)),
        decoder_seed(2, sizes=b"\x04", data=stream(KEY) + stream(None)),
        # A too-big frame (limit 125), then a too-big message (limit 300).
        decoder_seed(0, payload_idx=3, data=frame(True, 2, b"x" * 200, KEY)),
        decoder_seed(0, message_idx=4, data=frame(False, 2, b"x" * 200, KEY)
                     + frame(True, 0, b"y" * 200, KEY)),
        # Invalid UTF-8 in the middle of a fragmented text message.
        decoder_seed(0, sizes=b"\x03", data=frame(False, 1, "aé".encode(), KEY)
                     + frame(True, 0, b"\xed\xa0\x80zz", KEY)),
        # Close frames: bad code, bad reason, 1 byte.
        decoder_seed(0, data=frame(True, 8, b"\x03\xed", KEY)),
        decoder_seed(0, data=frame(True, 8, b"\x03\xe8\xff", KEY)),
        decoder_seed(1, data=frame(True, 8, b"\x03", None)),
        # 16- and 64-bit lengths, RSV1 allowed (permessage-deflate).
        decoder_seed(2, rsv=0b100, data=frame(True, 2, b"z" * 70000, None, rsv=4)[:3000]),
        decoder_seed(0, rsv=0b100, data=frame(True, 1, b"compressed", KEY, rsv=4)),
        # Protocol errors: reserved opcode, continuation without a message.
        decoder_seed(2, data=b"\x83\x00"),
        decoder_seed(2, data=frame(True, 0, b"abc")),
    ]
    out["frame_roundtrip"] = [
        roundtrip_seed(True, 0, 1, True, True, 3, 5, b"Hello"),
        roundtrip_seed(True, 0, 3, False, False, 1, 1000, b"\x03\xe8bye"),
        roundtrip_seed(True, 0, 4, True, False, 10, 125, b"p" * 125),
        roundtrip_seed(False, 4, 2, True, True, 63, 65536, bytes(range(256)) * 2),
        roundtrip_seed(False, 0, 0, False, True, 0, 1 << 63, b""),
        roundtrip_seed(True, 7, 5, False, False, 0, 126, b"x" * 126),
    ]
    out["utf8"] = [
        b"\x03\x01\x02\x03" + "Hello-µ@ßöäüàá-UTF-8!! κόσμε 😀 €".encode(),
        b"\x01\x01" + "\U0010ffff\u0800\u0080".encode(),
        b"\x00" + b"\xed\xa0\x80",          # surrogate
        b"\x02\x01\x02" + b"ab\xc0\xaf",     # overlong
        b"\x01\x02" + b"\xf4\x90\x80\x80",   # above U+10FFFF
        b"\x00" + "€".encode()[:2],          # truncated at the end
        b"\x01\x00" + b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
    ]
    valid = (b"GET\nHost: server.example.com\nUpgrade: websocket\nConnection: Upgrade\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n"
             b"Origin: http://example.com\nSec-WebSocket-Protocol: chat, superchat\n"
             b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    out["server_handshake"] = [
        b"\x00" + valid,
        b"\x03" + valid.replace(b"Upgrade\n", b"keep-alive, upgrade\n")
        .replace(b"Key: dGhlIHNhbXBsZSBub25jZQ==", b"key:  BBBBBBBBBBBBBBBBBBBBBB==\t"),
        b"\x01" + valid,
        b"\x00POST" + valid[3:],
        b"\x00" + valid + b"\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"\x00" + valid.replace(b"13", b"8"),
        b"\x00" + valid.replace(b"chat, superchat", b"\xff"),
        # Separators 0x00 and 0x01: a ':' in a name, a '\n' in a value.
        b"\x08" + valid.replace(b"\n", b"\x00").replace(b": ", b"\x01 ", 20)
        + b"\x00X:Y\x01a\nb",
    ]
    response = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                b"Sec-WebSocket-Protocol: chat\r\n\r\n")
    out["client_response"] = [
        b"\x00\x00\x00" + response + b"\x81\x05hello",
        b"\x00\x00\x00" + response.replace(b"chat", b"chat, superchat"),
        b"\x00\x00\x00HTTP/1.0 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
        b"\x00\x00\x00" + response.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: "
                                          b"permessage-deflate; client_max_window_bits\r\n\r\n"),
        b"\x00\x00\x00HTTP/1.1 101\r\n folded: x\r\n\r\n",
        b"\x00\x00\x00HTTP/2 101\r\n\r\n",
        # A 26-byte head padded by 16 KB - 128 + 102 bytes inside a header
        # value: it ends exactly at the limit; one byte more is too large.
        b"\x01\x14\x66HTTP/1.1 101 OK\r\nA: b\r\n\r\n",
        b"\x01\x14\x67HTTP/1.1 101 OK\r\nA: b\r\n\r\n",
        # Padded past the limit, read in 200-byte pieces.
        b"\x03\x22\xff\xc8" + response,
    ]
    # redis_resp: [limits, nsizes, sizes..., replies...]
    xread = (b"*1\r\n*2\r\n$4\r\nch:a\r\n*2\r\n"
             b"*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nd\r\n$2\r\nhi\r\n"
             b"*2\r\n$3\r\n2-7\r\n*4\r\n$1\r\nd\r\n$0\r\n\r\n$1\r\nt\r\n$1\r\n1\r\n")
    out["redis_resp"] = [
        b"\x00\x00+OK\r\n:12\r\n$15\r\n1700000000000-3\r\n",
        b"\x00\x03\x01\x02\x05" + xread,
        b"\x00\x01\x07-ERR wrong\r\n*-1\r\n$-1\r\n*0\r\n" + xread[4:],
        # Small limits: a reply over 64 + 8 bytes is refused.
        b"\x03\x00" + xread,
        b"\x01\x00*9\r\n$33\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        b"\x00\x00$9223372036854775807\r\n*9223372036854775807\r\n",
    ]
    return out


def main():
    for target, items in seeds().items():
        directory = os.path.join(HERE, "corpus", target)
        os.makedirs(directory, exist_ok=True)
        for i, data in enumerate(items):
            with open(os.path.join(directory, f"seed-{i:02}"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
