//! The sample configs tlb hands out, built with the writer: the file
//! `tlb pki init` writes, and the demo set of authorized clients it shares
//! with the lab.
//!
//! Promises: the pki-init sample loads as written (pki init checks it),
//! listens on 127.0.0.1:8443 over 127.0.0.1:9001-9003 (what
//! `tlb upstream --count 3` serves), leaves its last client out so the
//! default-deny refusal can be seen, and its per-client limits admit
//! `tlb bench --target` with default flags in rr mode (64 connections at
//! once) while keeping a rate limit that a handshake-mode bench runs into.

use crate::core::config::model::Timeouts;
use crate::core::config::writer::{AppSection, ClientSection, ConfigWriter, LimitsSection, TlsSection};

/// The `[defaults]` of the pki-init sample: 100 connections per client at
/// once, 50 new ones per second with a burst of 100. `tlb bench`'s default
/// 64 connections fit (max_connections and burst >= 64); a handshake-mode
/// bench (new connections as fast as it can) hits connection_rate, which
/// its diagnosis then names.
fn sample_limits() -> LimitsSection {
    LimitsSection {
        max_connections: Some(100),
        connection_rate: Some(50.0),
        burst: Some(100),
    }
}

/// `w` with `clients` on app `app`: every client but the last is authorized;
/// the last (client4 by default) is left out on purpose, so the default-deny
/// path can be seen. With a single client, it is authorized.
pub fn demo_clients(mut w: ConfigWriter, app: &str, clients: &[String]) -> ConfigWriter {
    let allowed = if clients.len() > 1 {
        &clients[..clients.len() - 1]
    } else {
        clients
    };
    for c in allowed {
        w = w.client(ClientSection::new(c, [app]));
    }
    w
}

/// A working `tlb.toml` for a PKI at `pki_dir` (as the config should spell
/// it) and the given clients: app `echo` on 127.0.0.1:8443 over
/// 127.0.0.1:9001-9003 (`tlb upstream --count 3`), clients as
/// [`demo_clients`] puts them, every key explained and the optional ones
/// shown commented out.
pub fn example_toml(pki_dir: &str, clients: &[String]) -> String {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 8443));
    let app = AppSection {
        server_names: Some(vec![]),
        ..AppSection::new("echo", listen, ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"])
    };
    let w = ConfigWriter::new(TlsSection::pki(pki_dir))
        .annotated()
        .comment("tlb configuration (see the README's \"Configuration\" and \"The gate\").")
        .comment("Paths are relative to this file's directory.")
        .defaults(sample_limits())
        .timeouts(Timeouts::default().into())
        .app(app);
    let mut w = demo_clients(w, "echo", clients);
    if let (true, Some(last)) = (clients.len() > 1, clients.last()) {
        w = w.footer(format!(
            "{last} has a valid certificate but no [[client]] entry: it is refused during the handshake."
        ));
    }
    w.render()
}
