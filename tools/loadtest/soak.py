#!/usr/bin/env python3
"""Bounded soak of `idefics serve` with hostile clients mixed in (stdlib only; loopback only).

--clients threads (default 64) send requests for --seconds (default 180). About 10 % of the requests are
hostile, cycling through every kind the server must survive: a corrupt image, a pixel bomb, 2 MiB of text,
too many messages, an over-long stop string, an underflowing temperature, an unknown model, SSRF URLs
(loopback, link-local metadata, IPv4-mapped IPv6, NAT64), bad JSON, an unsupported parameter, a slowloris
client, a client that disconnects mid-request, and a body that never finishes. The others are good requests
(text + a 64x64 PNG) that must all get a 200 with text. The server's RSS is sampled from /proc every 0.5 s.

Reports: good requests ok / failed (must be 0), hostile requests answered as expected / not, p50 / p99 latency
of good requests, peak RSS (must stay under --rss-limit-mib). Exit 1 if any check fails.

    python3 tools/loadtest/soak.py --seconds 150 \\
        --start "target/debug/idefics serve --model models/idefics2-tiny --port {port}"
"""

import argparse
import http.client
import json
import os
import shlex
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadtest import data_uri, free_port, percentile, png, wait_healthy  # noqa: E402


def pixel_bomb():
    """A PNG whose header claims 60000 x 60000 pixels (the server must refuse it before decoding)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.good_ok = 0
        self.good_failed = 0
        self.hostile = {}  # kind -> [expected, unexpected]
        self.latencies = []
        self.failures = []

    def hostile_result(self, kind, ok, detail):
        with self.lock:
            row = self.hostile.setdefault(kind, [0, 0])
            row[0 if ok else 1] += 1
            if not ok and len(self.failures) < 50:
                self.failures.append("hostile %s: %s" % (kind, detail))


def post(host, port, body, timeout=120):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def chat(model, content, **extra):
    req = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": content}]}
    req.update(extra)
    return json.dumps(req)


def raw_client(host, port, payload, hold_seconds, trickle=False):
    """Sends `payload`, then (optionally trickling one byte per 0.2 s) waits until the server closes or
    `hold_seconds` pass. Returns True when the server closed the connection."""
    s = socket.create_connection((host, port), timeout=5)
    try:
        s.sendall(payload)
        s.settimeout(0.2)
        end = time.monotonic() + hold_seconds
        while time.monotonic() < end:
            try:
                if not s.recv(4096):
                    return True
            except socket.timeout:
                pass
            except OSError:
                return True
            if trickle:
                try:
                    s.sendall(b"X")
                except OSError:
                    return True
        return False
    finally:
        s.close()


def hostile_request(kind, host, port, model, good_image, header_timeout):
    """Runs one hostile request; returns (as_expected, detail)."""
    def expect(statuses, body):
        status, payload = post(host, port, body)
        return status in statuses and (status == 200 or b'"error"' in payload), "%s %s" % (status, payload[:160])

    if kind == "corrupt_image":
        full = png(64, 64, (1, 2, 3))
        return expect({400}, chat(model, [{"type": "image_url", "image_url": {"url": data_uri(full[: len(full) // 2])}}]))
    if kind == "pixel_bomb":
        return expect({400}, chat(model, [{"type": "image_url", "image_url": {"url": data_uri(pixel_bomb())}}]))
    if kind == "huge_text":
        return expect({400, 413}, chat(model, "\ue000" * (700 * 1024)))
    if kind == "many_messages":
        return expect({400}, json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}] * 600}))
    if kind == "long_stop":
        return expect({400}, chat(model, "hi", stop=["s" * 5000]))
    if kind == "tiny_temperature":
        return expect({200}, chat(model, "hi", temperature=1e-45))
    if kind == "unknown_model":
        return expect({404}, json.dumps({"model": "gpt-4o-nonexistent", "messages": [{"role": "user", "content": "x"}]}))
    if kind == "ssrf":
        urls = ["http://127.0.0.1:%d/health" % port, "http://169.254.169.254/latest/meta-data/",
                "http://[::ffff:127.0.0.1]:%d/" % port, "http://[64:ff9b::7f00:1]/", "http://0.0.0.0:%d/" % port]
        url = urls[int(time.monotonic() * 1000) % len(urls)]
        return expect({400}, chat(model, [{"type": "image_url", "image_url": {"url": url}}]))
    if kind == "bad_json":
        return expect({400}, '{"messages": [')
    if kind == "unsupported_param":
        return expect({400}, chat(model, "hi", n=3))
    if kind == "slowloris":
        closed = raw_client(host, port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", header_timeout + 5,
                            trickle=True)
        return closed, "server kept a trickling client for %.0f s" % (header_timeout + 5)
    if kind == "disconnect":
        body = chat(model, [{"type": "text", "text": "bye"}, {"type": "image_url", "image_url": {"url": good_image}}])
        head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: %d\r\n\r\n" % len(body)).encode()
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(head + body.encode())
        time.sleep(0.05)
        s.close()
        return True, ""
    if kind == "stalled_body":
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 5000\r\n\r\n{\"messages\"")
        s = socket.create_connection((host, port), timeout=5)
        try:
            s.sendall(head)
            s.settimeout(120)
            data = s.recv(64)
            return data.startswith(b"HTTP/1.1 408"), "got %r" % data[:40]
        except OSError as e:
            return False, str(e)
        finally:
            s.close()
    raise ValueError(kind)


KINDS = ["corrupt_image", "pixel_bomb", "huge_text", "many_messages", "long_stop", "tiny_temperature",
         "unknown_model", "ssrf", "bad_json", "unsupported_param", "slowloris", "disconnect", "stalled_body"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", metavar="CMD", required=True,
                    help="server command with {port}; the script adds the soak's limits (see --server-flags)")
    ap.add_argument("--server-flags", default="--header-timeout 5 --body-timeout 10 --max-queue 1024",
                    help="flags appended to --start (the slowloris and stalled-body checks wait on these timeouts)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--hostile-every", type=int, default=10, help="one request in N is hostile")
    ap.add_argument("--rss-limit-mib", type=float, default=256.0)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()
    header_timeout = 5.0
    flags = shlex.split(args.server_flags)
    if "--header-timeout" in flags:
        header_timeout = float(flags[flags.index("--header-timeout") + 1])

    host, port = "127.0.0.1", free_port()
    cmd = shlex.split(args.start.replace("{port}", str(port))) + flags
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stats = Stats()
    peak = {"rss": 0, "samples": 0}
    stop = threading.Event()
    try:
        if not wait_healthy(host, port, 120):
            sys.exit("server did not become healthy (exit code %s)" % server.poll())
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/v1/models")
        model = json.loads(conn.getresponse().read())["data"][0]["id"]
        good_image = data_uri(png(64, 64, (200, 30, 30)))
        idle_rss = rss_kib(server.pid) or 0

        def sampler():
            while not stop.is_set():
                r = rss_kib(server.pid)
                if r:
                    peak["rss"] = max(peak["rss"], r)
                    peak["samples"] += 1
                stop.wait(0.5)

        counter = {"i": 0}
        counter_lock = threading.Lock()
        deadline = time.monotonic() + args.seconds

        def worker():
            while time.monotonic() < deadline:
                with counter_lock:
                    i = counter["i"]
                    counter["i"] += 1
                if i % args.hostile_every == args.hostile_every - 1:
                    kind = KINDS[(i // args.hostile_every) % len(KINDS)]
                    try:
                        ok, detail = hostile_request(kind, host, port, model, good_image, header_timeout)
                    except (OSError, http.client.HTTPException) as e:
                        ok, detail = False, "%s: %s" % (type(e).__name__, e)
                    stats.hostile_result(kind, ok, detail)
                    continue
                body = chat(model, [{"type": "text", "text": "Describe picture %d." % i},
                                    {"type": "image_url", "image_url": {"url": good_image}}])
                t0 = time.monotonic()
                try:
                    status, payload = post(host, port, body)
                except (OSError, http.client.HTTPException) as e:
                    status, payload = None, str(e).encode()
                dt = time.monotonic() - t0
                ok = False
                if status == 200:
                    try:
                        ok = bool(json.loads(payload)["choices"][0]["message"]["content"])
                    except (ValueError, KeyError, IndexError, TypeError):
                        ok = False
                with stats.lock:
                    if ok:
                        stats.good_ok += 1
                        stats.latencies.append(dt)
                    else:
                        stats.good_failed += 1
                        if len(stats.failures) < 50:
                            stats.failures.append("good %d: %s %s" % (i, status, payload[:160]))

        threading.Thread(target=sampler, daemon=True).start()
        t0 = time.monotonic()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.seconds + 300)
        wall = time.monotonic() - t0
        stop.set()
        health = http.client.HTTPConnection(host, port, timeout=10)
        health.request("GET", "/health")
        healthy = health.getresponse().status == 200
    finally:
        stop.set()
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()

    lat = stats.latencies
    hostile_ok = sum(v[0] for v in stats.hostile.values())
    hostile_bad = sum(v[1] for v in stats.hostile.values())
    result = {
        "clients": args.clients, "seconds": round(wall, 1), "good_ok": stats.good_ok,
        "good_failed": stats.good_failed, "hostile_expected": hostile_ok, "hostile_unexpected": hostile_bad,
        "hostile_by_kind": stats.hostile, "good_req_per_s": round(stats.good_ok / wall, 2) if wall else 0,
        "p50_ms": round(percentile(lat, 50) * 1000, 1) if lat else None,
        "p99_ms": round(percentile(lat, 99) * 1000, 1) if lat else None,
        "idle_rss_mib": round(idle_rss / 1024, 1), "peak_rss_mib": round(peak["rss"] / 1024, 1),
        "rss_limit_mib": args.rss_limit_mib, "healthy_after": healthy,
    }
    print(json.dumps(result, indent=1))
    for f in stats.failures[:20]:
        print("  " + f)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    failed = (stats.good_failed > 0 or hostile_bad > 0 or peak["rss"] / 1024 > args.rss_limit_mib
              or not healthy or stats.good_ok == 0)
    print("soak %s" % ("FAILED" if failed else "passed"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
