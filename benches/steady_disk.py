#!/usr/bin/env python3
"""Disk footprint of a steady stream, as a user sees it with `du`.

    cargo build --release
    python3 benches/steady_disk.py [--series 1000 --minutes 60 --settle 30]

A `twinhub serve` (release build, default settings: the head is flushed
every 10 minutes or at 2M points) on free loopback ports with its data in
a temporary directory. Every second, one line-protocol body with one
sensor-like value per series (a level, a slow sine and noise, 3 decimals,
the same values as benches/compare.py) goes to /write with an API key,
in real time: the flushes, merges and window closes happen as they would
in production. Every 5 minutes the data directory's `du` is printed; after
the stream the script waits for the head to be flushed (compaction has
run), lets the disk settle, and prints `du` beside the compressed chunk
bytes and where the rest of the file goes (SQLite's dbstat).

Takes --minutes plus up to 10 minutes; not part of the test suite.
"""

import argparse
import json
import math
import os
import random
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import du, request, twinhub_server  # noqa: E402


def metric(port, name):
    _, body = request(port, "GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--settle", type=int, default=30, help="seconds after the last flush before du")
    args = ap.parse_args()
    rnd = [random.Random(s) for s in range(args.series)]
    levels = [20 + s % 50 for s in range(args.series)]
    with twinhub_server("steady") as (port, token, d):
        for s in range(args.series):
            request(port, "POST", "/api/v1/devices", json.dumps({"id": f"s{s}"}),
                    {"content-type": "application/json", "authorization": f"Bearer {token}"})
        _, body = request(port, "POST", "/api/v1/apikeys",
                          json.dumps({"name": "steady", "permissions": ["telemetry:write"]}),
                          {"content-type": "application/json", "authorization": f"Bearer {token}"})
        key = json.loads(body)["key"]
        headers = {"authorization": f"Token {key}"}
        seconds = int(args.minutes * 60)
        start = time.time()
        points = 0
        print(f"{args.series} series at 1 Hz for {args.minutes:g} min, data in {d}", flush=True)
        for i in range(seconds):
            now_ms = int(time.time() * 1000)
            lines = "".join(
                f"sensor,id=s{s} value={round(levels[s] + math.sin(i / 600) * 2 + rnd[s].uniform(-0.1, 0.1), 3)} {now_ms}\n"
                for s in range(args.series))
            st, body = request(port, "POST", "/write?db=steady&precision=ms&twin_tag=id", lines.encode(), headers)
            if st >= 300:
                raise RuntimeError(f"/write answered {st}: {body[:200]!r}")
            points += args.series
            if (i + 1) % 300 == 0:
                print(f"  {(i + 1) / 60:5.0f} min  {points:>10,} points  du {du(d) / points:5.2f} B/pt"
                      f"  head {metric(port, 'twinhub_store_head_points'):>9,.0f} points", flush=True)
            time.sleep(max(0.0, start + i + 1 - time.time()))
        # "Once compaction has run": the head flushed into chunks.
        deadline = time.time() + 900
        while metric(port, "twinhub_store_head_points") > 0 and time.time() < deadline:
            time.sleep(1)
        time.sleep(args.settle)
        disk = du(d)
        db = os.path.join(d, "twinhub.db")
        # The server still runs (WAL mode): a read-only look at the file.
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        chunks = c.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM chunks").fetchone()[0]
        tables = c.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 6").fetchall()
        free = c.execute("PRAGMA freelist_count").fetchone()[0] * c.execute("PRAGMA page_size").fetchone()[0]
        c.close()
        print(f"after the stream and a flush, {args.settle} s settle:")
        print(f"  du of the data directory     {disk / points:6.2f} bytes/point")
        print(f"  compressed chunk bytes       {chunks / points:6.2f} bytes/point")
        print(f"  du / chunks                  {disk / max(chunks, 1):6.2f}  (target <= 1.5)")
        print("  largest parts of the file: " + ", ".join(f"{n} {b / 1e6:.2f} MB" for n, b in tables)
              + f", free pages {free / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
