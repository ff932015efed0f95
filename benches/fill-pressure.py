#!/usr/bin/env python3
"""Cache fills under pressure, as an attacker and an unlucky operator would
try them, against one sluice binary (one worker):

  slow-clients  N clients, each on its own cacheable URL of SIZE bytes,
                read the response head and then nothing: RSS growth of
                sluice (fills are bounded by [cache] max_fill_memory).
  slow-leader   a client reading 10 KB/s leads a miss on a SIZE object;
                a second client asks for it 0.5 s later: its time to the
                whole body (it must not wait on the leader).
  fan-out       N clients (curl) ask for one FAN_MB object at once: origin
                requests, sluice's peak RSS growth, and whether every
                client got it whole.

Usage: benches/fill-pressure.py SLUICE_BIN [N] [SIZE_MB] [FAN_MB]
Prints one line per scenario. Python 3 only; the origin runs in-process.
"""
import http.server
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

SLUICE = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 100
SIZE = int(float(sys.argv[3]) * 1e6) if len(sys.argv) > 3 else 5_000_000
FAN = int(float(sys.argv[4]) * 2**20) if len(sys.argv) > 4 else 200 * 2**20
BODY = b"x" * SIZE
FAN_BODY = b"f" * FAN
ORIGIN_HITS = {}


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        ORIGIN_HITS[self.path] = ORIGIN_HITS.get(self.path, 0) + 1
        body = FAN_BODY if self.path.startswith("/fan") else BODY
        self.send_response(200)
        self.send_header("Cache-Control", "max-age=600")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def start_sluice(origin_port, cache='max_size = "64MiB"'):
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "sluice.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[server]
workers = 1
[[listener]]
name = "http"
listen = "127.0.0.1:0"
[[route]]
pool = "app"
cache = true
[pool.app]
servers = [ {{ addr = "127.0.0.1:{origin_port}" }} ]
[cache]
{cache}
lock_timeout = "5s"
""")
    p = subprocess.Popen([SLUICE, "--config", cfg], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    port = None
    for line in p.stdout:
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if "listening" in line and m:
            port = int(m.group(1))
        if "ready" in line:
            break
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p, port


def request(port, path, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
    return s


def read_head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.decode(errors="replace"), rest


def main():
    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    p, port = start_sluice(origin.server_address[1])
    try:
        base = rss(p.pid)
        socks, budget = [], 0
        for i in range(N):
            s = request(port, f"/obj/{i}", rcvbuf=16384)
            head, _ = read_head(s)
            budget += "fill-budget" in head.lower()
            socks.append(s)
        time.sleep(2)
        grown = rss(p.pid) - base
        print(f"slow-clients: {N} x {SIZE / 1e6:.1f} MB, RSS +{grown / 2**20:.0f} MiB "
              f"({grown / N / 2**20:.2f} MiB each), {budget} streamed uncached (fill-budget)")
        for s in socks:
            s.close()
        time.sleep(1)

        leader = request(port, "/slow", rcvbuf=16384)
        stop = threading.Event()

        def trickle():
            while not stop.is_set():
                try:
                    if not leader.recv(1000):
                        return
                except OSError:
                    return
                time.sleep(0.1)  # 10 KB/s

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(0.5)
        started = time.monotonic()
        second = request(port, "/slow")
        head, got = read_head(second)
        got = len(got)
        while got < SIZE:
            chunk = second.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        took = time.monotonic() - started
        status = re.search(r"cache-status: ([^\r\n]*)", head, re.I)
        print(f"slow-leader: second client had {got / 1e6:.1f} MB after {took * 1000:.0f} ms "
              f"({status.group(1) if status else '-'})")
        stop.set()
        leader.close()
        second.close()
    finally:
        p.terminate()
        p.wait()

    mib = FAN // 2**20
    p, port = start_sluice(origin.server_address[1],
                           f'max_size = "{2 * mib}MiB"\nmax_object_size = "{mib}MiB"')
    try:
        base = peak = rss(p.pid)
        url = f"http://127.0.0.1:{port}/fan"
        curls = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}",
                                  "-H", "Host: example.com", url],
                                  stdout=subprocess.PIPE, text=True) for _ in range(N)]
        while any(c.poll() is None for c in curls):
            peak = max(peak, rss(p.pid))
            time.sleep(0.05)
        whole = sum(int(c.stdout.read() or 0) == FAN for c in curls)
        print(f"fan-out: {N} clients x {mib} MiB, {ORIGIN_HITS.get('/fan', 0)} origin request(s), "
              f"{whole}/{N} whole, peak RSS +{(peak - base) / 2**20:.0f} MiB "
              f"({(peak - base) / FAN:.2f} copies)")
    finally:
        p.terminate()
        p.wait()
        origin.shutdown()


main()
