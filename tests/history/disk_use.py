#!/usr/bin/env python3
"""How much disk a day (and so a year) of the demo household takes in
InfluxDB with the recipe's retention policies. Standard library only.

Input: the points tests/history.rs wrote (E2M_HISTORY_DUMP=<file>), a few
minutes of the demo at its real rates (packs every second, inverter, plugs
and balancer every 5 s, bridge every 60 s), as "<rp>\\t<line protocol>".
Each series' recorded sequence is repeated, with its own spacing, over
one UTC day, written to a private influxd (temp dir, free loopback ports),
the continuous queries' SELECTs are run over that day, the cache is
flushed to TSM files, and the size of each retention policy's directory
is printed with the extrapolation to 30 days of raw data and a year of
5-minute means and events.

    E2M_TEST_HISTORY=1 E2M_HISTORY_DUMP=/tmp/points.txt cargo test --test history
    python3 tests/history/disk_use.py /tmp/points.txt
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[2]
DAY_NS = 86_400 * 10**9


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dir_size(path):
    # Allocated blocks, not file sizes: the series file is preallocated
    # and sparse (32 MiB long, a few KiB on disk).
    return sum(f.stat().st_blocks * 512 for f in pathlib.Path(path).rglob("*") if f.is_file())


def main():
    points = pathlib.Path(sys.argv[1]).read_text().splitlines()
    series = {}
    for row in points:
        rp, line = row.split("\t", 1)
        head, rest = line.split(" ", 1)
        fields, ts = rest.rsplit(" ", 1)
        series.setdefault((rp, head), []).append((int(ts), fields))

    tmp = tempfile.mkdtemp(prefix="e2m-disk-")
    port, rpc = free_port(), free_port()
    conf = pathlib.Path(tmp, "influxdb.conf")
    # Flush the in-memory cache to TSM files soon after the last write and
    # compact them fully, so the size measured is the steady state, not WAL.
    conf.write_text(
        f'reporting-disabled = true\nbind-address = "127.0.0.1:{rpc}"\n'
        f'[meta]\n  dir = "{tmp}/meta"\n'
        f'[data]\n  dir = "{tmp}/data"\n  wal-dir = "{tmp}/wal"\n  query-log-enabled = false\n'
        '  cache-snapshot-write-cold-duration = "5s"\n  compact-full-write-cold-duration = "10s"\n'
        f'[http]\n  bind-address = "127.0.0.1:{port}"\n  log-enabled = false\n'
        "[continuous_queries]\n  enabled = false\n"
    )
    log = open(pathlib.Path(tmp, "influxd.log"), "w")
    influxd = subprocess.Popen(["influxd", "-config", str(conf)], stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/ping")
                break
            except OSError:
                time.sleep(0.2)
        env = dict(os.environ, INFLUX_HOST="127.0.0.1", INFLUX_PORT=str(port))
        subprocess.run(["sh", str(REPO / "influxdb/provision.sh")], env=env, check=True,
                       stdout=subprocess.DEVNULL)

        # Yesterday, 00:00 to 24:00 UTC: one shard of "raw" (1-day shards).
        day0 = (time.time_ns() // DAY_NS - 1) * DAY_NS
        written = 0
        started = time.time()
        for (rp, head), pts in series.items():
            t_first = pts[0][0]
            span = pts[-1][0] - t_first
            # Repeat the recorded sequence back to back; a single point
            # (the alerts document, the bridge) keeps its observed rate
            # of at most one a minute.
            period = span + (pts[1][0] - pts[0][0] if len(pts) > 1 else 60 * 10**9)
            batch = []
            k = 0
            while True:
                offset = day0 + k * period - t_first
                if t_first + offset >= day0 + DAY_NS:
                    break
                for ts, fields in pts:
                    t = ts + offset
                    if t < day0 + DAY_NS:
                        batch.append(f"{head} {fields} {t}")
                if len(batch) >= 5000:
                    post(base, rp, batch)
                    written += len(batch)
                    batch = []
                k += 1
            if batch:
                post(base, rp, batch)
                written += len(batch)
        write_s = time.time() - started

        # The continuous queries over the day, as the server would run them.
        cqs = query(base, "SHOW CONTINUOUS QUERIES")
        for s in cqs["results"][0]["series"]:
            if s["name"] != "energy2mqtt":
                continue
            for _, text in s["values"]:
                select = text.split(" BEGIN ", 1)[1].rsplit(" END", 1)[0]
                head, group = select.split(" GROUP BY ", 1)
                query(base, f"{head} WHERE time >= {day0} AND time < {day0 + DAY_NS} GROUP BY {group}")

        # Wait until the WAL is empty and TSM sizes stop changing.
        data = pathlib.Path(tmp, "data", "energy2mqtt")
        last = None
        for _ in range(60):
            time.sleep(5)
            sizes = {rp.name: dir_size(rp) for rp in data.iterdir()}
            wal = dir_size(pathlib.Path(tmp, "wal"))
            if sizes == last and wal < 64 * 1024:
                break
            last = sizes
        sizes = {rp.name: dir_size(rp) for rp in data.iterdir()}
        wal = dir_size(pathlib.Path(tmp, "wal"))
    finally:
        influxd.terminate()
        influxd.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    mib = 1024 * 1024
    raw, five, events = sizes.get("raw", 0), sizes.get("five_min", 0), sizes.get("events", 0)
    print(f"recorded points: {len(points)} in {len(series)} series; one day: {written} points "
          f"(written in {write_s:.0f} s); WAL left {wal} B")
    for rp in sorted(sizes):
        print(f"  {rp:9} one day: {sizes[rp] / mib:8.2f} MiB")
    print(f"raw, 30 days kept:        {30 * raw / mib:8.1f} MiB")
    print(f"five_min, per year:       {365 * five / mib:8.1f} MiB")
    print(f"events, per year:         {365 * events / mib:8.1f} MiB (demo event rate, see HISTORY.md)")
    print(f"first year on disk:       {(30 * raw + 365 * (five + events)) / mib:8.1f} MiB")
    print(json.dumps({"day_bytes": sizes, "points_per_day": written}))


def post(base, rp, lines):
    body = "\n".join(lines).encode()
    req = urllib.request.Request(f"{base}/write?db=energy2mqtt&rp={rp}&precision=ns", data=body)
    with urllib.request.urlopen(req) as r:
        assert r.status == 204, r.status


def query(base, q):
    url = f"{base}/query?" + urllib.parse.urlencode({"db": "energy2mqtt", "q": q})
    with urllib.request.urlopen(url) as r:
        out = json.load(r)
    err = out["results"][0].get("error")
    assert not err, f"{q}: {err}"
    return out


if __name__ == "__main__":
    main()
