//! Validation of a parsed `tlb.toml`: from the as-written structures to the
//! typed [`Config`], one module per section.
//!
//! Promises: sections are checked in one fixed order (`[tls]`, `[limits]`,
//! `[admin]`, `[defaults]`, `[timeouts]`, `[[app]]`, `[[trust_domain]]`,
//! `[[client]]`, `[cluster]`, then the checks across sections), the first problem found is returned, and every
//! error names the file, line and key.

mod admin;
mod app_tables;
mod apps;
mod clients;
mod cluster;
mod ctx;
mod limits;
mod tls;
mod trust_domains;

use std::path::Path;

use crate::core::config::error::ConfigError;
use crate::core::config::model::{Config, ControlSettings};
use crate::core::config::raw::RawConfig;

/// `raw` (parsed from `text`, read from `path`) checked and defaulted.
pub(crate) fn config(raw: RawConfig, text: &str, path: &Path) -> Result<Config, ConfigError> {
    let ctx = ctx::Ctx { text, path };
    let tls = tls::settings(raw.tls, &ctx)?;
    let limits = limits::global(&raw.limits, &ctx)?;
    let (admin, admin_span) = admin::settings(raw.admin, &ctx)?;
    let control = raw.control.map(|c| ControlSettings {
        socket: ctx.resolve(c.socket.into_inner()),
    });
    let defaults = limits::defaults(&raw.defaults, &ctx)?;
    let timeouts = limits::timeouts(raw.timeouts);
    let apps = apps::apps(raw.apps, &ctx)?;
    let trust_domains = trust_domains::trust_domains(raw.trust_domains, &ctx)?;
    let clients = clients::clients(raw.clients, &apps, defaults, &trust_domains, &ctx)?;
    let listeners: Vec<_> = apps.iter().map(|a| (a.listen, a.reuse_port)).collect();
    let cluster = cluster::settings(raw.cluster, &listeners, &ctx)?;
    admin::check_own_port(admin.as_ref(), admin_span, &apps, &ctx)?;
    Ok(Config {
        path: path.to_path_buf(),
        tls,
        admin,
        control,
        cluster,
        limits,
        defaults,
        timeouts,
        apps,
        clients,
        trust_domains,
    })
}
