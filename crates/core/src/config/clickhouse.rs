//! The `[clickhouse]` section: where the processor writes and `touchstream migrate`
//! creates the tables. The password is hidden from `Debug`.

use serde::{Deserialize, Serialize};

/// ClickHouse connection.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP(S) endpoint. Default `http://127.0.0.1:8123`. Use `https://` for TLS.
    pub url: String,
    /// Database holding Touchstream's tables; created by `touchstream migrate`.
    /// Default `touchstream`.
    pub database: String,
    /// User. Default `default`.
    pub user: String,
    /// Password. Default empty. Prefer `TOUCHSTREAM__CLICKHOUSE__PASSWORD_FILE`.
    pub password: String,
}

// Hand-written so the password never reaches a log line.
impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &masked_url(&self.url))
            .field("database", &self.database)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .finish()
    }
}

/// `url` with the password of its user-info (`scheme://user:password@host`) replaced by
/// `***`, for `touchstream config` and log lines (README "Configuration").
pub fn masked_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "touchstream".into(),
            user: "default".into(),
            password: String::new(),
        }
    }
}

#[cfg(test)]
mod mask_tests {
    use super::*;

    #[test]
    fn url_credentials_are_masked_in_debug() {
        let c = ClickHouseConfig {
            url: "https://admin:s3cret@ch.example:8443/?database=x".into(),
            ..ClickHouseConfig::default()
        };
        let shown = format!("{c:#?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("https://admin:***@ch.example:8443/?database=x"),
            "{shown}"
        );
        assert_eq!(masked_url("http://127.0.0.1:8123"), "http://127.0.0.1:8123");
        assert_eq!(masked_url("http://u@h:1"), "http://u@h:1");
    }
}
