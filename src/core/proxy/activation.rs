//! Listening sockets handed to tlb instead of bound by it (systemd socket
//! activation: `LISTEN_FDS`, `LISTEN_PID`; or the running instance, for
//! `tlb serve --upgrade`), matched to the config's listen addresses.
//!
//! Promises: an inherited socket serves only the app listener (or the admin
//! endpoint) whose configured address equals its bound address; every
//! address of the config that no inherited socket serves is bound as usual;
//! a socket from systemd that is not a listening TCP socket, or that no
//! address of the config names, is an error naming its address and the
//! fix, before anything is served (tlb never accepts on a socket it cannot
//! route); one from the running instance that the new config no longer
//! names is closed (an upgrade may drop an app), and logged;
//! nothing here uses `unsafe` (the `listenfd` crate turns descriptors into
//! listeners after checking their type).

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result, bail};

use crate::core::config::Config;
use crate::core::proxy::listener::bind_shared_listener;

/// Listening sockets handed over, by bound address.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<(SocketAddr, TcpListener)>,
    /// Where they came from, for messages ("systemd").
    source: String,
    /// A socket no address names is an error (systemd), else closed.
    strict: bool,
}

impl Inherited {
    /// Nothing handed over: every listener is bound.
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// The sockets systemd passed (`LISTEN_FDS` descriptors from 3, for this
    /// process: `LISTEN_PID`); none when the variables are absent or name
    /// another process.
    pub fn from_systemd() -> Result<Inherited> {
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::with_capacity(fds.len());
        for i in 0..fds.len() {
            let fd = i + 3;
            let fix = "pass only TCP stream sockets (ListenStream=IP:PORT) in the .socket unit";
            let listener = fds
                .take_tcp_listener(i)
                .with_context(|| format!("socket activation: descriptor {fd}: {fix}"))?
                .with_context(|| format!("socket activation: descriptor {fd} was already taken"))?;
            if !socket2::SockRef::from(&listener).is_listener().unwrap_or(false) {
                bail!("socket activation: descriptor {fd} is a TCP socket but not listening; {fix}");
            }
            let addr = listener
                .local_addr()
                .with_context(|| format!("socket activation: descriptor {fd}: reading its address"))?;
            sockets.push((addr, listener));
        }
        Ok(Inherited {
            sockets,
            source: "systemd".into(),
            strict: true,
        })
    }

    /// Sockets handed over by the running instance (`source` names it).
    pub fn handed(sockets: Vec<(SocketAddr, TcpListener)>, source: String) -> Inherited {
        Inherited {
            sockets,
            source,
            strict: false,
        }
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The inherited socket bound to `addr`, if any.
    fn take(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let i = self.sockets.iter().position(|(a, _)| *a == addr)?;
        let (_, l) = self.sockets.swap_remove(i);
        tracing::info!("listening on {addr} (socket from {})", self.source);
        Some(l)
    }

    /// The apps' listeners, in [`Config::listen_sockets`] order: inherited
    /// where one is bound to the address, bound here otherwise.
    pub fn app_listeners(&mut self, config: &Config) -> Result<Vec<TcpListener>> {
        config
            .listen_sockets()
            .into_iter()
            .map(|(addr, reuse_port)| match self.take(addr) {
                Some(l) => Ok(l),
                None => bind_shared_listener(addr, reuse_port),
            })
            .collect()
    }

    /// The admin endpoint's inherited socket, if one is bound to its address.
    pub fn admin_listener(&mut self, config: &Config) -> Option<TcpListener> {
        self.take(config.admin.as_ref()?.listen)
    }

    /// Fails if a handed socket is left over: no address of the config names it.
    pub fn finish(self) -> Result<()> {
        if !self.strict {
            for (addr, _) in &self.sockets {
                tracing::info!(
                    "{addr}: no [[app]] listens there any more; its socket from {} is closed",
                    self.source
                );
            }
            return Ok(());
        }
        match self.sockets.first() {
            None => Ok(()),
            Some((addr, _)) => bail!(
                "socket activation: {} passed a socket on {addr}, but no [[app]] listen (nor [admin] listen) is {addr}; write that exact address in the config, or remove it from the .socket unit (ListenStream=)",
                self.source
            ),
        }
    }
}
