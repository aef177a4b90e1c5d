#!/usr/bin/env python3
"""Load test for `idefics serve` (stdlib only; loopback only; bounded in count and time).

For each concurrency level (default 1, 8, 32) it sends up to --requests chat completions with one image each,
from that many client threads, for at most --max-seconds. Every 10th request (10 %) carries a corrupt image and
must be answered 400; every other request must be answered 200 with non-empty text. It reports throughput,
p50/p99 latency of the good requests, and the number of failed good requests (the run fails if any).

    # against a running server
    python3 tools/loadtest/loadtest.py --base http://127.0.0.1:8080
    # start the server itself on a free loopback port (and stop it afterwards); {port} is filled in
    python3 tools/loadtest/loadtest.py --start "target/debug/idefics serve --mock --mock-step-ms 2 --port {port}"
"""

import argparse
import base64
import http.client
import json
import shlex
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def png(width, height, rgb):
    """A solid-colour RGB PNG, encoded with the standard library."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\x00" + bytes(rgb) * width
    raw = row * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def data_uri(data):
    return "data:image/png;base64," + base64.b64encode(data).decode()


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


class Level:
    def __init__(self):
        self.lock = threading.Lock()
        self.good_ok = 0
        self.good_failed = 0
        self.bad_rejected = 0
        self.bad_unexpected = 0
        self.latencies = []
        self.completion_tokens = 0
        self.failures = []


def run_level(host, port, model, concurrency, total, max_seconds, image_side, max_tokens):
    good_img = data_uri(png(image_side, image_side, (200, 30, 30)))
    full = png(image_side, image_side, (1, 2, 3))
    bad_img = data_uri(full[: len(full) // 2])
    stats = Level()
    counter = {"next": 0}
    counter_lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            with counter_lock:
                i = counter["next"]
                if i >= total or time.monotonic() >= deadline:
                    break
                counter["next"] += 1
            bad = i % 10 == 9
            body = json.dumps({
                "model": model,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "Describe request %d." % i},
                    {"type": "image_url", "image_url": {"url": bad_img if bad else good_img}},
                ]}],
            })
            t0 = time.monotonic()
            try:
                conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
                status, payload = None, str(e).encode()
            dt = time.monotonic() - t0
            with stats.lock:
                if bad:
                    if status == 400 and b'"error"' in payload:
                        stats.bad_rejected += 1
                    else:
                        stats.bad_unexpected += 1
                        stats.failures.append("bad request %d: %s %s" % (i, status, payload[:200]))
                    continue
                ok = False
                if status == 200:
                    try:
                        doc = json.loads(payload)
                        text = doc["choices"][0]["message"]["content"]
                        ok = bool(text)
                        stats.completion_tokens += doc["usage"]["completion_tokens"]
                    except (ValueError, KeyError, IndexError, TypeError):
                        ok = False
                if ok:
                    stats.good_ok += 1
                    stats.latencies.append(dt)
                else:
                    stats.good_failed += 1
                    stats.failures.append("good request %d: %s %s" % (i, status, payload[:200]))
        conn.close()

    t_start = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + 120)
    wall = time.monotonic() - t_start
    return stats, wall


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(host, port, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return True
        except OSError:
            time.sleep(0.1)
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="http://127.0.0.1:8080", help="server URL (loopback only)")
    ap.add_argument("--start", metavar="CMD", help="server command to start, with {port} for a free loopback port")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    ap.add_argument("--requests", type=int, default=200, help="requests per level (upper bound)")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="time per level (upper bound)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--image-side", type=int, default=64)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()

    server = None
    if args.start:
        port = free_port()
        cmd = shlex.split(args.start.replace("{port}", str(port)))
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = "http://127.0.0.1:%d" % port
    else:
        base = args.base
    url = urllib.parse.urlparse(base)
    host, port = url.hostname, url.port or 80
    if host not in LOOPBACK:
        sys.exit("refusing to load-test %s: loopback addresses only" % host)
    try:
        if not wait_healthy(host, port, 30):
            sys.exit("server at %s is not healthy" % base)
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/v1/models")
        model = json.loads(conn.getresponse().read())["data"][0]["id"]
        print("server %s, model %s, %d requests / %.0f s max per level, 10%% corrupt images" % (
            base, model, args.requests, args.max_seconds))
        header = "%11s %8s %8s %11s %9s %10s %8s %8s %9s" % (
            "concurrency", "requests", "good_ok", "good_failed", "bad->400", "req/s", "p50_ms", "p99_ms", "tok/s")
        print(header)
        results = []
        failed_good = 0
        for c in [int(x) for x in args.concurrency.split(",") if x.strip()]:
            st, wall = run_level(host, port, model, c, args.requests, args.max_seconds, args.image_side,
                                 args.max_tokens)
            done = st.good_ok + st.good_failed + st.bad_rejected + st.bad_unexpected
            row = {
                "concurrency": c, "requests": done, "good_ok": st.good_ok, "good_failed": st.good_failed,
                "bad_rejected_400": st.bad_rejected, "bad_unexpected": st.bad_unexpected,
                "wall_s": round(wall, 3), "req_per_s": round(done / wall, 2) if wall else 0.0,
                "p50_ms": round(percentile(st.latencies, 50) * 1000, 1),
                "p99_ms": round(percentile(st.latencies, 99) * 1000, 1),
                "completion_tok_per_s": round(st.completion_tokens / wall, 1) if wall else 0.0,
            }
            results.append(row)
            failed_good += st.good_failed + st.bad_unexpected
            print("%11d %8d %8d %11d %9d %10.1f %8.1f %8.1f %9.1f" % (
                c, done, st.good_ok, st.good_failed, st.bad_rejected, row["req_per_s"], row["p50_ms"],
                row["p99_ms"], row["completion_tok_per_s"]))
            for f in st.failures[:5]:
                print("   ", f)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"base": base, "model": model, "results": results}, f, indent=2)
        print("failed good requests: %d" % failed_good)
        return 1 if failed_good else 0
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
