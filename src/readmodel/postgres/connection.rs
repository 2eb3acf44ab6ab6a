//! Connecting to PostgreSQL: a `postgres://` location parsed into [`Settings`] (the schema
//! taken out of its query, the password from `PGPASSWORD` when the location has none), the
//! form of it that may be shown ([`redact`]), and which errors mean the connection is gone.

use super::{quote, PostgresReadModels};
use crate::project::file::valid_name;
use crate::readmodel::ReadModelError;
use postgres::{Client, NoTls};
use std::time::Duration;

/// Connection settings parsed from a location.
#[derive(Clone)]
pub(super) struct Settings {
    pub(super) config: postgres::Config,
    pub(super) schema: String,
    pub(super) shown: String,
}

pub(super) fn pg_error(settings: &Settings, source: postgres::Error) -> ReadModelError {
    ReadModelError::Postgres {
        location: settings.shown.clone(),
        source,
    }
}

pub(super) fn parse_location(location: &str) -> Result<Settings, ReadModelError> {
    let bad = || ReadModelError::BadLocation(redact(location));
    let (url, query) = location.split_once('?').unwrap_or((location, ""));
    let mut schema = "recast".to_string();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", value)) => schema = value.to_string(),
            _ => rest.push(pair),
        }
    }
    if !valid_name(&schema) {
        return Err(ReadModelError::BadName {
            what: "schema",
            name: schema,
        });
    }
    let url = if rest.is_empty() {
        url.to_string()
    } else {
        format!("{url}?{}", rest.join("&"))
    };
    let mut config: postgres::Config = url.parse().map_err(|_| bad())?;
    if config.get_password().is_none() {
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
    }
    config.application_name("recast");
    config.connect_timeout(Duration::from_secs(5));
    let host = url.split_once('@').map_or(
        url.trim_start_matches("postgres://")
            .trim_start_matches("postgresql://"),
        |(_, h)| h,
    );
    Ok(Settings {
        config,
        schema: schema.clone(),
        shown: format!("postgres://{host} (schema {schema})"),
    })
}

/// A location with any password replaced, for messages.
pub fn redact(location: &str) -> String {
    match (location.find("://"), location.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &location[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &location[..scheme + 3], &location[at..])
        }
        _ => location.to_string(),
    }
}

/// Connects to a `postgres://` location: the client, the schema (created if needed) and the
/// location as it may be shown. Used by other stores that live in PostgreSQL (checkpoints).
pub(crate) fn connect_location(location: &str) -> Result<(Client, String, String), ReadModelError> {
    let settings = parse_location(location)?;
    let mut client = connect(&settings)?;
    let schema = quote(&settings.schema);
    if let Err(first) = client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")) {
        // Two processes creating the same schema at once can collide; the second finds it.
        client = connect(&settings)?;
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .map_err(|_| pg_error(&settings, first))?;
    }
    Ok((client, schema, settings.shown))
}

/// True when an error means the connection is gone (closed, terminated by an administrator,
/// server shutting down, SQLSTATE class 08), so the work is worth retrying on a new one.
pub(super) fn connection_lost(error: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        }
        None => false,
    }
}

pub(super) fn connect(settings: &Settings) -> Result<Client, ReadModelError> {
    settings
        .config
        .connect(NoTls)
        .map_err(|e| pg_error(settings, e))
}

const RETRIES: u32 = 6;

/// What can go wrong inside one unit of work on the connection.
pub(super) enum Failure {
    Sql(postgres::Error),
    /// A worker's window whose lease another worker has taken.
    LeaseLost(crate::readmodel::Lease),
    /// Writing COPY data failed: the connection is gone.
    Copy(std::io::Error),
}

impl From<postgres::Error> for Failure {
    fn from(error: postgres::Error) -> Self {
        Failure::Sql(error)
    }
}

impl PostgresReadModels {
    /// Runs `work` on the connection, reconnecting and retrying with backoff when the
    /// connection is lost; other errors are returned at once.
    pub(super) fn with_client<T>(
        &self,
        mut work: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, ReadModelError> {
        self.with_client_copy(|c| work(c).map_err(Failure::Sql))
    }

    /// [`with_client`](Self::with_client) for work that also streams COPY data.
    pub(super) fn with_client_copy<T>(
        &self,
        mut work: impl FnMut(&mut Client) -> Result<T, Failure>,
    ) -> Result<T, ReadModelError> {
        let mut client = self
            .client
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut attempt = 0;
        loop {
            let result = work(&mut client);
            let lost = match &result {
                Err(Failure::Sql(error)) => connection_lost(error) || client.is_closed(),
                Err(Failure::Copy(_)) => true,
                Err(Failure::LeaseLost(_)) | Ok(_) => false,
            };
            match result {
                Ok(value) => return Ok(value),
                Err(_) if lost && attempt < RETRIES => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100 << attempt.min(5)));
                    if let Ok(mut fresh) = connect(&self.settings) {
                        // The old connection's advisory locks went with it: take them again,
                        // or stop, since another rebuilder may have them now.
                        for key in self.locks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                            let row = fresh
                                .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[key])
                                .map_err(|e| pg_error(&self.settings, e))?;
                            if !row.get::<_, bool>(0) {
                                return Err(ReadModelError::Busy {
                                    name: key.clone(),
                                    location: self.settings.shown.clone(),
                                });
                            }
                        }
                        *client = fresh;
                    }
                }
                Err(Failure::Sql(error)) => return Err(pg_error(&self.settings, error)),
                Err(Failure::Copy(source)) => {
                    return Err(ReadModelError::Copy {
                        location: self.settings.shown.clone(),
                        source,
                    })
                }
                Err(Failure::LeaseLost(lease)) => {
                    return Err(ReadModelError::LeaseLost {
                        name: lease.part.projection,
                        generation: lease.part.generation,
                        partition: lease.part.partition,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_hide_passwords_and_take_a_schema() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        let settings = parse_location("postgres://app:s3cret@db:5432/x?schema=tenant_1").unwrap();
        assert_eq!(settings.schema, "tenant_1");
        assert!(!settings.shown.contains("s3cret"), "{}", settings.shown);
        let bad = parse_location("postgres://db/x?schema=a\";drop")
            .err()
            .unwrap()
            .to_string();
        assert!(bad.contains("schema"), "{bad}");
        assert!(parse_location("postgres://app:pw@[nope")
            .err()
            .unwrap()
            .to_string()
            .contains("***"));
    }
}
