#!/usr/bin/env python3
"""What an acknowledgement waits behind: the store writer's timeline.

    RUST_LOG=warn,twinhub_server::store::turns=trace \\
        target/release/twinhub bench rules 2> turns.log
    python3 benches/writer_turns.py turns.log [--from S --to S]

The writer logs each turn it takes (`turn`: a data or urgent group
commit, a compactor control, a background step — wal, install, cut or
reclaim — with its duration) and
each group's statement and commit (fsync) times (`group`). This prints,
per second since the first turn, how many turns of each kind ran and how
much of the writer's time they took; then, for the window --from/--to
(seconds), the distributions of data-group, statement and commit times
and the wait a request arriving at a random moment would have had until
its own group committed (the writer-side part of POST → 200). Not part
of the test suite.
"""

import argparse
import bisect
import collections
import datetime
import random
import re


def parse(path):
    rows, group = [], None
    for line in open(path, errors="replace"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        m = re.match(r"(\S+)Z\s+TRACE\s+\S+: (turn|group) (.*)", line)
        if not m:
            continue
        end = datetime.datetime.fromisoformat(m.group(1)).timestamp()
        kv = dict(re.findall(r'(\w+)="?([\w.]+)"?', m.group(3)))
        if m.group(2) == "group":
            group = kv
            continue
        kind, us = kv["kind"], int(kv["us"])
        g = group if kind in ("data", "urgent") else None
        stmt = int(g["stmt_us"]) / 1e3 if g else 0.0
        commit = int(g["commit_us"]) / 1e3 if g else 0.0
        rows.append((end - us / 1e6, end, kind, stmt, commit))
        if g:
            group = None
    rows.sort()
    return rows


def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def ack_waits(rows, samples=200_000):
    """A request arriving at t joins the first data group that starts
    after it (after the turn in progress and any that follow it without a
    gap); arriving while the writer idles, it starts a group at once (as
    long as the next data group took)."""
    starts = [r[0] for r in rows]
    data = [i for i, r in enumerate(rows) if r[2] == "data"]
    data_starts = [rows[i][0] for i in data]

    def next_data_len(t):
        i = data[min(bisect.bisect_right(data_starts, t), len(data) - 1)]
        return (rows[i][1] - rows[i][0]) * 1e3

    waits = []
    for _ in range(samples):
        t = random.uniform(rows[0][0], rows[-1][0])
        k = bisect.bisect_right(starts, t) - 1
        if k < 0 or rows[k][1] <= t:
            waits.append(next_data_len(t))
            continue
        end = rows[k][1]
        while True:
            k += 1
            if k >= len(rows) or rows[k][0] - end > 50e-6:
                waits.append((end - t) * 1e3 + next_data_len(t))
                break
            if rows[k][2] == "data":
                waits.append((rows[k][1] - t) * 1e3)
                break
            end = rows[k][1]
    return waits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--from", dest="lo", type=float, default=0)
    ap.add_argument("--to", dest="hi", type=float, default=1e9)
    a = ap.parse_args()
    rows = parse(a.log)
    if not rows:
        raise SystemExit("no writer turns in the log (RUST_LOG=twinhub_server::store::turns=trace)")
    t0 = rows[0][0]
    per = collections.defaultdict(collections.Counter)
    for r in rows:
        s = int(r[0] - t0)
        per[s][r[2]] += 1
        per[s][r[2] + "_ms"] += (r[1] - r[0]) * 1e3
    print("second  turns/ms of writer time by kind")
    kinds = sorted({r[2] for r in rows}, key=lambda k: (k not in ("data", "urgent"), k))
    for s in sorted(per):
        c = per[s]
        print(f"{s:6}  " + "  ".join(f"{k} {c[k]}/{c[k + '_ms']:.0f}" for k in kinds if c[k]))
    win = [r for r in rows if a.lo <= r[0] - t0 < a.hi]
    if not win:
        return
    data = [r for r in win if r[2] == "data"]
    print(f"\nseconds {a.lo:g}–{min(a.hi, win[-1][1] - t0):.0f}:")
    for name, xs in (
        ("data group (ms)", [(r[1] - r[0]) * 1e3 for r in data]),
        ("  statements", [r[3] for r in data]),
        ("  commit (fsync)", [r[4] for r in data]),
        ("urgent group", [(r[1] - r[0]) * 1e3 for r in win if r[2] == "urgent"]),
        ("control", [(r[1] - r[0]) * 1e3 for r in win if r[2] == "control"]),
        ("ack wait, modelled", ack_waits(win)),
    ):
        if xs:
            print(f"{name:20} p50 {q(xs, .5):6.2f}  p90 {q(xs, .9):6.2f}  p99 {q(xs, .99):6.2f}  max {max(xs):6.1f}")


if __name__ == "__main__":
    main()
