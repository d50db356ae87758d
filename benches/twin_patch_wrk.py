#!/usr/bin/env python3
"""Durable twin writes measured the way issue #14 states them: wrk, 16
keep-alive connections, `PATCH /api/v1/twins/{id}` with a JSON Patch on one
property of one of 1,000 reactor twins (and the same for GET, for scale).

    apt-get install wrk
    cargo build --release
    python3 benches/twin_patch_wrk.py [--twins 1000 --connections 16 --seconds 20]

A `twinhub serve` (release build, default settings: every PATCH is a
durable commit with its audit entry) on free loopback ports with its data
in a temporary directory. wrk runs with 2 threads beside it on the same
box, so the figure is what the box does with its load generator on it.
Not part of the test suite.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, request, twinhub_server  # noqa: E402

LUA = """
local n = 0
request = function()
  n = n + 1
  local id = (n * 7919) %% %(twins)d
  local body = '[{"op":"replace","path":"/volume","value":' .. (n %% 100) / 10 .. '}]'
  return wrk.format("%(method)s", "/api/v1/twins/reactor-" .. id, nil, %(body)s)
end
response = function(status, headers, body)
  if status ~= 200 and status ~= 204 then
    io.stderr:write("status " .. status .. "\\n")
  end
end
"""


def wrk(port, token, method, args):
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(LUA % {"twins": args.twins, "method": method,
                        "body": "body" if method == "PATCH" else "nil"})
    script.close()
    out = subprocess.run(
        ["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "-s", script.name,
         "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json-patch+json",
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True)
    os.unlink(script.name)
    if "status " in out.stderr:
        raise RuntimeError(f"{method}: some requests failed: {out.stderr[:300]}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out.stdout)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return rps, float(p99.group(1)) * scale


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--twins", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    with twinhub_server("patch", TWINHUB_RATE_LIMITS_REQUESTS_PER_SECOND="0.0") as (port, token, _):
        auth = {"content-type": "application/json", "authorization": f"Bearer {token}"}
        with open(os.path.join(ROOT, "ontologies", "process-plant.json"), "rb") as f:
            st, body = request(port, "POST", "/api/v1/models", f.read(), auth)
        if st >= 300:
            raise RuntimeError(f"model upload: {st} {body[:200]!r}")
        for i in range(args.twins):
            st, body = request(port, "PUT", f"/api/v1/twins/reactor-{i}", json.dumps(
                {"$metadata": {"$model": "dtmi:twinhub:plant:Reactor;1"}, "volume": 1.0}), auth)
            if st >= 300:
                raise RuntimeError(f"twin create: {st} {body[:200]!r}")
        print(f"{args.twins} reactor twins, wrk -t2 -c{args.connections} -d{args.seconds}s")
        for method in ("GET", "PATCH"):
            rps, p99 = wrk(port, token, method, args)
            print(f"  {method:6} {rps:>10,.0f} req/s   p99 {p99:6.2f} ms", flush=True)


if __name__ == "__main__":
    sys.exit(main())
