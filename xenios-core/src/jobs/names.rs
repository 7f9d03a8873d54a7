//! Checked names: [`TaskName`], [`QueueName`] and [`TaskId`]. Each `parse` applies the rule
//! of its validator ([`super::valid_task_name`], [`super::check_queue_name`],
//! [`super::valid_task_id`]), so a value of these types has passed it.

use std::fmt;

use serde::Serialize;

use super::{TASK_ID_RULE, reserved_queue, valid_queue_name, valid_task_id, valid_task_name};

/// Why a name was refused; the message names the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Not 1-200 characters of `[A-Za-z0-9_.:-]`.
    #[error("task name `{0}` is not 1-200 characters of [A-Za-z0-9_.:-]")]
    TaskName(String),
    /// Not 1-128 characters of `[A-Za-z0-9_.:-]`.
    #[error("queue `{0}` is not 1-128 characters of [A-Za-z0-9_.:-]")]
    QueueName(String),
    /// A name Celery, kombu or this backend uses for something else.
    #[error("queue `{name}` is a reserved name ({why}) and cannot be used")]
    ReservedQueue {
        /// The queue.
        name: String,
        /// Whose name it is.
        why: &'static str,
    },
    /// Not 1-128 characters of `[A-Za-z0-9._:-]`.
    #[error("{TASK_ID_RULE}")]
    TaskId,
}

/// At most this many characters of a refused value are quoted back.
const QUOTED: usize = 140;

fn quoted(raw: &str) -> String {
    raw.chars().take(QUOTED).collect()
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(raw: &str) -> Result<Self, NameError> {
                Self::parse(raw)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
    };
}

name_type!(
    /// A task name such as `xenios.echo`: 1-200 characters of `[A-Za-z0-9_.:-]`.
    TaskName
);
name_type!(
    /// A queue name: 1-128 characters of `[A-Za-z0-9_.:-]`, none of the names Celery, kombu
    /// or this backend keep for themselves ([`super::reserved_queue`]).
    QueueName
);
name_type!(
    /// A Celery task id: 1-128 characters of `[A-Za-z0-9._:-]` (UUIDs, and the custom ids
    /// Celery producers pick in practice).
    TaskId
);

impl TaskName {
    /// Checks `raw` ([`super::valid_task_name`]).
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if valid_task_name(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(NameError::TaskName(quoted(raw)))
        }
    }
}

impl QueueName {
    /// Checks `raw` ([`super::check_queue_name`]).
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if !valid_queue_name(raw) {
            return Err(NameError::QueueName(quoted(raw)));
        }
        match reserved_queue(raw) {
            Some(why) => Err(NameError::ReservedQueue {
                name: raw.to_owned(),
                why,
            }),
            None => Ok(Self(raw.to_owned())),
        }
    }
}

impl TaskId {
    /// Checks `raw` ([`super::valid_task_id`]).
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if valid_task_id(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(NameError::TaskId)
        }
    }

    /// The id of a message this backend created or decoded (ids of decoded messages are not
    /// re-checked: a Python producer's id is whatever it chose).
    pub(crate) fn of_message(id: String) -> Self {
        Self(id)
    }
}

impl From<NameError> for crate::error::Error {
    fn from(e: NameError) -> Self {
        crate::error::Error::Validation(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_applies_each_rule_and_names_the_value() {
        assert_eq!(
            TaskName::parse("xenios.echo").map(String::from),
            Ok("xenios.echo".to_owned())
        );
        let e = TaskName::parse("bad name").unwrap_err();
        assert_eq!(
            e.to_string(),
            "task name `bad name` is not 1-200 characters of [A-Za-z0-9_.:-]"
        );
        assert!(QueueName::parse("default").is_ok());
        assert_eq!(
            QueueName::parse("a b").unwrap_err().to_string(),
            "queue `a b` is not 1-128 characters of [A-Za-z0-9_.:-]"
        );
        let reserved = QueueName::parse("unacked").unwrap_err();
        assert!(
            matches!(reserved, NameError::ReservedQueue { .. }),
            "{reserved}"
        );
        assert!(TaskId::parse("7c35feae-fed3-41c8-a02d-a68f83e3a4e3").is_ok());
        assert_eq!(TaskId::parse("../x").unwrap_err().to_string(), TASK_ID_RULE);
        assert_eq!(
            "q1".parse::<QueueName>().map(|q| q.to_string()),
            Ok("q1".to_owned())
        );
    }
}
