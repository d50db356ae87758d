#!/usr/bin/env python3
"""What the alarm path of each slow `bench rules` sample waited behind.

    RUST_LOG=warn,twinhub_server::store::turns=trace \\
        target/release/twinhub bench rules 2> turns.log
    python3 benches/slow_samples.py turns.log

With RUST_LOG set, `bench rules` logs each sample over 10 ms (`SLOW sample
sent, acked A ms, alarm L ms`, stamped with the time its POST was sent).
For each one acknowledged in 5 ms or more this prints the writer's turns
and group commits (statement and fsync times) logged between its 200 and
its alarm, in ms after the send. Not part of the test suite.
"""

import datetime
import re
import sys


def stamp(text):
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def main(path):
    rows, slow = [], []
    for line in open(path, errors="replace"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        m = re.match(r"(\S+?)Z\s+TRACE\s+\S+: (turn|group) (.*)", line)
        if m:
            t = stamp(m.group(1))
            if t is not None:
                rows.append((t, m.group(2), dict(re.findall(r'(\w+)="?([\w.]+)"?', m.group(3)))))
            continue
        m = re.match(r"(\S+?)Z SLOW sample sent, acked ([\d.]+) ms, alarm ([\d.]+)", line)
        if m and stamp(m.group(1)) is not None:
            slow.append((stamp(m.group(1)), float(m.group(2)), float(m.group(3))))
    for sent, acked, alarm in slow:
        if acked < 5:
            continue
        print(f"--- sample: 200 after {acked} ms, alarm after {alarm} ms")
        for t, kind, kv in rows:
            if sent + acked / 1e3 - 0.0005 <= t <= sent + alarm / 1e3 + 0.001:
                print(f"  {(t - sent) * 1e3:7.2f} {kind} {kv}")


if __name__ == "__main__":
    main(sys.argv[1])
