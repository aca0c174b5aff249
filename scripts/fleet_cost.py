#!/usr/bin/env python3
"""What `[cluster]` costs per new connection, measured with `tlb bench`
against one `tlb serve` with and without `[cluster]` (same build, same
PKI, same upstreams; a real redis-server on loopback), alternated per round:

  latency  `tlb bench --mode handshake --connections C` (closed loop, a new
           mTLS connection per exchange): handshake time, and the time from
           the client's finished handshake to the first echoed byte (which
           holds the server's gate, the Redis round trip, the upstream
           connect and the echo), p50/p99/p99.9;
  cpu      tlb serve's CPU (utime+stime from /proc) per connection in that
           run, and redis-server's;
  bytes    `--mode stream` on 1 established connection: tlb serve's CPU per
           GiB echoed (the fleet is only asked at admission, so this should
           not move).

Pinning: tlb serve on CPU 0 (--threads 1); loader, upstreams and
redis-server on CPU 1. Run it on a quiet machine: other load moves
latency percentiles.

Usage: scripts/fleet_cost.py [--tlb target/dist/tlb] [--rounds 3] [--duration 10]
           [--connections 1] [--timeout 20ms]
Needs: Linux, taskset, redis-server.
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (TLB, Redis, apply_variant, bench, cpu_during, free_port, log,  # noqa: E402
                      start_upstreams, stop, wait_port, write_tlb_config)


def serve(binary, cfg, port, work, tag):
    errlog = open(f"{work}/serve-{tag}.log", "w")
    srv = subprocess.Popen(["taskset", "-c", "0", binary, "serve", "--config", cfg, "--threads", "1"],
                           stdout=errlog, stderr=subprocess.STDOUT)
    wait_port(port, deadline=30)
    return srv, errlog


def one_round(args, work, variant, cfg, port, redis, tag):
    srv, errlog = serve(args.tlb, cfg, port, work, tag)
    try:
        # Warm-up: first handshakes, Redis link up and scripts loaded.
        bench(work, port, "handshake", 1, 1, loader=args.tlb)
        r0 = redis.cpu()
        cpu, hs = cpu_during(srv.pid, lambda: bench(work, port, "handshake", args.connections, args.duration,
                                                    loader=args.tlb))
        redis_cpu = redis.cpu() - r0
        n = max(1, hs["handshakes"])
        scpu, st = cpu_during(srv.pid, lambda: bench(work, port, "stream", 1, max(3, args.duration // 2),
                                                     extra=["--size", "65536"], loader=args.tlb))
        gib = st["bytes_echoed"] / 2**30
        errors = hs["errors_total"] + st["errors_total"]
        warn = [line.strip() for line in open(f"{work}/serve-{tag}.log") if "WARN" in line or "ERROR" in line]
        if errors or warn:
            log(f"  warning ({tag}): bench errors {hs['errors']} {st['errors']}; server log: {warn[:3]}")
        return {
            "hs": hs["handshake_latency"], "first": hs["request_latency"], "n": hs["handshakes"],
            "cpu_us": cpu / n * 1e6, "redis_us": redis_cpu / n * 1e6 if variant == "cluster" else 0.0,
            "gib_cpu_s": scpu / gib if gib > 0 else float("nan"), "errors": errors,
        }
    finally:
        stop(srv)
        errlog.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tlb", default=TLB)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--timeout", default="20ms", help="[cluster] timeout")
    args = ap.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("needs redis-server: apt-get install redis-server")
    work = tempfile.mkdtemp(prefix="tlb-fleet-cost-")
    ups_proc, redis = None, None
    try:
        subprocess.run([args.tlb, "pki", "init", "--dir", f"{work}/pki", "--clients", "client1", "--config",
                        f"{work}/unused.toml"], check=True, stdout=subprocess.DEVNULL)
        ups_proc, ups = start_upstreams(args.tlb, work)
        redis = Redis(work)
        envs = {}
        for v in ("plain", "cluster"):
            port = free_port()
            cfg = f"{work}/tlb-{v}.toml"
            write_tlb_config(work, port, ups, path=cfg)
            apply_variant(cfg, v, f"{work}/pki", redis=redis.url, redis_timeout=args.timeout)
            envs[v] = (cfg, port)
        runs = {"plain": [], "cluster": []}
        for rnd in range(args.rounds):
            for v in (("plain", "cluster") if rnd % 2 == 0 else ("cluster", "plain")):
                cfg, port = envs[v]
                t0 = time.time()
                r = one_round(args, work, v, cfg, port, redis, f"{v}-{rnd}")
                runs[v].append(r)
                log(f"round {rnd + 1} {v:7} n={r['n']} first p50={r['first']['p50_us']} "
                    f"p99={r['first']['p99_us']} us, tlb {r['cpu_us']:.0f} us/conn, "
                    f"redis {r['redis_us']:.1f} us/conn, {r['gib_cpu_s']:.3f} CPU s/GiB ({time.time() - t0:.0f}s)")
        med = lambda v, f: statistics.median(f(r) for r in runs[v])  # noqa: E731
        print(f"tlb {args.tlb}; {args.rounds} rounds x {args.duration}s, --connections {args.connections}, "
              f"[cluster] timeout {args.timeout}; medians over rounds")
        print("| figure | without [cluster] | with [cluster] | added |")
        print("|---|---|---|---|")
        rows = [
            ("handshake p50 (us)", lambda r: r["hs"]["p50_us"]),
            ("handshake p99 (us)", lambda r: r["hs"]["p99_us"]),
            ("handshake -> first byte p50 (us)", lambda r: r["first"]["p50_us"]),
            ("handshake -> first byte p99 (us)", lambda r: r["first"]["p99_us"]),
            ("handshake -> first byte p99.9 (us)", lambda r: r["first"]["p999_us"]),
            ("connect -> first byte p50 (us)", lambda r: r["hs"]["p50_us"] + r["first"]["p50_us"]),
            ("tlb serve CPU per connection (us)", lambda r: r["cpu_us"]),
            ("redis-server CPU per connection (us)", lambda r: r["redis_us"]),
            ("tlb serve CPU per GiB echoed (s)", lambda r: r["gib_cpu_s"]),
        ]
        for name, f in rows:
            a, b = med("plain", f), med("cluster", f)
            print(f"| {name} | {a:,.3f} | {b:,.3f} | {b - a:+,.3f} |" if "GiB" in name else
                  f"| {name} | {a:,.1f} | {b:,.1f} | {b - a:+,.1f} |")
        errs = sum(r["errors"] for v in runs for r in runs[v])
        print(f"errors: {errs}; connections per round: "
              + ", ".join(f"{v} {'/'.join(str(r['n']) for r in runs[v])}" for v in runs))
    finally:
        if ups_proc:
            stop(ups_proc)
        if redis:
            redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
