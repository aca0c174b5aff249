//! The receiving side of the PROXY protocol, for `tlb upstream
//! --proxy-protocol`: [`parse`] reads a v1 or v2 header (decoding is the
//! `ppp` crate's) and the TLVs tlb sends; [`read_header`] reads one from a
//! connection with a timeout and a size bound, and never past its end.
//!
//! Promises: [`parse`] never panics and never consumes more than the
//! header: `Done { len, .. }` has `len` equal to the header's own length,
//! and the bytes after it belong to the client. At most [`MAX_V2`] bytes
//! (v2) or [`MAX_V1`] (v1) are buffered before a header is complete; a
//! header that is neither, has malformed TLVs, or non-UTF-8 text where text
//! belongs, is [`Parse::Malformed`] with a reason for the log line.

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt};
use ppp::PartialResult;
use ppp::v2::{Command, TypeLengthValues};

use crate::core::proxy::proxy_header::{TLV_CLIENT_CERT, TLV_IDENTITY, TLV_SPIFFE_ID};
use crate::core::rt::timeout;

/// Longest v2 header: 16 bytes, then a 16-bit length.
pub const MAX_V2: usize = 16 + 65535;
/// Longest v1 header (the protocol's own bound, CRLF included).
pub const MAX_V1: usize = 107;

/// What a header said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// 1 or 2.
    pub version: u8,
    /// A v2 `LOCAL` or a v1 `UNKNOWN` header (a health check): no addresses.
    pub local: bool,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    /// AUTHORITY (0x02).
    pub sni: Option<String>,
    /// ALPN (0x01).
    pub alpn: Option<Vec<u8>>,
    /// The SSL TLV (0x20), if any.
    pub ssl: Option<Ssl>,
    /// 0xE0.
    pub identity: Option<String>,
    /// 0xE1.
    pub spiffe_id: Option<String>,
    /// 0xE2, DER.
    pub client_cert: Option<Vec<u8>>,
}

/// The SSL TLV: its client flags and verify result, and the sub-TLVs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ssl {
    pub client: u8,
    pub verify: u32,
    pub version: Option<String>,
    pub cn: Option<String>,
    pub cipher: Option<String>,
    pub sig_alg: Option<String>,
    pub key_alg: Option<String>,
}

/// The result of [`parse`] on the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// A header may still come: read more.
    Incomplete,
    /// A header of `len` bytes (the rest is the client's).
    Done { len: usize, header: Box<Received> },
    /// Not a PROXY header, or a broken one: why.
    Malformed(String),
}

/// Parses the start of `buf` as a v1 (`PROXY ...`) or v2 header.
pub fn parse(buf: &[u8]) -> Parse {
    match buf.first() {
        None => Parse::Incomplete,
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(b) => Parse::Malformed(format!("no PROXY header (the first byte is 0x{b:02x})")),
    }
}

/// v1 is parsed once its line is whole: `ppp` judges a line cut inside a
/// field (`... 53211 8` of `... 53211 8443`) as malformed.
fn parse_v1(buf: &[u8]) -> Parse {
    const PREFIX: &[u8] = b"PROXY ";
    let window = &buf[..buf.len().min(MAX_V1)];
    let seen = window.len().min(PREFIX.len());
    if window[..seen] != PREFIX[..seen] {
        return Parse::Malformed("no PROXY header (the first bytes are not \"PROXY \")".into());
    }
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_V1 {
            Parse::Malformed(format!("PROXY v1 header without CRLF in its first {MAX_V1} bytes"))
        } else {
            Parse::Incomplete
        };
    };
    let h = match ppp::v1::Header::try_from(&window[..=end]) {
        Ok(h) => h,
        Err(e) => return Parse::Malformed(format!("malformed PROXY v1 header: {e}")),
    };
    let mut out = Received {
        version: 1,
        ..Received::default()
    };
    match h.addresses {
        ppp::v1::Addresses::Unknown => out.local = true,
        ppp::v1::Addresses::Tcp4(a) => {
            out.source = Some(SocketAddr::from((a.source_address, a.source_port)));
            out.destination = Some(SocketAddr::from((a.destination_address, a.destination_port)));
        }
        ppp::v1::Addresses::Tcp6(a) => {
            out.source = Some(SocketAddr::from((a.source_address, a.source_port)));
            out.destination = Some(SocketAddr::from((a.destination_address, a.destination_port)));
        }
    }
    Parse::Done {
        len: h.header.len(),
        header: Box::new(out),
    }
}

fn parse_v2(buf: &[u8]) -> Parse {
    let r = ppp::v2::Header::try_from(buf);
    if r.is_incomplete() {
        return Parse::Incomplete;
    }
    let h = match r {
        Ok(h) => h,
        Err(e) => return Parse::Malformed(format!("malformed PROXY v2 header: {e}")),
    };
    let mut out = Received {
        version: 2,
        local: h.command == Command::Local,
        ..Received::default()
    };
    match h.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            out.source = Some(SocketAddr::from((a.source_address, a.source_port)));
            out.destination = Some(SocketAddr::from((a.destination_address, a.destination_port)));
        }
        ppp::v2::Addresses::IPv6(a) => {
            out.source = Some(SocketAddr::from((a.source_address, a.source_port)));
            out.destination = Some(SocketAddr::from((a.destination_address, a.destination_port)));
        }
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => {}
    }
    if let Err(e) = read_tlvs(h.tlvs(), &mut out) {
        return Parse::Malformed(format!("malformed PROXY v2 header: {e}"));
    }
    Parse::Done {
        len: h.len(),
        header: Box::new(out),
    }
}

/// The TLVs tlb sends, into `out` (the first of each kind; others skipped).
fn read_tlvs(tlvs: TypeLengthValues<'_>, out: &mut Received) -> Result<(), String> {
    for tlv in tlvs {
        let tlv = tlv.map_err(|e| e.to_string())?;
        let v = tlv.value.as_ref();
        match tlv.kind {
            0x01 => first(&mut out.alpn, || Ok(v.to_vec()))?,
            0x02 => first(&mut out.sni, || text("AUTHORITY", v))?,
            0x20 => first(&mut out.ssl, || ssl(v))?,
            TLV_IDENTITY => first(&mut out.identity, || text("identity (0xE0)", v))?,
            TLV_SPIFFE_ID => first(&mut out.spiffe_id, || text("SPIFFE ID (0xE1)", v))?,
            TLV_CLIENT_CERT => first(&mut out.client_cert, || Ok(v.to_vec()))?,
            _ => {}
        }
    }
    Ok(())
}

fn first<T>(slot: &mut Option<T>, value: impl FnOnce() -> Result<T, String>) -> Result<(), String> {
    if slot.is_none() {
        *slot = Some(value()?);
    }
    Ok(())
}

fn text(what: &str, v: &[u8]) -> Result<String, String> {
    String::from_utf8(v.to_vec()).map_err(|_| format!("TLV {what} is not UTF-8"))
}

/// The SSL TLV's value: client (1 byte), verify (4), sub-TLVs.
fn ssl(v: &[u8]) -> Result<Ssl, String> {
    let (head, subs) = v
        .split_at_checked(5)
        .ok_or_else(|| format!("SSL TLV of {} bytes, shorter than its 5-byte head", v.len()))?;
    let mut out = Ssl {
        client: head[0],
        verify: u32::from_be_bytes([head[1], head[2], head[3], head[4]]),
        ..Ssl::default()
    };
    for sub in TypeLengthValues::from(subs) {
        let sub = sub.map_err(|e| format!("in the SSL TLV: {e}"))?;
        let v = sub.value.as_ref();
        match sub.kind {
            0x21 => first(&mut out.version, || text("SSL_VERSION", v))?,
            0x22 => first(&mut out.cn, || text("SSL_CN", v))?,
            0x23 => first(&mut out.cipher, || text("SSL_CIPHER", v))?,
            0x24 => first(&mut out.sig_alg, || text("SSL_SIG_ALG", v))?,
            0x25 => first(&mut out.key_alg, || text("SSL_KEY_ALG", v))?,
            _ => {}
        }
    }
    Ok(out)
}

/// How many more bytes `buf` (the start of a header) certainly still
/// needs: up to the 8 bytes both versions have; for v1, one at a time
/// until its LF; for v2, up to its 16-byte prefix, then what its length
/// field says. At least 1 while the header is incomplete.
fn unread_header_bytes(buf: &[u8]) -> usize {
    if buf.len() < 8 {
        return 8 - buf.len();
    }
    if buf.starts_with(b"PROXY") {
        return 1;
    }
    if buf.len() < 16 {
        return 16 - buf.len();
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    len.saturating_sub(buf.len()).max(1)
}

/// Reads one header from `conn` within `limit`, and not one byte past it
/// (the client's bytes, or a TLS handshake, are left unread). `Err`: why
/// there is none, for one log line.
pub async fn read_header<R: AsyncRead + Unpin>(conn: &mut R, limit: Duration) -> Result<Received, String> {
    let run = async {
        let mut buf: Vec<u8> = Vec::with_capacity(512);
        let mut chunk = [0u8; 4096];
        loop {
            match parse(&buf) {
                Parse::Done { len, header } if len == buf.len() => return Ok(*header),
                Parse::Done { .. } => return Err("internal: read past the PROXY header".into()),
                Parse::Malformed(why) => return Err(why),
                Parse::Incomplete => {}
            }
            // Never past the header (what follows may be a TLS handshake
            // that another reader must see whole); bounded: v1 is refused at
            // MAX_V1 bytes, v2 is complete or malformed by MAX_V2.
            let want = chunk
                .len()
                .min(unread_header_bytes(&buf))
                .min(MAX_V2.saturating_sub(buf.len()));
            if want == 0 {
                return Err(format!("no complete PROXY header in {} bytes", buf.len()));
            }
            let n = conn
                .read(&mut chunk[..want])
                .await
                .map_err(|e| format!("reading the PROXY header: {e}"))?;
            if n == 0 {
                return Err(if buf.is_empty() {
                    "closed before any PROXY header".to_string()
                } else {
                    format!("closed after {} bytes of an incomplete PROXY header", buf.len())
                });
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    timeout(limit, run)
        .await
        .unwrap_or_else(|_| Err(format!("no PROXY header within {limit:?}")))
}

#[cfg(test)]
mod tests;
