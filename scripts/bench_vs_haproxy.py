#!/usr/bin/env python3
"""tlb vs HAProxy, side by side, in one run.

Both balancers terminate mTLS (TLS 1.3 only, client certificate required and
verified against the same CA and CRL) in front of the same three
`tlb upstream` echo servers, with least-connections balancing and ONE
thread, pinned to CPU 0. The loader (`tlb bench`) and the upstreams are
pinned to CPU 1. Rounds alternate tlb and HAProxy under identical loads.

Figures (all independent of how fast the loader is):
  cpu_ms_per_conn   balancer CPU time / new mTLS connections (handshake + one 64 B echo)
  cpu_s_per_gib     balancer CPU time / GiB echoed (one connection, stream mode)
  rss_kib_per_idle  RSS delta / idle proxied connections held (--idle, 3,000)
  added_p50_us, added_p99_us
                    64 B ping-pong latency on one established connection,
                    minus the same run straight to an upstream (plain TCP)
  held_ok           connections held at once without error (ramp up to --max-held)

--variant (issue 12) sets what both balancers do toward the upstreams:
  plain  plain TCP (the default)
  pp2    a PROXY protocol v2 header first: HAProxy `send-proxy-v2-ssl-cn`,
         tlb `proxy_protocol = "v2"`; upstreams `tlb upstream --proxy-protocol`
  utls   TLS with verification: HAProxy `ssl verify required ca-file CA
         sni str(up) verifyhost up`, tlb `[app.upstream_tls] ca = CA,
         server_name = "up"`; upstreams `tlb upstream --tls` with a
         `tlb pki issue up --server` certificate
--only-conn measures cpu_ms_per_conn alone (the figure the variants change;
implied by pp2 and utls).
--tlb BIN benchmarks that binary (it is also the loader and the upstreams).

Usage: scripts/bench_vs_haproxy.py [--rounds 3] [--duration 10] [--out bench-results]
           [--variant plain|pp2|utls] [--only-conn] [--tlb BIN]
Needs: Linux, taskset (util-linux), haproxy (installed from Debian if missing, as root).
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

from benchlib import (  # noqa: F401  (shared with ab_tlb.py)
    ROOT, TLB, CLK, apply_variant, bench, cpu_during, cpu_seconds, free_port, log, port_free, rss_kib, start_upstreams, stop, upstream_flags, wait_port,
    write_tlb_config)


def ensure_haproxy():
    if shutil.which("haproxy"):
        return
    log("haproxy not found: installing it from Debian (apt-get)")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "haproxy"], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def measure(name, start, port, work, args, direct):
    """All five figures for one balancer, on a freshly started process."""
    proc = start()
    try:
        wait_port(port)
        pid = proc.pid
        r = {}
        if args.only_conn:
            bench(work, port, "rr", 1, 1, loader=args.tlb)  # warm-up
            cpu, b = cpu_during(pid, lambda: bench(work, port, "handshake", 16, args.duration, loader=args.tlb))
            r["conns"] = b["handshakes"]
            r["errors"] = sum(b["errors"].values())
            r["cpu_ms_per_conn"] = cpu * 1000 / max(b["handshakes"], 1)
            log(f"  {name}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
            return r
        # 1. RSS per idle connection (first, on a fresh process: an allocator
        #    keeps freed pages, so a second run would read a delta of zero).
        bench(work, port, "rr", 1, 1, loader=args.tlb)  # warm-up: one connection's worth of state
        base = rss_kib(pid)
        n = args.idle
        ramp = n / 1000  # opened at 1,000/s
        p = subprocess.Popen(["taskset", "-c", "1", args.tlb, "bench", "--target", f"127.0.0.1:{port}",
                              "--cert", "client1", "--pki", os.path.join(work, "pki"), "--mode", "idle",
                              "--connections", str(n), "--rate", "1000", "--duration", f"{ramp + 9:.0f}s",
                              "--threads", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(ramp + 7)  # all held after the ramp (+ handshake time); sample while held
        held = rss_kib(pid)
        p.wait(timeout=60)
        r["rss_kib_per_idle"] = (held - base) / n
        # 2. CPU per new connection.
        cpu, b = cpu_during(pid, lambda: bench(work, port, "handshake", 16, args.duration, loader=args.tlb))
        r["conns"] = b["handshakes"]
        r["cpu_ms_per_conn"] = cpu * 1000 / max(b["handshakes"], 1)
        # 3. CPU per GiB echoed.
        cpu, b = cpu_during(pid, lambda: bench(work, port, "stream", 1, args.duration, ["--size", "65536"], loader=args.tlb))
        gib = b["bytes_echoed"] / 2**30
        r["gib_echoed"] = gib
        r["cpu_s_per_gib"] = cpu / max(gib, 1e-9)
        # 4. Added latency on an established connection.
        b = bench(work, port, "rr", 1, args.duration, loader=args.tlb)
        r["rr_p50_us"] = b["request_latency"]["p50_us"]
        r["rr_p99_us"] = b["request_latency"]["p99_us"]
        r["added_p50_us"] = r["rr_p50_us"] - direct["request_latency"]["p50_us"]
        r["added_p99_us"] = r["rr_p99_us"] - direct["request_latency"]["p99_us"]
        # 5. Connections held at once: ramp at a rate both balancers sustain
        #    (this measures capacity, not handshake speed).
        secs = args.max_held // args.ramp_rate + 8
        b = bench(work, port, "idle", args.max_held, secs, ["--rate", str(args.ramp_rate)], loader=args.tlb)
        r["held_ok"] = b["requests"]
        r["held_errors"] = sum(b["errors"].values())
        log(f"  {name}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
        return r
    finally:
        stop(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--idle", type=int, default=3000)
    ap.add_argument("--max-held", type=int, default=9000)
    ap.add_argument("--ramp-rate", type=int, default=300, help="new connections/s while ramping the held test")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    ap.add_argument("--variant", default="plain", choices=["plain", "pp2", "utls"])
    ap.add_argument("--only-conn", action="store_true", help="cpu_ms_per_conn only")
    ap.add_argument("--tlb", default=TLB, help="tlb binary (default target/dist/tlb, built if missing)")
    args = ap.parse_args()
    if args.tlb == TLB and not os.path.exists(TLB):
        subprocess.run(["cargo", "build", "--profile", "dist"], cwd=ROOT, check=True)
    TLB_ = args.tlb
    if args.variant != "plain":
        args.only_conn = True  # the other figures' direct-to-upstream baselines need plain upstreams
    ensure_haproxy()
    hv = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    log(f"tlb: {TLB_}\nhaproxy: {hv}\nvariant: {args.variant}")
    work = tempfile.mkdtemp(prefix="tlb-vs-haproxy-")
    procs = []

    def cleanup(*_):
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(1)))
    try:
        subprocess.run([TLB_, "pki", "init", "--dir", f"{work}/pki", "--config", f"{work}/unused.toml",
                        "--clients", "client1"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([TLB_, "pki", "issue", "up", "--server", "--dir", f"{work}/pki"], check=True,
                       stdout=subprocess.DEVNULL)
        ups_proc, ups = start_upstreams(TLB_, work, upstream_flags(args.variant, f"{work}/pki"))
        procs.append(ups_proc)
        up = int(ups[0].rsplit(":", 1)[1])
        tlb_port, hap_port = free_port(), free_port()
        write_tlb_config(work, tlb_port, ups)
        apply_variant(f"{work}/tlb.toml", args.variant, f"{work}/pki")
        srv_opts = {"plain": "", "pp2": " send-proxy-v2-ssl-cn",
                    "utls": f" ssl verify required ca-file {work}/pki/ca.crt sni str(up) verifyhost up"}[args.variant]
        with open(f"{work}/haproxy.pem", "w") as f:
            f.write(open(f"{work}/pki/server.crt").read() + open(f"{work}/pki/server.key").read())
        with open(f"{work}/haproxy.cfg", "w") as f:
            f.write(f'''global
    nbthread 1
    maxconn 9950
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode tcp
    timeout connect 2s
    timeout client 10m
    timeout server 10m
frontend fe
    bind 127.0.0.1:{hap_port} ssl crt {work}/haproxy.pem ca-file {work}/pki/ca.crt crl-file {work}/pki/crl.pem verify required ssl-min-ver TLSv1.3
    default_backend be
backend be
    balance leastconn
''' + "".join(f"    server up{i + 1} {u}{srv_opts}\n" for i, u in enumerate(ups)))
        subprocess.run(["haproxy", "-c", "-f", f"{work}/haproxy.cfg"], check=True, stdout=subprocess.DEVNULL)
        def start_tlb():
            p = subprocess.Popen(["taskset", "-c", "0", TLB_, "serve", "--config", f"{work}/tlb.toml", "--threads", "1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            return p

        def start_haproxy():
            p = subprocess.Popen(["taskset", "-c", "0", "haproxy", "-db", "-f", f"{work}/haproxy.cfg"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            return p

        direct = None if args.only_conn else bench(work, up, "rr", 1, args.duration, plain=True, loader=TLB_)
        if direct:
            log(f"direct to upstream: p50 {direct['request_latency']['p50_us']} us, p99 {direct['request_latency']['p99_us']} us")
        results = {"tlb": [], "haproxy": []}
        for rnd in range(args.rounds):
            order = [("tlb", start_tlb, tlb_port), ("haproxy", start_haproxy, hap_port)]
            if rnd % 2:
                order.reverse()
            log(f"round {rnd + 1}/{args.rounds}")
            for name, start, port in order:
                results[name].append(measure(name, start, port, work, args, direct))
        keys = ["cpu_ms_per_conn"] if args.only_conn else \
            ["cpu_ms_per_conn", "cpu_s_per_gib", "rss_kib_per_idle", "added_p50_us", "added_p99_us", "held_ok"]
        med = {n: {k: statistics.median(r[k] for r in rs) for k in keys} for n, rs in results.items()}
        targets = {"cpu_ms_per_conn": "<= 0.25x", "cpu_s_per_gib": "<= 0.55x", "rss_kib_per_idle": "<= 0.45x",
                   "added_p50_us": "<= 1.0x", "added_p99_us": "<= 1.0x", "held_ok": ">= 9000"}
        lines = [f"| figure (median of {args.rounds}, variant {args.variant}) | tlb | HAProxy | tlb/HAProxy | target |", "|---|---|---|---|---|"]
        for k in keys:
            t, h = med["tlb"][k], med["haproxy"][k]
            ratio = t / h if h else float("nan")
            lines.append(f"| {k} | {t:.3f} | {h:.3f} | {ratio:.2f} | {targets[k]} |")
        table = "\n".join(lines)
        print(table)
        os.makedirs(args.out, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        with open(os.path.join(args.out, f"vs-haproxy-{stamp}.json"), "w") as f:
            json.dump({"haproxy": hv, "variant": args.variant, "tlb": TLB_, "direct": direct, "rounds": results, "median": med}, f, indent=2)
        with open(os.path.join(args.out, f"vs-haproxy-{stamp}.md"), "w") as f:
            f.write(table + "\n")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
