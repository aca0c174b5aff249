"""Helpers shared by bench_vs_haproxy.py and ab_tlb.py: free ports, waiting
for a port, CPU and RSS of a process, the balancer config both use, running
`tlb bench`, echo upstreams, stopping children within a bound.
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TLB = os.path.join(ROOT, "target", "dist", "tlb")  # cargo build --profile dist
CLK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on 127.0.0.1:{port} after {deadline}s")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def write_tlb_config(work, port, ups, path=None, preauth_caps=True):
    """The balancer config both scripts use: limits out of the way, one app.
    preauth_caps=False leaves out [limits] (for A/B runs against builds that
    predate it; their defaults do not bind at those loads).

    The text is exactly what tlb's config writer (src/core/config/writer.rs)
    renders for these values: tests/samples.rs runs this function and compares
    byte for byte, so change both together. It is written here rather than
    asked of a tlb binary so that A/B runs work with any two builds."""
    q = json.dumps  # a JSON string of ASCII text is a TOML basic string
    caps = ("\n[limits]\nmax_connections = 100000\nmax_handshakes = 100000\n"
            "max_handshakes_per_ip = 100000\n") if preauth_caps else ""
    with open(path or f"{work}/tlb.toml", "w") as f:
        f.write(f"""[tls]
ca = {q(f"{work}/pki/ca.crt")}
cert = {q(f"{work}/pki/server.crt")}
key = {q(f"{work}/pki/server.key")}
crl = {q(f"{work}/pki/crl.pem")}
{caps}
[defaults]
max_connections = 100000
connection_rate = 1000000
burst = 1000000

[timeouts]
idle = "10m"
drain = "1s"

[[app]]
name = "echo"
listen = {q(f"127.0.0.1:{port}")}
upstreams = [{", ".join(q(u) for u in ups)}]

[[client]]
name = "client1"
apps = ["echo"]
""")


_ERROR_RATE_FLAG = {}


def error_rate_flag(binary):
    """`--max-error-rate 100` for loaders that have it: errors under load are
    figures to report here, not failures (a run with almost no successes still
    stops early and exits 1). Builds before the flag get nothing."""
    if binary not in _ERROR_RATE_FLAG:
        h = subprocess.run([binary, "bench", "--help"], capture_output=True, text=True, timeout=30)
        _ERROR_RATE_FLAG[binary] = ["--max-error-rate", "100"] if "--max-error-rate" in h.stdout else []
    return _ERROR_RATE_FLAG[binary]


def bench(work, port, mode, conns, duration, extra=(), plain=False, loader=None):
    out = os.path.join(work, f"bench-{mode}-{port}-{time.time_ns()}.json")
    binary = loader or TLB
    cmd = ["taskset", "-c", "1", binary, "bench", "--target", f"127.0.0.1:{port}",
           "--mode", mode, "--connections", str(conns), "--duration", f"{duration}s",
           "--threads", "1", "--json", out] + error_rate_flag(binary)
    if plain:
        cmd.append("--plain")
    else:
        cmd += ["--cert", "client1", "--pki", os.path.join(work, "pki")]
    cmd += list(extra)
    # Bounded: a hung loader must not hang the whole comparison.
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=duration + 60)
    with open(out) as f:
        return json.load(f)


def stop(proc):
    """SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_during(pid, run):
    """CPU seconds `pid` spent while `run()` ran, and what `run()` returned."""
    c0 = cpu_seconds(pid)
    out = run()
    return cpu_seconds(pid) - c0, out


def apply_variant(path, variant, pki, connect_timeout=None, redis=None, redis_timeout="20ms"):
    """Edit a write_tlb_config file for a variant toward the upstreams (see
    upstream_flags): "pp2" adds `proxy_protocol = "v2"` to the app, "utls" an
    `[app.upstream_tls]` with the PKI's CA and server_name "up", "cluster" a
    `[cluster]` on the Redis URL `redis` (timeout `redis_timeout`). With
    connect_timeout (e.g. "20s", for runs under valgrind) sets [timeouts] connect."""
    text = open(path).read()
    if connect_timeout:
        text = text.replace("[timeouts]\n", f"[timeouts]\nconnect = {json.dumps(connect_timeout)}\n", 1)
    cluster = ""
    if variant == "cluster":
        if not redis:
            raise SystemExit("the cluster variant needs a Redis URL")
        cluster = (f'[cluster]\nredis = {json.dumps(redis)}\ninstance = "bench"\n'
                   f'timeout = {json.dumps(redis_timeout)}\nliveness_ttl = "30s"\n')
    extra = {"plain": "", "pp2": 'proxy_protocol = "v2"\n',
             "utls": f'[app.upstream_tls]\nca = {json.dumps(pki + "/ca.crt")}\nserver_name = "up"\n',
             "cluster": cluster}[variant]
    if extra:
        i = text.index("\n[[client]]")
        text = text[:i] + "\n" + extra.rstrip("\n") + text[i:]
    with open(path, "w") as f:
        f.write(text)


def upstream_flags(variant, pki):
    """`tlb upstream` flags for a variant: "pp2" requires a PROXY header,
    "utls" serves TLS with <pki>/servers/up.crt (`tlb pki issue up --server`)."""
    return {"plain": [], "pp2": ["--proxy-protocol"], "cluster": [],
            "utls": ["--tls", "--cert", f"{pki}/servers/up.crt", "--key", f"{pki}/servers/up.key"]}[variant]


def start_upstreams(binary, work, flags=()):
    """Three `tlb upstream --greet` (plus flags) on consecutive free ports, pinned to CPU 1."""
    up = free_port()
    while any(not port_free(up + i) for i in range(3)):
        up = free_port()
    proc = subprocess.Popen(["taskset", "-c", "1", binary, "upstream", "--listen", f"127.0.0.1:{up}",
                             "--count", "3", "--greet", "--threads", "1"] + list(flags),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for i in range(3):
        wait_port(up + i)
    return proc, [f"127.0.0.1:{up + i}" for i in range(3)]


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Redis:
    """A `redis-server` on a free loopback port, no persistence (the
    `cluster` variant); `cpu()` is its CPU time so far, in seconds."""

    def __init__(self, work):
        if not shutil.which("redis-server"):
            raise SystemExit("the cluster variant needs redis-server: apt-get install redis-server")
        self.port = free_port()
        self.proc = subprocess.Popen(["taskset", "-c", "1", "redis-server", "--port", str(self.port), "--bind",
                                      "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", work],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.url = f"redis://127.0.0.1:{self.port}"

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def stop(self):
        stop(self.proc)
