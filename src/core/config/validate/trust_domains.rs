//! `[[trust_domain]]` validation: SPIFFE trust domains and the CA of each.
//!
//! Promises: names are valid trust domains (as in a SPIFFE ID) and unique;
//! paths are resolved like every path (the files are read when the server
//! loads the config).

use toml::Spanned;

use crate::core::config::error::ConfigError;
use crate::core::config::model::TrustDomain;
use crate::core::config::raw::RawTrustDomain;
use crate::core::config::validate::ctx::Ctx;
use crate::core::pki::sans;

/// Every `[[trust_domain]]` checked, in the order written.
pub(crate) fn trust_domains(raw: Vec<Spanned<RawTrustDomain>>, ctx: &Ctx<'_>) -> Result<Vec<TrustDomain>, ConfigError> {
    let mut out: Vec<TrustDomain> = Vec::with_capacity(raw.len());
    for (i, td) in raw.into_iter().enumerate() {
        let td = td.into_inner();
        let key = format!("trust_domain[{i}].name");
        let name = td.name.get_ref().trim().to_string();
        sans::check_trust_domain(&name, &key).map_err(|e| ctx.err(td.name.span(), key.clone(), e.to_string()))?;
        if out.iter().any(|d| d.name == name) {
            return Err(ctx.err(
                td.name.span(),
                key,
                format!("duplicate trust domain {name:?}; each has one CA (put several CA certificates in its file)"),
            ));
        }
        out.push(TrustDomain {
            name,
            ca: ctx.resolve(td.ca.into_inner()),
            crl: td.crl.map(|p| ctx.resolve(p)),
        });
    }
    Ok(out)
}
