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
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .finish()
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
