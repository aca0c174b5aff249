#!/usr/bin/env python3
"""Two tlb builds side by side (A/B), one core each, alternated rounds.

For changes whose cost must be shown to be small (e.g. metrics on the hot
path): the same method as bench_vs_haproxy.py (balancer pinned to CPU 0 with
one thread, loader and upstreams on CPU 1, fresh processes per round), with
both balancers being tlb binaries. The loader is always the newer binary
(B), so only the balancer differs.

Figures per build (median of rounds) and B/A ratios:
  cpu_ms_per_conn   balancer CPU / new mTLS connections (handshake + 64 B echo)
  cpu_us_per_req    balancer CPU / request, 64 B ping-pong on 64 connections
  cpu_s_per_gib     balancer CPU / GiB echoed (one connection, 64 KiB writes)

Usage: scripts/ab_tlb.py --a OLD_TLB_BINARY --b NEW_TLB_BINARY [--rounds 5] [--duration 6]
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile

from benchlib import bench, cpu_during, free_port, log, start_upstreams, stop, wait_port, write_tlb_config


def measure(binary, loader, port, work, duration):
    p = subprocess.Popen(["taskset", "-c", "0", binary, "serve", "--config", f"{work}/tlb.toml", "--threads", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        r = {}
        cpu, b = cpu_during(p.pid, lambda: bench(work, port, "handshake", 16, duration, loader=loader))
        r["cpu_ms_per_conn"] = cpu * 1000 / max(b["handshakes"], 1)
        cpu, b = cpu_during(p.pid, lambda: bench(work, port, "rr", 64, duration, loader=loader))
        r["cpu_us_per_req"] = cpu * 1e6 / max(b["requests"], 1)
        cpu, b = cpu_during(
            p.pid, lambda: bench(work, port, "stream", 1, duration, ["--size", "65536"], loader=loader))
        r["cpu_s_per_gib"] = cpu / max(b["bytes_echoed"] / 2**30, 1e-9)
        return r
    finally:
        stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="baseline tlb binary")
    ap.add_argument("--b", required=True, help="candidate tlb binary (also the loader)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=6)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tlb-ab-")
    ups_proc = None
    try:
        subprocess.run([args.b, "pki", "init", "--dir", f"{work}/pki", "--config", f"{work}/unused.toml",
                        "--clients", "client1"], check=True, stdout=subprocess.DEVNULL)
        ups_proc, ups = start_upstreams(args.b, work)
        port = free_port()
        write_tlb_config(work, port, ups, preauth_caps=False)
        res = {"A": [], "B": []}
        for rnd in range(args.rounds):
            order = [("A", args.a), ("B", args.b)]
            if rnd % 2:
                order.reverse()
            for name, binary in order:
                r = measure(binary, args.b, port, work, args.duration)
                log(f"round {rnd + 1} {name}: " + ", ".join(f"{k}={v:.4f}" for k, v in r.items()))
                res[name].append(r)
        print(f"| figure (median of {args.rounds}) | A | B | B/A |\n|---|---|---|---|")
        for k in res["A"][0]:
            a = statistics.median(r[k] for r in res["A"])
            b = statistics.median(r[k] for r in res["B"])
            print(f"| {k} | {a:.4f} | {b:.4f} | {b / a:.3f} |")
    finally:
        if ups_proc:
            ups_proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
