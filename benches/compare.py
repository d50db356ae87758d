#!/usr/bin/env python3
"""Ingest and disk, twinhub beside InfluxDB 1.x and VictoriaMetrics, with the
same client: the way a user compares databases.

    apt-get install influxdb victoria-metrics      # the peers, from Debian
    cargo build --release
    python3 benches/compare.py [--series 1000 --points 2000 --threads 4 --settle 30]

Every server runs on a free loopback port with its data in a temporary
directory. The series are the same sensor-like values for all (a level, a
slow sine and noise, 3 decimals, 1 s apart). Bodies are generated before
the clock starts; 4 threads send them over keep-alive connections.
twinhub gets one JSON array per series on POST /api/v1/devices/{id}/telemetry
(durable when answered), and in the `twinhub-lp` row the peers' very line
protocol bodies on its /write endpoint; the peers get line protocol in batches of 5,000
(VictoriaMetrics answers before its data is on disk). After the run each
server is flushed and left to settle, then its data directory is measured
with `du`. Not part of the test suite (.ci/run): it needs minutes and the
peers' packages.
"""

import argparse
import base64
import contextlib
import http.client
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0_MS = 1_700_000_000_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def du(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def series_values(seed, n):
    rnd = random.Random(seed)
    level = 20 + seed % 50
    return [round(level + math.sin(i / 600) * 2 + rnd.uniform(-0.1, 0.1), 3) for i in range(n)]


def wait_http(port, path="/", timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            c.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


@contextlib.contextmanager
def serving(cmd, data_dir, env=None):
    """A server process whose data directory is removed with it."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield p
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def request(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def send_all(port, jobs, threads):
    """jobs: (path, body bytes, headers); returns seconds."""
    queue = list(jobs)
    lock = threading.Lock()
    errors = []

    def worker():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if not queue:
                    break
                path, body, headers = queue.pop()
            c.request("POST", path, body=body, headers=headers)
            r = c.getresponse()
            r.read()
            if r.status >= 300:
                errors.append(r.status)
        c.close()

    t = time.time()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return time.time() - t


def line_protocol_jobs(data, path, batch=5000):
    lines = []
    for s, vals in enumerate(data):
        for i, v in enumerate(vals):
            lines.append(f"sensor,id=s{s} value={v} {T0_MS + i * 1000}")
    jobs = []
    for i in range(0, len(lines), batch):
        jobs.append((path, ("\n".join(lines[i:i + batch]) + "\n").encode(), {}))
    return jobs


@contextlib.contextmanager
def twinhub_server(name, **env):
    """The release `twinhub serve` on free loopback ports, its data in a
    temporary directory: yields (http port, admin access token, data dir)."""
    exe = os.path.join(ROOT, "target", "release", "twinhub")
    d = tempfile.mkdtemp(prefix=f"{name}-twinhub-")
    password = f"{name}-password-1"
    env = dict(os.environ, TWINHUB_ADMIN_PASSWORD=password, **env)
    with serving([exe, "serve", "--data-dir", d, "--http-listen", "127.0.0.1:0",
                  "--mqtt-listen", "127.0.0.1:0", "--log-level", "warn"], d, env):
        ports = os.path.join(d, "ports.json")
        deadline = time.time() + 30
        while not os.path.exists(ports) and time.time() < deadline:
            time.sleep(0.05)
        port = int(json.load(open(ports))["http"].rsplit(":", 1)[1])
        _, body = request(port, "POST", "/api/v1/auth/login",
                          json.dumps({"username": "admin", "password": password}),
                          {"content-type": "application/json"})
        yield port, json.loads(body)["access_token"], d


def run_twinhub(data, args, line_protocol=False):
    # "A flush": the head is compacted 5 s after its oldest point (or at
    # 2M points), where the default waits up to 10 minutes.
    with twinhub_server("cmp", TWINHUB_STORE_FLUSH_INTERVAL="5s") as (port, token, d):
        jobs = []
        for s, vals in enumerate(data):
            st, body = request(port, "POST", "/api/v1/devices", json.dumps({"id": f"s{s}"}),
                               {"content-type": "application/json", "authorization": f"Bearer {token}"})
            if line_protocol:
                continue
            key = json.loads(body)["key"]
            auth = base64.b64encode(f"s{s}:{key}".encode()).decode()
            msgs = ",".join(f'{{"ts":{T0_MS + i * 1000},"value":{v}}}' for i, v in enumerate(vals))
            jobs.append((f"/api/v1/devices/s{s}/telemetry", f"[{msgs}]".encode(),
                         {"content-type": "application/json", "authorization": f"Basic {auth}"}))
        if line_protocol:
            # The very bodies the peers get; the `id` tag names the twin.
            st, body = request(port, "POST", "/api/v1/apikeys",
                               json.dumps({"name": "compare", "permissions": ["telemetry:write"]}),
                               {"content-type": "application/json", "authorization": f"Bearer {token}"})
            key = json.loads(body)["key"]
            jobs = [(path, lines, {"authorization": f"Token {key}"}) for path, lines, _ in
                    line_protocol_jobs(data, "/write?db=bench&precision=ms&twin_tag=id")]
        secs = send_all(port, jobs, args.threads)
        # Compaction runs at 2M points or on its interval: wait for the head to empty.
        deadline = time.time() + 900
        while time.time() < deadline:
            st, body = request(port, "GET", "/metrics")
            head = [l for l in body.decode().splitlines() if l.startswith("twinhub_store_head_points")]
            if head and float(head[0].split()[-1]) == 0:
                break
            time.sleep(0.5)
        time.sleep(args.settle)
        return secs, du(d)


def run_influxdb(data, args):
    d = tempfile.mkdtemp(prefix="cmp-influx-")
    port, rpc = free_port(), free_port()
    conf = os.path.join(d, "influxdb.conf")
    with open(conf, "w") as f:
        f.write(f"""bind-address = "127.0.0.1:{rpc}"
reporting-disabled = true
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
[monitor]
  store-enabled = false
""")
    with serving(["influxd", "-config", conf], d):
        wait_http(port, "/ping")
        request(port, "POST", "/query?q=CREATE%20DATABASE%20bench")
        jobs = line_protocol_jobs(data, "/write?db=bench&precision=ms")
        secs = send_all(port, jobs, args.threads)
        # InfluxDB snapshots its cache to TSM files when idle (cache-snapshot-write-cold-duration).
        time.sleep(args.settle)
        return secs, du(os.path.join(d, "data")) + du(os.path.join(d, "wal")) + du(os.path.join(d, "meta"))


def run_victoria(data, args):
    d = tempfile.mkdtemp(prefix="cmp-vm-")
    port = free_port()
    # The series start in 2023: the default retention (1 month) would drop them.
    with serving(["victoria-metrics", f"-storageDataPath={d}", f"-httpListenAddr=127.0.0.1:{port}",
                  "-retentionPeriod=100y", "-loggerLevel=ERROR"], d):
        wait_http(port, "/health")
        jobs = line_protocol_jobs(data, "/write")
        secs = send_all(port, jobs, args.threads)
        request(port, "GET", "/internal/force_flush")
        time.sleep(args.settle)
        return secs, du(d)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--settle", type=int, default=30, help="seconds after the flush before du")
    ap.add_argument("--only", choices=["twinhub", "twinhub-lp", "influxdb", "victoria-metrics"], action="append")
    args = ap.parse_args()
    data = [series_values(s, args.points) for s in range(args.series)]
    total = args.series * args.points
    runs = [("twinhub", run_twinhub),
            ("twinhub-lp", lambda d, a: run_twinhub(d, a, line_protocol=True)),
            ("influxdb", run_influxdb), ("victoria-metrics", run_victoria)]
    print(f"{args.series} series x {args.points} points, {args.threads} client threads, settle {args.settle} s")
    print(f"{'':18} {'points/s':>12} {'bytes/point on disk':>20}")
    for name, fn in runs:
        if args.only and name not in args.only:
            continue
        if not name.startswith("twinhub") and shutil.which(name.replace("influxdb", "influxd")) is None:
            print(f"{name:18} not installed (apt-get install {name})")
            continue
        secs, disk = fn(data, args)
        print(f"{name:18} {total / secs:>12,.0f} {disk / total:>20.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
