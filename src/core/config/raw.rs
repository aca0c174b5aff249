//! The `tlb.toml` structures as written: serde types that mirror the file,
//! with spans kept where validation needs to point at a line.
//!
//! Promises: unknown keys are refused (`deny_unknown_fields`) and durations
//! are parsed here (human form, positive unless `OrZero`, at most 100
//! years); every other check is left to `validate`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) tls: RawTls,
    pub(crate) admin: Option<RawAdmin>,
    pub(crate) control: Option<RawControl>,
    pub(crate) cluster: Option<Spanned<RawCluster>>,
    #[serde(default)]
    pub(crate) limits: RawGlobalLimits,
    #[serde(default)]
    pub(crate) defaults: Option<Spanned<RawLimits>>,
    #[serde(default)]
    pub(crate) timeouts: RawTimeouts,
    #[serde(default, rename = "app")]
    pub(crate) apps: Vec<Spanned<RawApp>>,
    #[serde(default, rename = "client")]
    pub(crate) clients: Vec<Spanned<RawClient>>,
    #[serde(default, rename = "trust_domain")]
    pub(crate) trust_domains: Vec<Spanned<RawTrustDomain>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrustDomain {
    pub(crate) name: Spanned<String>,
    pub(crate) ca: Spanned<PathBuf>,
    pub(crate) crl: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) crl: Option<PathBuf>,
    pub(crate) min_version: Option<Spanned<String>>,
    pub(crate) session_lifetime: Option<Spanned<HumanDurationOrZero>>,
    #[serde(default)]
    pub(crate) keep_deauthorized: bool,
    pub(crate) watch: Option<Spanned<HumanDurationOrZero>>,
    pub(crate) expiry_warning: Option<Spanned<HumanDurationOrZero>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGlobalLimits {
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) max_handshakes: Option<Spanned<i64>>,
    pub(crate) max_handshakes_per_ip: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Spanned<String>,
    pub(crate) token_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    pub(crate) socket: Spanned<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub(crate) redis: Spanned<String>,
    pub(crate) redis_password_file: Option<Spanned<PathBuf>>,
    pub(crate) redis_ca: Option<Spanned<PathBuf>>,
    pub(crate) redis_cert: Option<Spanned<PathBuf>>,
    pub(crate) redis_key: Option<Spanned<PathBuf>>,
    pub(crate) prefix: Option<Spanned<String>>,
    pub(crate) instance: Option<Spanned<String>>,
    pub(crate) instances: Option<Spanned<i64>>,
    pub(crate) timeout: Option<Spanned<HumanDuration>>,
    pub(crate) liveness_ttl: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) connection_rate: Option<Spanned<f64>>,
    pub(crate) burst: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub(crate) handshake: Option<HumanDuration>,
    pub(crate) connect: Option<HumanDuration>,
    pub(crate) idle: Option<HumanDuration>,
    pub(crate) drain: Option<HumanDuration>,
    pub(crate) max_lifetime: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    pub(crate) name: Spanned<String>,
    pub(crate) listen: Spanned<String>,
    #[serde(default)]
    pub(crate) server_names: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(crate) upstreams: Option<Spanned<Vec<Spanned<String>>>>,
    /// Any TOML value, so that `true` gets an error saying what to write.
    pub(crate) proxy_protocol: Option<Spanned<toml::Value>>,
    pub(crate) proxy_protocol_cert: Option<Spanned<bool>>,
    pub(crate) reuse_port: Option<Spanned<bool>>,
    pub(crate) mode: Option<Spanned<String>>,
    pub(crate) health: Option<Spanned<RawHealth>>,
    pub(crate) upstream_tls: Option<Spanned<RawUpstreamTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub(crate) interval: Option<Spanned<HumanDuration>>,
    pub(crate) timeout: Option<Spanned<HumanDuration>>,
    pub(crate) rise: Option<Spanned<i64>>,
    pub(crate) fall: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) send: String,
    #[serde(default)]
    pub(crate) expect: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) ca: PathBuf,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) server_name: Option<Spanned<String>>,
    pub(crate) min_version: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClient {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) apps: Vec<Spanned<String>>,
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) connection_rate: Option<Spanned<f64>>,
    pub(crate) burst: Option<Spanned<i64>>,
    pub(crate) spki_sha256: Option<Spanned<String>>,
    pub(crate) uri: Option<Spanned<String>>,
    pub(crate) dns: Option<Spanned<String>>,
}

/// A human duration (`500ms`, `5s`, `10m`), greater than zero.
pub(crate) struct HumanDuration(pub(crate) Duration);

/// A human duration that may be zero (`"0s"` turns a feature off).
pub(crate) struct HumanDurationOrZero(pub(crate) Duration);

/// Longest duration accepted anywhere in the config: 100 years, so that
/// adding it to "now" can never overflow.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

fn parse_human<E: serde::de::Error>(s: &str) -> Result<Duration, E> {
    let dur = humantime::parse_duration(s.trim()).map_err(|e| {
        E::custom(format!(
            "invalid duration {s:?} ({e}); write e.g. \"500ms\", \"5s\", \"10m\""
        ))
    })?;
    if dur > MAX_DURATION {
        return Err(E::custom(format!(
            "duration {s:?} is too long; the maximum is 100 years"
        )));
    }
    Ok(dur)
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let dur = parse_human(&s)?;
        if dur.is_zero() {
            return Err(serde::de::Error::custom("duration must be greater than zero"));
        }
        Ok(HumanDuration(dur))
    }
}

impl<'de> Deserialize<'de> for HumanDurationOrZero {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_human(&s).map(HumanDurationOrZero)
    }
}
