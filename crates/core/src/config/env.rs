//! Environment overrides: `TOUCHSTREAM__<SECTION>__<KEY>=value` and
//! `TOUCHSTREAM__<SECTION>__<KEY>_FILE=/path`, applied to the parsed TOML before it is
//! turned into a [`Config`](super::Config) (the rules are in the parent module's doc).

use super::{ConfigError, ENV_PREFIX};

/// Set the key `key` (an env variable name starting with [`ENV_PREFIX`]) in `root`:
/// to the contents of the file `raw` names when the key ends in `_FILE`, else to `raw`
/// read as a TOML value.
pub(super) fn apply_override(
    root: &mut toml::Table,
    key: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Invalid {
        origin: Some(key.to_string()),
        message,
    };
    let rest = &key[ENV_PREFIX.len()..];
    let mut path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if path.iter().any(|s| s.is_empty()) {
        return Err(err("empty path segment".into()));
    }
    let value = match path.last().and_then(|l| l.strip_suffix("_file")) {
        Some(stripped) => {
            let stripped = stripped.to_string();
            let contents = std::fs::read_to_string(raw)
                .map_err(|e| err(format!("reading secret file {raw}: {e}")))?;
            if let Some(last) = path.last_mut() {
                *last = stripped;
            }
            toml::Value::String(contents.trim_end_matches(['\n', '\r']).to_string())
        }
        None => parse_scalar(raw),
    };
    let (last, parents) = path.split_last().ok_or_else(|| err("empty key".into()))?;
    let mut table = root;
    for seg in parents {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| err(format!("{seg} is not a table")))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

/// An override's value: the TOML value it spells, else the text itself.
fn parse_scalar(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}
