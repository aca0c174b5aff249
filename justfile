# Common tasks. `just --list` shows them.

# Run the whole test suite (what CI runs, besides fmt and clippy).
test:
    cargo test --release

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings

# Everything CI does.
ci:
    bash .ci/run

# Create a demo PKI in ./pki and ./tlb.toml (refuses to overwrite).
pki:
    cargo run --release -- pki init

# The build to deploy and benchmark (fat LTO): target/dist/tlb.
build:
    cargo build --profile dist

# redis-server and N tlb instances on loopback sharing one client's
# max_connections through it, loaded past the limit (needs redis-server):
# just fleet [N] [--duration 30s] [--limit 8] [--connections 32]
fleet N="3" *ARGS:
    cargo run --release -- bench --fleet {{N}} {{ARGS}}

# tlb vs HAProxy side by side, one core each (installs haproxy if missing).
bench-vs-haproxy *ARGS:
    cargo build --profile dist
    python3 scripts/bench_vs_haproxy.py {{ARGS}}

# Two tlb builds side by side (A/B), e.g. before/after a hot-path change:
# just bench-ab /tmp/tlb.before target/dist/tlb
bench-ab A B *ARGS:
    python3 scripts/ab_tlb.py --a {{A}} --b {{B}} {{ARGS}}

# Instruction counts (callgrind) of two builds per handshake/resumed/request/GiB:
# just cg /tmp/tlb.before target/dist/tlb [--figures handshake] [--variant pp2]
# One build, variants side by side: just cg X X --variants plain,pp2,utls --figures handshake
cg A B *ARGS:
    python3 scripts/cg_tlb.py --a {{A}} --b {{B}} {{ARGS}}
