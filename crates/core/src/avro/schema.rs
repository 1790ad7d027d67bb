//! The schema's fingerprint, as the Avro specification defines it: CRC-64-AVRO (Rabin)
//! over the Parsing Canonical Form. Written here rather than taken from apache-avro,
//! whose canonical form differs from every other library's (see
//! [`parsing_canonical_form`]).

use std::sync::OnceLock;

/// CRC-64-AVRO (Rabin) fingerprint, exactly as the Avro specification's reference code.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: OnceLock<[u64; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & 0u64.wrapping_sub(fp & 1));
            }
            *slot = fp;
        }
        t
    });
    bytes.iter().fold(EMPTY, |fp, b| {
        (fp >> 8) ^ table[((fp ^ u64::from(*b)) & 0xff) as usize]
    })
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The schema's Parsing Canonical Form (Avro spec: PRIMITIVES, FULLNAMES, STRIP, ORDER,
/// STRINGS, WHITESPACE). Written here because apache-avro 0.22 keeps
/// `{"type":"long"}` for logical-type fields instead of reducing it to `"long"`, which gives
/// a fingerprint no other Avro library agrees with.
pub fn parsing_canonical_form(schema: &serde_json::Value, namespace: Option<&str>) -> String {
    use serde_json::Value as J;
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let fullname = |name: &str, ns: Option<&str>| match (name.contains('.'), ns) {
        (false, Some(ns)) if !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    };
    match schema {
        J::String(s) if PRIMITIVES.contains(&s.as_str()) => quote(s),
        J::String(s) => quote(&fullname(s, namespace)),
        J::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| parsing_canonical_form(i, namespace))
                .collect::<Vec<_>>()
                .join(",")
        ),
        J::Object(m) => {
            let ty = m.get("type");
            match ty.and_then(J::as_str) {
                Some(t) if PRIMITIVES.contains(&t) => quote(t),
                Some(t @ ("record" | "error" | "enum" | "fixed")) => {
                    let own_ns = m.get("namespace").and_then(J::as_str).or(namespace);
                    let name = fullname(
                        m.get("name").and_then(J::as_str).unwrap_or_default(),
                        own_ns,
                    );
                    let inner_ns = name.rsplit_once('.').map(|(ns, _)| ns.to_string());
                    let mut out = format!("{{\"name\":{},\"type\":{}", quote(&name), quote(t));
                    match t {
                        "enum" => {
                            let symbols = m.get("symbols").cloned().unwrap_or(J::Array(Vec::new()));
                            out.push_str(&format!(",\"symbols\":{symbols}"));
                        }
                        "fixed" => {
                            let size = m.get("size").cloned().unwrap_or(J::Null);
                            out.push_str(&format!(",\"size\":{size}"));
                        }
                        _ => {
                            let fields: Vec<String> = m
                                .get("fields")
                                .and_then(J::as_array)
                                .map(|fs| {
                                    fs.iter()
                                        .map(|f| {
                                            format!(
                                                "{{\"name\":{},\"type\":{}}}",
                                                quote(
                                                    f.get("name")
                                                        .and_then(J::as_str)
                                                        .unwrap_or_default()
                                                ),
                                                parsing_canonical_form(
                                                    f.get("type").unwrap_or(&J::Null),
                                                    inner_ns.as_deref()
                                                )
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            out.push_str(&format!(",\"fields\":[{}]", fields.join(",")));
                        }
                    }
                    out.push('}');
                    out
                }
                Some("array") => format!(
                    "{{\"type\":\"array\",\"items\":{}}}",
                    parsing_canonical_form(m.get("items").unwrap_or(&J::Null), namespace)
                ),
                Some("map") => format!(
                    "{{\"type\":\"map\",\"values\":{}}}",
                    parsing_canonical_form(m.get("values").unwrap_or(&J::Null), namespace)
                ),
                Some(named) => quote(&fullname(named, namespace)),
                None => parsing_canonical_form(ty.unwrap_or(&J::Null), namespace),
            }
        }
        other => other.to_string(),
    }
}
