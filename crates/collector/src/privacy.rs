//! What a source keeps of personal data (README "Privacy"): its client IPs (`store`,
//! `truncate`, `hash`, `drop`), user agents (`store`, `drop`) and the values of the
//! property and trait keys it lists as PII (`hash`, `drop`).
//!
//! Applied by the ingest pipeline to every touchpoint and every DLQ record of the source
//! before anything is produced to Kafka, so no topic, table or replay ever holds what the
//! source chose not to keep. A source with every option at its default has no
//! [`Privacy`] at all: its messages take the usual path with nothing parsed extra.
//!
//! Hashes are HMAC-SHA256 under `collector.privacy_hash_key`, hex: a plain hash of an
//! IPv4 address or a phone number is reversed by trying them all, a keyed one is not
//! without the key; the same value under the same key hashes the same, so hashed values
//! still join and count.

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;
use touchstream_core::config::{IpMode, PiiMode, SourceConfig, UserAgentMode};

/// The keyed MAC every hash is made with (cloned per value: the key is absorbed once).
type Keyed = Hmac<Sha256>;

/// Why a source's privacy options cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// A source hashes but no key is configured.
    #[error(
        "source {0:?} hashes (ip or pii = \"hash\") but collector.privacy_hash_key is empty; \
         set it (TOUCHSTREAM__COLLECTOR__PRIVACY_HASH_KEY_FILE) or choose another mode"
    )]
    MissingKey(String),
}

/// One source's privacy options, ready to apply.
pub struct Privacy {
    ip: IpMode,
    user_agent: UserAgentMode,
    pii: PiiMode,
    /// `pii_keys`.
    pii_keys: Vec<String>,
    /// Each of `pii_keys` as it appears quoted in canonical JSON text: a cheap test of
    /// whether a text can hold one before it is parsed.
    quoted_keys: Vec<String>,
    /// The keyed MAC, when an option hashes.
    keyed: Option<Keyed>,
}

impl std::fmt::Debug for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Privacy")
            .field("ip", &self.ip)
            .field("user_agent", &self.user_agent)
            .field("pii", &self.pii)
            .field("pii_keys", &self.pii_keys)
            .field("keyed", &self.keyed.is_some())
            .finish()
    }
}

/// Text the redacted touchpoint of the current message borrows; reused per request.
#[derive(Debug, Default)]
pub struct Redacted {
    ip: String,
    properties: String,
    traits: String,
    context: String,
}

impl Privacy {
    /// The options of `source`, or `None` when it keeps everything (the fast path);
    /// `hash_key` is `collector.privacy_hash_key`.
    pub fn for_source(source: &SourceConfig, hash_key: &str) -> Result<Option<Self>, PrivacyError> {
        if source.stores_everything() {
            return Ok(None);
        }
        let keyed = if source.needs_hash_key() {
            if hash_key.is_empty() {
                return Err(PrivacyError::MissingKey(source.name.clone()));
            }
            // HMAC takes a key of any length.
            Keyed::new_from_slice(hash_key.as_bytes()).ok()
        } else {
            None
        };
        Ok(Some(Self {
            ip: source.ip,
            user_agent: source.user_agent,
            pii: source.pii,
            quoted_keys: source
                .pii_keys
                .iter()
                .map(|k| Value::String(k.clone()).to_string())
                .collect(),
            pii_keys: source.pii_keys.clone(),
            keyed,
        }))
    }

    /// Keyed HMAC-SHA256 of `text`, lowercase hex (64 characters).
    pub fn hash(&self, text: &str) -> String {
        let Some(keyed) = &self.keyed else {
            // Unreachable for a source built by `for_source` (it needs the key to hash);
            // never fall back to keeping the value.
            return String::new();
        };
        let mut mac = keyed.clone();
        mac.update(text.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(64);
        for b in digest {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }

    /// What is kept of an IP address text (`None`: nothing). Text that is not an address
    /// cannot be truncated and is dropped in `truncate` mode.
    pub fn ip(&self, ip: &str) -> Option<String> {
        match self.ip {
            IpMode::Store => Some(ip.to_string()),
            IpMode::Truncate => ip
                .trim()
                .parse::<IpAddr>()
                .ok()
                .map(|a| truncate(a).to_string()),
            IpMode::Hash => Some(self.hash(ip)),
            IpMode::Drop => None,
        }
    }

    /// Whether user agents are dropped.
    pub fn drops_user_agent(&self) -> bool {
        self.user_agent == UserAgentMode::Drop
    }

    /// Apply the PII rule to the top-level keys of an object.
    fn redact_keys(&self, object: &mut Map<String, Value>) -> bool {
        let mut changed = false;
        for key in &self.pii_keys {
            match self.pii {
                PiiMode::Drop => changed |= object.remove(key).is_some(),
                PiiMode::Hash => {
                    if let Some(v) = object.get_mut(key) {
                        let text = match &mut *v {
                            Value::Null => continue,
                            Value::String(s) => std::mem::take(s),
                            other => other.to_string(),
                        };
                        *v = Value::String(self.hash(&text));
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    /// Apply the IP, user agent and PII rules to a `context` object: `ip`, `userAgent`,
    /// and the PII keys of `traits`.
    fn redact_context(&self, context: &mut Map<String, Value>) -> bool {
        let mut changed = false;
        if self.ip != IpMode::Store {
            let text = match context.get("ip") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
            };
            if let Some(text) = text {
                match self.ip(&text) {
                    Some(kept) => context.insert("ip".into(), Value::String(kept)),
                    None => context.remove("ip"),
                };
                changed = true;
            }
        }
        if self.drops_user_agent() {
            changed |= context.remove("userAgent").is_some();
        }
        if !self.pii_keys.is_empty() {
            if let Some(Value::Object(traits)) = context.get_mut("traits") {
                changed |= self.redact_keys(traits);
            }
        }
        changed
    }

    /// Whether a canonical object text can hold one of the PII keys.
    fn may_hold_pii(&self, text: &str) -> bool {
        self.quoted_keys.iter().any(|k| text.contains(k.as_str()))
    }

    /// `properties` or `traits` text with the PII keys treated, into `out`; false (and
    /// `out` untouched) when there is nothing to change.
    fn object_text(&self, text: &str, out: &mut String) -> bool {
        if self.pii_keys.is_empty() || !self.may_hold_pii(text) {
            return false;
        }
        rewrite(text, out, |m| self.redact_keys(m))
    }

    /// `context` text with `ip`, `userAgent` and `traits` treated, into `out`; false when
    /// nothing changes.
    fn context_text(&self, text: &str, out: &mut String) -> bool {
        let candidate = (self.ip != IpMode::Store && text.contains("\"ip\""))
            || (self.drops_user_agent() && text.contains("\"userAgent\""))
            || (!self.pii_keys.is_empty()
                && text.contains("\"traits\"")
                && self.may_hold_pii(text));
        candidate && rewrite(text, out, |m| self.redact_context(m))
    }

    /// A touchpoint as the source keeps it: its IP, user agent, properties, traits and
    /// context treated, borrowing changed text from `bufs`.
    pub fn apply<'a>(
        &self,
        tp: touchstream_core::avro::TouchpointRef<'a>,
        bufs: &'a mut Redacted,
    ) -> touchstream_core::avro::TouchpointRef<'a> {
        let mut tp = tp;
        let Redacted {
            ip,
            properties,
            traits,
            context,
        } = bufs;
        tp.ip = match (self.ip, tp.ip) {
            (IpMode::Store, kept) => kept,
            (_, None) => None,
            (_, Some(raw)) => match self.ip(raw) {
                Some(kept) => {
                    *ip = kept;
                    Some(ip.as_str())
                }
                None => None,
            },
        };
        if self.drops_user_agent() {
            tp.user_agent = None;
        }
        if self.object_text(tp.properties, properties) {
            tp.properties = properties.as_str();
        }
        if self.object_text(tp.traits, traits) {
            tp.traits = traits.as_str();
        }
        if self.context_text(tp.context, context) {
            tp.context = context.as_str();
        }
        tp
    }

    /// A message as a DLQ record may carry it: `properties`, `traits`, `context` treated
    /// as for a touchpoint. A message that is not a JSON object (unparsable text kept as a
    /// string, or another type) cannot be treated and is replaced by `null`.
    pub fn apply_to_message(&self, message: &mut Value) {
        let Value::Object(m) = message else {
            *message = Value::Null;
            return;
        };
        for field in ["properties", "traits"] {
            if let Some(Value::Object(o)) = m.get_mut(field) {
                self.redact_keys(o);
            }
        }
        if let Some(Value::Object(c)) = m.get_mut("context") {
            self.redact_context(c);
        }
    }
}

/// Parse an object text, let `change` edit it, and when it did, write the object's
/// canonical text to `out` (the same form the validator writes: `Value`'s own). Text
/// that does not parse (never the validator's output) becomes `{}`: what cannot be
/// treated is not kept.
fn rewrite(
    text: &str,
    out: &mut String,
    change: impl FnOnce(&mut Map<String, Value>) -> bool,
) -> bool {
    let Ok(mut object) = serde_json::from_str::<Map<String, Value>>(text) else {
        out.clear();
        out.push_str("{}");
        return true;
    };
    if !change(&mut object) {
        return false;
    }
    out.clear();
    out.push_str(&Value::Object(object).to_string());
    true
}

/// An address truncated to its network: IPv4 to its /24, IPv6 to its /48 (an
/// IPv4-mapped IPv6 address is treated as the IPv4 one).
pub fn truncate(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(v4) & 0xffff_ff00)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => truncate(IpAddr::V4(v4)),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 80) - 1),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use touchstream_core::avro::TouchpointRef;
    use touchstream_core::MessageType;

    use super::*;

    const KEY: &str = "0123456789abcdef-test-key";

    fn source(f: impl FnOnce(&mut SourceConfig)) -> SourceConfig {
        let mut s = SourceConfig::new("web", "k", "web");
        f(&mut s);
        s
    }

    fn privacy(f: impl FnOnce(&mut SourceConfig)) -> Privacy {
        Privacy::for_source(&source(f), KEY).unwrap().unwrap()
    }

    #[test]
    fn defaults_have_no_privacy_step() {
        assert!(Privacy::for_source(&source(|_| {}), "").unwrap().is_none());
    }

    #[test]
    fn hashing_without_a_key_is_refused() {
        for s in [
            source(|s| s.ip = IpMode::Hash),
            source(|s| s.pii_keys = vec!["email".into()]),
        ] {
            assert!(matches!(
                Privacy::for_source(&s, ""),
                Err(PrivacyError::MissingKey(_))
            ));
        }
        // Truncating and dropping need no key.
        let s = source(|s| {
            s.ip = IpMode::Truncate;
            s.pii_keys = vec!["email".into()];
            s.pii = PiiMode::Drop;
        });
        assert!(Privacy::for_source(&s, "").unwrap().is_some());
    }

    #[test]
    fn ipv4_truncates_to_24_and_ipv6_to_48() {
        let p = privacy(|s| s.ip = IpMode::Truncate);
        assert_eq!(p.ip("203.0.113.77").as_deref(), Some("203.0.113.0"));
        assert_eq!(p.ip("10.1.2.255").as_deref(), Some("10.1.2.0"));
        assert_eq!(
            p.ip("2001:db8:abcd:12:34::1").as_deref(),
            Some("2001:db8:abcd::")
        );
        assert_eq!(
            p.ip("2001:db8:ab:ffff:ffff:ffff:ffff:ffff").as_deref(),
            Some("2001:db8:ab::")
        );
        assert_eq!(p.ip("::ffff:198.51.100.9").as_deref(), Some("198.51.100.0"));
        assert_eq!(p.ip("not an address"), None, "cannot truncate: dropped");
    }

    #[test]
    fn hmac_is_stable_keyed_and_hex() {
        let p = privacy(|s| s.ip = IpMode::Hash);
        let h = p.ip("203.0.113.77").unwrap();
        assert_eq!(h.len(), 64);
        assert!(h
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(p.ip("203.0.113.77").unwrap(), h, "stable");
        assert_ne!(p.ip("203.0.113.78").unwrap(), h);
        let other = Privacy::for_source(&source(|s| s.ip = IpMode::Hash), "another-key-0123456789")
            .unwrap()
            .unwrap();
        assert_ne!(other.ip("203.0.113.77").unwrap(), h, "keyed");
        // RFC 4231 test case 2 (key "Jefe"): the MAC is HMAC-SHA256 itself.
        let jefe = Privacy::for_source(&source(|s| s.ip = IpMode::Hash), "Jefe")
            .unwrap()
            .unwrap();
        assert_eq!(
            jefe.hash("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn store_and_drop_ip() {
        assert_eq!(
            privacy(|s| s.user_agent = UserAgentMode::Drop)
                .ip("1.2.3.4")
                .as_deref(),
            Some("1.2.3.4")
        );
        assert_eq!(privacy(|s| s.ip = IpMode::Drop).ip("1.2.3.4"), None);
    }

    fn touchpoint<'a>(properties: &'a str, traits: &'a str, context: &'a str) -> TouchpointRef<'a> {
        TouchpointRef {
            event_id: "web:m",
            message_type: MessageType::Identify,
            event: None,
            anonymous_id: Some("a"),
            user_id: None,
            previous_id: None,
            event_time_ms: 0,
            timestamp_ms: None,
            sent_at_ms: None,
            received_at_ms: 0,
            source: "web",
            channel: "web",
            properties,
            traits,
            context,
            ip: Some("203.0.113.77"),
            user_agent: Some("Mozilla/5.0"),
            extra: "{}",
        }
    }

    fn object(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_touchpoint_is_treated_everywhere_it_carries_the_data() {
        let p = privacy(|s| {
            s.ip = IpMode::Truncate;
            s.user_agent = UserAgentMode::Drop;
            s.pii_keys = vec!["email".into(), "phone".into()];
        });
        let props = r#"{"email":"a@b.example","plan":"pro"}"#;
        let traits = r#"{"name":"Ann","phone":4155550100}"#;
        let context = r#"{"ip":"198.51.100.23","locale":"en","traits":{"email":"a@b.example"},"userAgent":"Mozilla/5.0"}"#;
        let mut bufs = Redacted::default();
        let tp = p.apply(touchpoint(props, traits, context), &mut bufs);
        assert_eq!(tp.ip, Some("203.0.113.0"));
        assert_eq!(tp.user_agent, None);
        let email = p.hash("a@b.example");
        assert_eq!(
            object(tp.properties),
            json!({"email": email, "plan": "pro"})
        );
        assert_eq!(
            object(tp.traits),
            json!({"name": "Ann", "phone": p.hash("4155550100")})
        );
        assert_eq!(
            object(tp.context),
            json!({"ip": "198.51.100.0", "locale": "en", "traits": {"email": email}})
        );
        // Canonical text, as the validator writes it.
        assert_eq!(tp.context, object(tp.context).to_string());
    }

    #[test]
    fn drop_modes_remove_keys_and_untouched_text_is_borrowed_as_is() {
        let p = privacy(|s| {
            s.ip = IpMode::Drop;
            s.pii_keys = vec!["email".into()];
            s.pii = PiiMode::Drop;
        });
        let props = r#"{"plan":"pro"}"#;
        let traits = r#"{"email":"a@b.example","name":"Ann"}"#;
        let context = r#"{"ip":"198.51.100.23","userAgent":"X"}"#;
        let mut bufs = Redacted::default();
        let tp = p.apply(touchpoint(props, traits, context), &mut bufs);
        assert_eq!(tp.ip, None);
        assert_eq!(tp.user_agent, Some("Mozilla/5.0"), "user agent stored");
        assert!(
            std::ptr::eq(tp.properties, props),
            "no PII key: not rewritten"
        );
        assert_eq!(object(tp.traits), json!({"name": "Ann"}));
        assert_eq!(object(tp.context), json!({"userAgent": "X"}));
    }

    #[test]
    fn a_dlq_message_is_treated_and_unreadable_text_withheld() {
        let p = privacy(|s| {
            s.ip = IpMode::Hash;
            s.user_agent = UserAgentMode::Drop;
            s.pii_keys = vec!["email".into()];
        });
        let mut m = json!({
            "type": "identify",
            "traits": {"email": "a@b.example"},
            "properties": {"email": "a@b.example"},
            "context": {"ip": "198.51.100.23", "userAgent": "X", "traits": {"email": "a@b.example"}},
        });
        p.apply_to_message(&mut m);
        let email = p.hash("a@b.example");
        assert_eq!(
            m,
            json!({
                "type": "identify",
                "traits": {"email": email},
                "properties": {"email": email},
                "context": {"ip": p.hash("198.51.100.23"), "traits": {"email": email}},
            })
        );
        let mut text = Value::String("{\"traits\":{\"email\":\"a@b".into());
        p.apply_to_message(&mut text);
        assert_eq!(text, Value::Null);
        let mut out = String::new();
        assert!(rewrite("{not json", &mut out, |_| false));
        assert_eq!(out, "{}", "what cannot be read is not kept");
    }
}
