//! Write keys → sources, compared in constant time.
//!
//! Clients send the key as the HTTP Basic username (Segment's server SDKs) or as
//! `writeKey` in the body (analytics.js with sendBeacon). Every configured key is compared
//! on every lookup, with `subtle`'s constant-time equality, so response timing does not
//! reveal how much of a guessed key was right.

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use base64::Engine as _;
use subtle::ConstantTimeEq;
use touchstream_core::config::SourceConfig;
use touchstream_core::Channel;

use crate::privacy::{Privacy, PrivacyError};

/// A source a write key maps to.
#[derive(Debug)]
pub struct Source {
    /// Source name stored with each event.
    pub name: String,
    /// Channel for messages that name none.
    pub default_channel: Channel,
    /// What the source keeps of IPs, user agents and PII; `None` when it keeps
    /// everything (README "Privacy").
    pub privacy: Option<Privacy>,
}

/// The configured write keys.
pub struct Sources {
    entries: Vec<(Vec<u8>, Arc<Source>)>,
}

impl Sources {
    /// Build from config (validated: keys non-empty and unique, channels known);
    /// `hash_key` is `collector.privacy_hash_key`. Refuses a source that hashes without
    /// a key.
    pub fn new(cfg: &[SourceConfig], hash_key: &str) -> Result<Self, PrivacyError> {
        let entries = cfg
            .iter()
            .map(|s| {
                Ok((
                    s.write_key.as_bytes().to_vec(),
                    Arc::new(Source {
                        name: s.name.clone(),
                        default_channel: s.default_channel.parse().unwrap_or(Channel::Other),
                        privacy: Privacy::for_source(s, hash_key)?,
                    }),
                ))
            })
            .collect::<Result<_, PrivacyError>>()?;
        Ok(Self { entries })
    }

    /// The source of `key`, if any.
    pub fn lookup(&self, key: &str) -> Option<Arc<Source>> {
        let mut found = None;
        for (k, source) in &self.entries {
            if bool::from(k.as_slice().ct_eq(key.as_bytes())) {
                found = Some(source.clone());
            }
        }
        found
    }
}

/// The write key from an `Authorization: Basic` header (the username part).
pub fn basic_username(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    Some(user.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Sources {
        Sources::new(&[SourceConfig::new("web", "k-web", "web")], "").unwrap()
    }

    #[test]
    fn lookup_exact_key_only() {
        let s = sources();
        assert_eq!(s.lookup("k-web").unwrap().name, "web");
        assert!(s.lookup("k-we").is_none());
        assert!(s.lookup("k-web ").is_none());
        assert!(s.lookup("").is_none());
    }

    #[test]
    fn basic_header_username() {
        let mut h = HeaderMap::new();
        let enc = base64::engine::general_purpose::STANDARD.encode("k-web:");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {enc}").parse().unwrap(),
        );
        assert_eq!(basic_username(&h).as_deref(), Some("k-web"));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_username(&h), None);
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_username(&h), None);
    }
}
