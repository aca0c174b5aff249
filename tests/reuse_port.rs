//! `[[app]] reuse_port`: two `tlb serve` processes on one host bind the
//! same address and the kernel spreads connections over both; when one is
//! killed the other takes every new connection; a third without
//! `reuse_port` cannot bind it and says what to set.

use std::net::SocketAddr;
use std::path::Path;

use tlb::core::config::writer::AppSection;
use tlb::core::tools::client::{ClientOptions, exchange};
use tlb::core::tools::lab::{Lab, LabPaths};

use crate::common::*;

/// The config of a `tlb serve` on `listen` (the lab's PKI and upstream),
/// with its own admin endpoint.
fn config(lab: &Lab, listen: SocketAddr, admin: SocketAddr, reuse_port: bool) -> String {
    let p = LabPaths {
        listen,
        admin: Some(admin),
        ..lab.paths.clone()
    };
    base(&p, "")
        .app(AppSection {
            reuse_port: Some(reuse_port),
            ..app_section("echo", listen, &[], &ups(&p))
        })
        // Above the default rate (20/s, burst 40): one process can take
        // most of the 60 quick connections, and a refusal would be read as
        // a connection lost to the other process.
        .client(client_section(
            "client1",
            &["echo"],
            "connection_rate = 1000\nburst = 1000",
        ))
        .render()
}

struct Instance {
    child: ChildGuard,
    admin: SocketAddr,
    log: std::path::PathBuf,
}

fn start(lab: &Lab, name: &str, listen: SocketAddr, reuse_port: bool) -> Instance {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let path = lab.dir().join(format!("{name}.toml"));
    std::fs::write(&path, config(lab, listen, admin, reuse_port)).expect("config");
    let log = lab.dir().join(format!("{name}.log"));
    let args = ["serve", "--config", path.to_str().expect("utf-8 path")];
    let child = start_logged(name, &args, lab.dir(), &log);
    Instance { child, admin, log }
}

/// Connections this instance relayed so far.
fn relayed(i: &Instance) -> f64 {
    let (code, body) = http_get(i.admin, "/metrics");
    assert_eq!(code, 200, "/metrics: {body}");
    metric_sum(&body, "tlb_connections_accepted_total")
}

/// `n` exchanges through `listen`, every one relayed.
fn all_relayed(opts: &ClientOptions, n: usize) {
    for k in 0..n {
        let reply = smol::block_on(exchange(opts, b"ping\n", T));
        assert!(reply.is_ok(), "connection {k} failed: {reply:?}");
    }
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn two_processes_share_one_address_and_either_can_go() {
    let lab = lab(opts(1, true), |p| {
        base(p, "")
            .app(app_section("echo", p.listen, &[], &ups(p)))
            .client(client_section("client1", &["echo"], ""))
            .render()
    });
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut a = start(&lab, "a", listen, true);
    wait_listening(a.admin, &mut a.child, &a.log);
    let mut b = start(&lab, "b", listen, true);
    // B's admin endpoint answers once B bound its listener too.
    wait_listening(b.admin, &mut b.child, &b.log);
    let opts = ClientOptions {
        connect: listen.to_string(),
        ..lab.client(Some("client1")).expect("client1")
    };
    all_relayed(&opts, 40);
    let (on_a, on_b) = (relayed(&a), relayed(&b));
    assert_eq!(on_a + on_b, 40.0, "a {on_a}, b {on_b}");
    // The kernel hashes each connection to one of the two: 40 all on one
    // side has a chance of 2^-39.
    assert!(on_a > 0.0 && on_b > 0.0, "not spread: a {on_a}, b {on_b}");

    // A third without reuse_port cannot bind the address, and says why.
    let mut c = start(&lab, "c", listen, false);
    let status = c.child.wait_for(T).expect("tlb serve without reuse_port exits");
    assert!(!status.success(), "{status:?}");
    let text = read(&c.log);
    assert!(
        text.contains(&format!("cannot listen on {listen}")) && text.contains("reuse_port = true"),
        "{text}"
    );

    a.child.signal("KILL");
    assert!(a.child.wait_for(T).is_some(), "tlb serve (a) did not die");
    let before = relayed(&b);
    all_relayed(&opts, 20);
    assert_eq!(relayed(&b) - before, 20.0, "B took every new connection");
}

#[test]
fn a_reload_that_changes_reuse_port_or_cluster_is_refused_and_names_the_restart() {
    let lab = lab(opts(1, true), |p| {
        base(p, "")
            .app(app_section("echo", p.listen, &[], &ups(p)))
            .client(client_section("client1", &["echo"], ""))
            .render()
    });
    let with = |reuse_port: bool, cluster: bool| {
        let p = &lab.paths;
        let mut w = base(p, "")
            .app(AppSection {
                reuse_port: Some(reuse_port),
                ..app_section("echo", p.listen, &[], &ups(p))
            })
            .client(client_section("client1", &["echo"], ""));
        if cluster {
            w = w.cluster(tlb::core::config::writer::ClusterSection::new("redis://127.0.0.1:1"));
        }
        w.render()
    };
    let e = lab.reload(&with(true, false)).expect_err("reuse_port on reload");
    assert!(format!("{e:#}").contains("reuse_port changed"), "{e:#}");
    let e = lab.reload(&with(false, true)).expect_err("[cluster] on reload");
    assert!(format!("{e:#}").contains("[cluster] changed"), "{e:#}");
    lab.reload(&with(false, false))
        .expect("the same listener, written out, reloads");
    let opts = lab.client(Some("client1")).expect("client1");
    all_relayed(&opts, 1);
}
