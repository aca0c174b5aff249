#!/usr/bin/env python3
"""Instruction counts (callgrind) of two tlb builds, per unit of work.

The method of BENCHMARKS.md ("Issue 10 ... Instruction counts"), as a
script: the server runs under `valgrind --tool=callgrind` with one worker
thread on CPU 0; the loader (`tlb bench`, always build B) and three
`tlb upstream` echo servers run on CPU 1. Per build and per run a fresh
server: ready = a LISTEN socket in /proc/net/tcp (no probe connection),
one warm-up connection, wait until the server's CPU time stands still for
1 s, the measured bench, wait again, SIGTERM (cg.out is written at exit).
A start-up-only run per build and round (the same without the measured
bench) is subtracted. Rounds alternate the build order (A, B then B, A).

Figures (Ir = the `summary:` line of cg.out):
  handshake  (Ir - start-up) / handshakes      new mTLS connection + 64 B echo
  resumed    the same with --resume; full handshakes among them (calls of
             rustls ExpectCertificateVerify::handle, minus the warm-up's)
             are subtracted at the build's own handshake cost (so run
             `handshake` too), the rest divided by resumed ones
  rr         64 connections ping-pong 64 B; their 64 handshakes subtracted
             at the build's own handshake cost, / requests
  stream     1 connection, 64 KiB writes; / GiB echoed (its one handshake included)

--variant sets up the app and the upstreams for both builds:
  plain  plain TCP upstreams (`tlb upstream --greet`)
  pp2    app `proxy_protocol = "v2"`, upstreams `tlb upstream --proxy-protocol --greet`
  utls   `[app.upstream_tls] ca = <pki>/ca.crt, server_name = "up"`, upstreams
         `tlb upstream --tls` with a `tlb pki issue up --server` certificate
  cluster `[cluster]` on a redis-server the script starts (timeout 2 s: valgrind
         is ~50x slower, and a late answer would fall back to the local
         share); each figure also reports redis-server's CPU per connection
The cost of a variant over plain for ONE build: run the script twice with
`--a X --b X` (plain, then the variant) and compare B's figures, or use
`--variants plain,pp2,utls --a X` (one build, the variants alternated per
round instead of builds; ratios against the first variant).

Usage: scripts/cg_tlb.py --a /tmp/tlb.base --b /tmp/tlb.new [--rounds 2]
           [--figures handshake,resumed,rr,stream] [--variant plain|pp2|utls|cluster]
           [--duration 12] [--keep DIR]
       scripts/cg_tlb.py --a /tmp/tlb.new --variants plain,pp2,utls --figures handshake
Needs: Linux, valgrind, taskset. Both builds must accept the variant's config.
"""
import argparse, json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (Redis, apply_variant, cpu_seconds, free_port, log, port_free, stop,  # noqa: E402
                      upstream_flags, write_tlb_config)

FIGS = ["handshake", "resumed", "rr", "stream"]


def listening(port):
    """A LISTEN (0A) socket on 127.0.0.1:port in /proc/net/tcp."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            p = line.split()
            if p[1] == want and p[3] == "0A":
                return True
    return False


def settle(pid, still=1.0, deadline=60.0):
    """Wait until pid's CPU time has not moved for `still` seconds."""
    end = time.time() + deadline
    last, since = cpu_seconds(pid), time.time()
    while time.time() < end:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= still:
            return
    log(f"  warning: server CPU did not settle within {deadline}s")


def setup(work, loader, variant, redis=None):
    """PKI, config and upstreams for one variant; returns (port, upstream proc)."""
    pki = f"{work}/pki"
    if not os.path.exists(pki):
        subprocess.run([loader, "pki", "init", "--dir", pki, "--clients", "client1", "--config",
                        f"{work}/unused.toml"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([loader, "pki", "issue", "up", "--server", "--dir", pki], check=True,
                       stdout=subprocess.DEVNULL)
    up = free_port()
    while not all(port_free(up + i) for i in range(3)):
        up = free_port()
    ups = [f"127.0.0.1:{up + i}" for i in range(3)]
    port = free_port()
    cfg = f"{work}/tlb-{variant}.toml"
    write_tlb_config(work, port, ups, path=cfg, preauth_caps=False)
    # valgrind is ~50x slower: upstream connects must not time out.
    apply_variant(cfg, variant, pki, connect_timeout="20s", redis=redis and redis.url, redis_timeout="2s")
    cmd = ["taskset", "-c", "1", loader, "upstream", "--listen", ups[0], "--count", "3", "--greet",
           "--threads", "1"] + upstream_flags(variant, pki)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + 10
    while not all(listening(up + i) for i in range(3)):
        if time.time() > end or proc.poll() is not None:
            raise SystemExit(f"upstreams ({variant}) did not come up")
        time.sleep(0.05)
    return port, cfg, proc


def bench_cmd(loader, work, port, mode, conns, secs, extra=(), out=None):
    cmd = ["taskset", "-c", "1", loader, "bench", "--target", f"127.0.0.1:{port}", "--cert", "client1",
           "--pki", f"{work}/pki", "--threads", "1", "--mode", mode, "--connections", str(conns),
           "--duration", f"{secs}s"] + list(extra)
    if out:
        cmd += ["--json", out]
    return cmd


FIG_BENCH = {  # mode, connections, extra
    "handshake": ("handshake", 16, []),
    "resumed": ("handshake", 16, ["--resume"]),
    "rr": ("rr", 64, []),
    "stream": ("stream", 1, ["--size", "65536"]),
}


def one_run(binary, loader, work, port, cfg, fig, secs, tag, redis=None):
    """One fresh server under callgrind; fig None = start-up only. Returns a
    dict (with redis: "redis_cpu", redis-server's CPU seconds during the figure)."""
    cgout = f"{work}/cg-{tag}.out"
    errlog = open(f"{work}/serve-{tag}.log", "w")
    srv = subprocess.Popen(["taskset", "-c", "0", "valgrind", "--tool=callgrind", f"--callgrind-out-file={cgout}",
                            binary, "serve", "--config", cfg, "--threads", "1"],
                           stdout=errlog, stderr=subprocess.STDOUT)
    try:
        end = time.time() + 120
        while not listening(port):
            if time.time() > end or srv.poll() is not None:
                raise SystemExit(f"server {binary} did not listen; see {work}/serve-{tag}.log")
            time.sleep(0.1)
        subprocess.run(bench_cmd(loader, work, port, "idle", 1, 1), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        settle(srv.pid)
        res = {}
        if fig:
            mode, conns, extra = FIG_BENCH[fig]
            out = f"{work}/bench-{tag}.json"
            redis_before = redis.cpu() if redis else None
            subprocess.run(bench_cmd(loader, work, port, mode, conns, secs, extra, out), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=secs + 120)
            res = json.load(open(out))
            if redis:
                res["redis_cpu"] = redis.cpu() - redis_before
            settle(srv.pid)
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(timeout=120)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        errlog.close()
    ir = None
    with open(cgout) as f:
        for line in f:
            if line.startswith("summary:"):  # = callgrind_annotate's PROGRAM TOTALS
                ir = int(line.split()[1])
    res["ir"] = ir
    if fig == "resumed":
        res["full"] = calls_of(cgout, "ExpectCertificateVerify") - 1  # minus the warm-up's
    errs = sum(res.get("errors", {}).values()) if isinstance(res.get("errors"), dict) else 0
    warn = [l for l in open(f"{work}/serve-{tag}.log") if re.search(r"WARN|ERROR|timed out", l)]
    if errs or warn:
        log(f"  warning ({tag}): bench errors {res.get('errors')}; server log: {warn[:3]}")
    return res


def calls_of(cgout, needle):
    """Calls of functions whose name contains `needle` and rustls's server tls13 `handle`,
    summed over all call sites in cg.out (names are compressed: "cfn=(id) name" once)."""
    names, n, cur = {}, 0, None
    with open(cgout) as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m:
                    if m.group(2):
                        names[m.group(1)] = m.group(2)
                    if line.startswith("cfn="):
                        cur = names.get(m.group(1), "")
            elif line.startswith("calls=") and cur is not None:
                if needle in cur and "server::tls13" in cur and "handle" in cur:
                    n += int(line.split()[0][6:])
                cur = None
    return n


def figure(fig, r, start, hs_cost):
    d = r["ir"] - start
    if fig == "handshake":
        return d / r["handshakes"]
    if fig == "stream":
        return d / (r["bytes_echoed"] / 2**30)
    if fig == "rr":
        return (d - 64 * hs_cost) / r["requests"]
    if fig == "resumed":
        resumed = r["handshakes"] - r["full"]
        return (d - r["full"] * hs_cost) / max(resumed, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True)
    ap.add_argument("--b")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--figures", default="handshake,resumed,rr,stream")
    ap.add_argument("--variant", default="plain", choices=["plain", "pp2", "utls", "cluster"])
    ap.add_argument("--variants", help="one build (--a), several variants, e.g. plain,pp2,utls")
    ap.add_argument("--duration", type=int, default=12)
    ap.add_argument("--keep", help="keep the work dir (profiles, logs) here")
    args = ap.parse_args()
    figs = args.figures.split(",")
    if "resumed" in figs or "rr" in figs:
        if "handshake" not in figs:
            figs.insert(0, "handshake")
    figs.sort(key=FIGS.index)
    work = args.keep or tempfile.mkdtemp(prefix="tlb-cg-")
    os.makedirs(work, exist_ok=True)
    # arms: (label, binary, variant)
    if args.variants:
        arms = [(v, args.a, v) for v in args.variants.split(",")]
        loader = args.a
    else:
        b = args.b or args.a
        arms = [("A", args.a, args.variant), ("B", b, args.variant)]
        loader = b
    ups, envs = [], {}
    redis = None
    try:
        if any(a[2] == "cluster" for a in arms):
            redis = Redis(work)
        for v in sorted({a[2] for a in arms}):
            port, cfg, p = setup(work, loader, v, redis)
            ups.append(p)
            envs[v] = (port, cfg)
        runs = {a[0]: {f: [] for f in figs + ["start"]} for a in arms}
        for rnd in range(args.rounds):
            order = arms if rnd % 2 == 0 else arms[::-1]
            for fig in ["start"] + figs:
                for label, binary, v in order:
                    port, cfg = envs[v]
                    tag = f"{label}-{fig}-{rnd}"
                    t0 = time.time()
                    r = one_run(binary, loader, work, port, cfg, None if fig == "start" else fig, args.duration, tag,
                                redis if v == "cluster" else None)
                    runs[label][fig].append(r)
                    log(f"round {rnd + 1} {label:5} {fig:9} Ir={r['ir']:,} "
                        + (f"hs={r.get('handshakes')} req={r.get('requests')} bytes={r.get('bytes_echoed')} "
                           f"full={r.get('full', '-')}" if fig != "start" else "")
                    + (f" redis_cpu={r['redis_cpu']:.3f}s" if "redis_cpu" in r else "") + f" ({time.time() - t0:.0f}s)")
        # figures
        table = {}
        for label, _, _ in arms:
            start = statistics.mean(r["ir"] for r in runs[label]["start"])
            hs = None
            table[label] = {"start": start}
            for fig in figs:
                vals = [figure(fig, r, start, hs) for r in runs[label][fig]]
                table[label][fig] = (statistics.median(vals), vals)
                if fig == "handshake":
                    hs = table[label][fig][0]
        unit = {"handshake": "Ir / handshake", "resumed": "Ir / resumed handshake", "rr": "Ir / 64 B request",
                "stream": "Ir / GiB"}
        first = arms[0][0]
        print(f"work dir: {work}")
        for label, binary, v in arms:
            su = ", ".join(f"{r['ir']:,}" for r in runs[label]["start"])
            print(f"{label}: {binary} variant {v}; start-up {table[label]['start']:,.0f} Ir ({su})")
        hdr = " | ".join(a[0] for a in arms)
        print(f"| figure | {hdr} | " + " | ".join(f"{a[0]}/{first}" for a in arms[1:]) + " |")
        print("|---" * (1 + 2 * len(arms) - 1) + "|")
        for fig in figs:
            cells = []
            for label, _, _ in arms:
                m, vals = table[label][fig]
                cells.append(f"{m:,.0f} ({' / '.join(f'{x:,.0f}' for x in vals)})")
            base = table[first][fig][0]
            ratios = [f"{table[a[0]][fig][0] / base:.4f} ({(table[a[0]][fig][0] / base - 1) * 100:+.2f} %)"
                      for a in arms[1:]]
            print(f"| {unit[fig]} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        for label, _, v in arms:
            if v != "cluster":
                continue
            for fig in figs:
                per = [r["redis_cpu"] / max(1, r.get("handshakes") or 1) * 1e6 for r in runs[label][fig]
                       if "redis_cpu" in r]
                if per and fig in ("handshake", "resumed"):
                    print(f"{label} {fig}: redis-server CPU {statistics.median(per):.1f} us per connection "
                          f"({' / '.join(f'{x:.1f}' for x in per)})")
        json.dump({"arms": arms, "runs": runs}, open(f"{work}/runs.json", "w"), indent=1, default=str)
    finally:
        for p in ups:
            stop(p)
        if redis:
            redis.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
