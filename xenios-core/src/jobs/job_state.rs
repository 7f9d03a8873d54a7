//! [`JobState`]: the six states of a job, one enum for Redis results, events, the API and
//! the `job_queue_metadata.status` column.

use diesel::deserialize::{FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{Output, ToSql};
use diesel::sql_types::Text;
use serde::{Deserialize, Serialize};

/// The state of a job: Celery's six states.
///
/// Spelled as Celery does (`SUCCESS`) in Redis results, events, JSON and [`std::fmt::Display`];
/// in lower case (`success`) in `job_queue_metadata.status`, which the diesel mapping reads
/// and writes ([`JobState::db_name`]).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::VariantArray,
    AsExpression,
    FromSqlRow,
)]
#[serde(rename_all = "UPPERCASE")]
#[strum(serialize_all = "UPPERCASE")]
#[diesel(sql_type = Text)]
pub enum JobState {
    /// Unknown or waiting (Celery reports unknown ids as PENDING too).
    Pending,
    /// Taken by a worker.
    Started,
    /// Failed, another attempt is scheduled.
    Retry,
    /// Finished successfully.
    Success,
    /// Finished with an error.
    Failure,
    /// Revoked (or expired) before it ran, or cancelled while running.
    Revoked,
}

impl JobState {
    /// Celery's name (`SUCCESS`).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The name stored in `job_queue_metadata.status` (`success`).
    pub fn db_name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Started => "started",
            Self::Retry => "retry",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Revoked => "revoked",
        }
    }

    /// Parses a stored name ([`JobState::db_name`]).
    pub fn from_db_name(s: &str) -> Option<Self> {
        <Self as strum::VariantArray>::VARIANTS
            .iter()
            .copied()
            .find(|v| v.db_name() == s)
    }

    /// Parses Celery's name as a result backend holds it; anything else reads as PENDING, as
    /// Celery reports what it does not know.
    pub fn from_celery(s: &str) -> Self {
        s.parse().unwrap_or(Self::Pending)
    }

    /// Success, failure and revoked are final: no further change will happen, and later
    /// events never change them.
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Revoked)
    }
}

impl ToSql<Text, Pg> for JobState {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
        <str as ToSql<Text, Pg>>::to_sql(self.db_name(), out)
    }
}

impl FromSql<Text, Pg> for JobState {
    fn from_sql(bytes: PgValue<'_>) -> diesel::deserialize::Result<Self> {
        let raw = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
        Self::from_db_name(&raw).ok_or_else(|| format!("unknown job status `{raw}`").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_redis_and_in_postgres() {
        for (state, celery, db) in [
            (JobState::Pending, "PENDING", "pending"),
            (JobState::Started, "STARTED", "started"),
            (JobState::Retry, "RETRY", "retry"),
            (JobState::Success, "SUCCESS", "success"),
            (JobState::Failure, "FAILURE", "failure"),
            (JobState::Revoked, "REVOKED", "revoked"),
        ] {
            assert_eq!((state.as_str(), state.db_name()), (celery, db));
            assert_eq!(state.to_string(), celery);
            assert_eq!(JobState::from_celery(celery), state);
            assert_eq!(JobState::from_db_name(db), Some(state));
            assert_eq!(serde_json::to_value(state).ok(), Some(celery.into()));
        }
        assert_eq!(JobState::from_celery("whatever"), JobState::Pending);
        assert_eq!(JobState::from_db_name("SUCCESS"), None);
    }
}
