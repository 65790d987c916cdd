"""A fake push service and ntfy server on loopback, for tests/push.rs.

It plays the browser side of Web Push with its own receiver keys and
decrypts with http_ece (an implementation independent of ours); VAPID JWTs
are verified with `cryptography`.

    fake_push.py keygen PEM   write a SEC1 PEM (the original app's format),
                              print the applicationServerKey cryptography computes
    fake_push.py serve        print {"port", "subscriptions"} on one line, then serve

Endpoints: POST /push/ok (201), /push/gone (410), /push/busy (429 with
Retry-After: 1 once, then 201), /push/small (413 over 2200 bytes, a service
with a smaller limit); POST /ntfy/<topic>; POST
/telegram/bot<token>/sendMessage (the Bot API: JSON in, {"ok": true} out;
the very first request answers 502, to see the sender retry); GET /messages.
"""

import base64
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def public_point(key):
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def keygen(path):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # "BEGIN EC PRIVATE KEY"
        serialization.NoEncryption(),
    )
    with open(path, "wb") as f:
        f.write(pem)
    print(b64e(public_point(key)))


LOCK = threading.Lock()
MESSAGES = []
SUBS = {}
BUSY_SENT = {"done": False}


def verify_vapid(auth, origin):
    """Returns (claims, k) or raises ValueError with the reason."""
    if not auth.startswith("vapid "):
        raise ValueError("no vapid authorization")
    parts = dict(p.strip().split("=", 1) for p in auth[len("vapid "):].split(","))
    token, k = parts["t"], parts["k"]
    h64, c64, s64 = token.split(".")
    header = json.loads(b64d(h64))
    if header.get("alg") != "ES256":
        raise ValueError("alg is not ES256")
    claims = json.loads(b64d(c64))
    sig = b64d(s64)
    if len(sig) != 64:
        raise ValueError("signature is not raw r||s")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(k))
    try:
        pub.verify(der, f"{h64}.{c64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ValueError("bad signature")
    if claims.get("aud") != origin:
        raise ValueError(f"aud {claims.get('aud')!r} != {origin!r}")
    now = time.time()
    if not (now < claims["exp"] <= now + 24 * 3600 + 5):
        raise ValueError("exp not within 24 h")
    if "sub" not in claims:
        raise ValueError("no sub")
    return claims, k


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/messages":
            with LOCK:
                body = json.dumps(MESSAGES).encode()
            self.reply(200, body, [("Content-Type", "application/json")])
        else:
            self.reply(404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        now = time.time()
        if self.path.startswith("/ntfy/"):
            with LOCK:
                MESSAGES.append({"channel": "ntfy", "method": self.command, "path": self.path,
                                 "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode(),
                                 "at": now})
            self.reply(200, b"{}")
            return
        if self.path.startswith("/telegram/"):
            with LOCK:
                first = not any(m["channel"] == "telegram" for m in MESSAGES)
                status = 502 if first else 200
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                MESSAGES.append({"channel": "telegram", "method": self.command, "path": self.path,
                                 "headers": {k.lower(): v for k, v in self.headers.items()},
                                 "json": parsed, "status": status, "at": now})
            if status == 200:
                self.reply(200, b'{"ok": true, "result": {"message_id": 1}}',
                           [("Content-Type", "application/json")])
            else:
                self.reply(502, b'{"ok": false, "error_code": 502, "description": "Bad Gateway"}',
                           [("Content-Type", "application/json")])
            return
        name = self.path[len("/push/"):] if self.path.startswith("/push/") else None
        if name not in SUBS:
            self.reply(404)
            return
        record = {"channel": "webpush", "sub": name, "at": now,
                  "ttl": self.headers.get("TTL"), "urgency": self.headers.get("Urgency"),
                  "topic": self.headers.get("Topic"),
                  "encoding": self.headers.get("Content-Encoding")}
        origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        try:
            if self.headers.get("TTL") is None:
                raise ValueError("no TTL")
            if self.headers.get("Content-Encoding") != "aes128gcm":
                raise ValueError("not aes128gcm")
            claims, k = verify_vapid(self.headers.get("Authorization", ""), origin)
        except (ValueError, KeyError) as e:
            record.update(status=401, error=str(e))
            with LOCK:
                MESSAGES.append(record)
            self.reply(401, str(e).encode())
            return
        record.update(claims=claims, k=k)
        if len(body) > 4096:
            status = 413
        elif name == "small" and len(body) > 2200:
            status = 413
        elif name == "gone":
            status = 410
        elif name == "busy" and not BUSY_SENT["done"]:
            BUSY_SENT["done"] = True
            status = 429
        else:
            ua, auth = SUBS[name]
            record["plaintext"] = http_ece.decrypt(body, private_key=ua, auth_secret=auth).decode()
            status = 201
        record["status"] = status
        with LOCK:
            MESSAGES.append(record)
        headers = [("Retry-After", "1")] if status == 429 else [("Location", f"/msg/{len(MESSAGES)}")]
        self.reply(status, b"", headers)


def serve():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    out = {}
    for name in ("ok", "gone", "busy", "small"):
        ua = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        SUBS[name] = (ua, auth)
        out[name] = {"endpoint": f"http://127.0.0.1:{port}/push/{name}",
                     "keys": {"p256dh": b64e(public_point(ua)), "auth": b64e(auth)}}
    print(json.dumps({"port": port, "subscriptions": out}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "keygen":
        keygen(sys.argv[2])
    else:
        serve()
