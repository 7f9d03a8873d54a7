//! The task catalog: which tasks an HTTP caller may enqueue, on which queue, who may call
//! them and how large their arguments may be.
//!
//! The API process must know it without a worker, so it is built from data: the
//! declarations of the built-in Rust handlers ([`crate::jobs::tasks::builtin_registry`],
//! the same declarations the worker registers them with) plus the Python tasks of
//! `JOB_EXTRA_TASKS`. `POST /api/v1/jobs` enqueues only what [`Catalog::authorize`]
//! accepts; the queue always comes from here, never from the caller. The library's
//! [`crate::jobs::Jobs::enqueue`] stays open to embedders (any valid task name), but every
//! queue, here or there, must pass [`crate::jobs::check_queue_name`].

use std::collections::HashMap;

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::jobs::{MAX_PAYLOAD_BYTES, Router, check_queue_name, valid_task_name};

/// Who may enqueue a task through the HTTP API.
///
/// Named `users`, `service` and `internal` (in `JOB_EXTRA_TASKS` and the catalog).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::Display, strum::EnumString,
)]
#[strum(serialize_all = "lowercase")]
pub enum Callers {
    /// Signed-in users and the service.
    Users,
    /// The service only (an API-key call without a user token).
    Service,
    /// Nobody over HTTP: registered for the worker, enqueued by Rust code only.
    Internal,
}

impl Callers {
    /// The name used in `JOB_EXTRA_TASKS`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    fn admits(self, principal: &Principal) -> bool {
        match (self, principal) {
            (Self::Internal, _) => false,
            (Self::Users, _) => true,
            (Self::Service, Principal::User(_)) => false,
            (Self::Service, _) => true,
        }
    }
}

/// The declaration of one task: what the catalog knows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDecl {
    /// Task name, e.g. `xenios.echo`.
    pub name: String,
    /// Queue; `None`: routed by task-name prefix (`JOB_ROUTES`, else `JOB_DEFAULT_QUEUE`).
    pub queue: Option<String>,
    /// Who may enqueue it over HTTP.
    pub callers: Callers,
    /// Largest `args` + `kwargs`, in bytes of their JSON encoding.
    pub max_arg_bytes: usize,
}

impl TaskDecl {
    /// A task signed-in users (and the service) may enqueue, with arguments of at most
    /// `max_arg_bytes` (capped at [`MAX_PAYLOAD_BYTES`]).
    pub fn users(name: impl Into<String>, max_arg_bytes: usize) -> Self {
        Self::with(name, Callers::Users, max_arg_bytes)
    }

    /// A task only the service may enqueue.
    pub fn service(name: impl Into<String>, max_arg_bytes: usize) -> Self {
        Self::with(name, Callers::Service, max_arg_bytes)
    }

    /// A task nobody may enqueue over HTTP (Rust callers only).
    pub fn internal(name: impl Into<String>) -> Self {
        Self::with(name, Callers::Internal, MAX_PAYLOAD_BYTES)
    }

    /// Pins the task to `queue` instead of the routed one.
    pub fn on_queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    fn with(name: impl Into<String>, callers: Callers, max_arg_bytes: usize) -> Self {
        Self {
            name: name.into(),
            queue: None,
            callers,
            max_arg_bytes: max_arg_bytes.min(MAX_PAYLOAD_BYTES),
        }
    }
}

/// A bare name declares an internal task (not callable over HTTP), so that
/// `registry.register("my.task", handler)` keeps working for embedders and tests.
impl From<&str> for TaskDecl {
    fn from(name: &str) -> Self {
        Self::internal(name)
    }
}

impl From<String> for TaskDecl {
    fn from(name: String) -> Self {
        Self::internal(name)
    }
}

/// A catalogued task with its queue resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Task name.
    pub name: String,
    /// The queue its messages go to.
    pub queue: String,
    /// Who may enqueue it.
    pub callers: Callers,
    /// Largest `args` + `kwargs`, in bytes of their JSON encoding.
    pub max_arg_bytes: usize,
}

/// The tasks HTTP callers may enqueue.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    tasks: HashMap<String, CatalogEntry>,
}

impl Catalog {
    /// A catalog of `decls` (later ones win), queues resolved by `router`. Internal tasks
    /// are left out: nobody may enqueue them over HTTP.
    pub fn new(decls: impl IntoIterator<Item = TaskDecl>, router: &Router) -> Self {
        let tasks = decls
            .into_iter()
            .filter(|d| d.callers != Callers::Internal)
            .map(|d| {
                let queue = d
                    .queue
                    .clone()
                    .unwrap_or_else(|| router.route(&d.name).to_owned());
                (
                    d.name.clone(),
                    CatalogEntry {
                        name: d.name,
                        queue,
                        callers: d.callers,
                        max_arg_bytes: d.max_arg_bytes,
                    },
                )
            })
            .collect();
        Self { tasks }
    }

    /// The entry of a task, whoever asks.
    pub fn get(&self, task: &str) -> Option<&CatalogEntry> {
        self.tasks.get(task)
    }

    /// Catalogued task names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The entry of `task` if `principal` may enqueue it, else [`Error::UnknownTask`]: a
    /// user asking for a service-only task learns no more than for a task that does not
    /// exist.
    pub fn authorize(&self, principal: &Principal, task: &str) -> Result<&CatalogEntry> {
        self.tasks
            .get(task)
            .filter(|e| e.callers.admits(principal))
            .ok_or_else(|| Error::UnknownTask(task.chars().take(200).collect()))
    }
}

/// Parses `JOB_EXTRA_TASKS`: comma-separated `name/queue/callers/max_bytes` entries, where
/// `callers` is `users` or `service` and `max_bytes` the largest JSON encoding of
/// `args` + `kwargs` (1 to 524288). `/` is in neither task nor queue names, so the format
/// is unambiguous. Every problem is returned, naming the entry.
pub fn parse_extra_tasks(raw: &str, builtin: &[&str]) -> (Vec<TaskDecl>, Vec<String>) {
    let mut decls: Vec<TaskDecl> = Vec::new();
    let mut problems = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parts: Vec<&str> = entry.split('/').map(str::trim).collect();
        let [name, queue, callers, max] = parts.as_slice() else {
            problems.push(format!(
                "JOB_EXTRA_TASKS: `{entry}` is not `name/queue/users|service/max_bytes`"
            ));
            continue;
        };
        let mut ok = true;
        let mut fail = |p: String| {
            problems.push(format!("JOB_EXTRA_TASKS: `{entry}`: {p}"));
            ok = false;
        };
        if !valid_task_name(name) {
            fail("the task name must be 1-200 characters of [A-Za-z0-9_.:-]".to_owned());
        } else if name.starts_with("celery.") {
            fail("`celery.*` tasks are Celery's own and cannot be declared".to_owned());
        } else if builtin.contains(name) {
            fail("a built-in task of the same name exists".to_owned());
        } else if decls.iter().any(|d| d.name == *name) {
            fail("declared twice".to_owned());
        }
        if let Err(e) = check_queue_name(queue) {
            fail(e.to_string());
        }
        // `internal` tasks are registered by Rust code, never declared.
        let callers = match callers.parse() {
            Ok(c @ (Callers::Users | Callers::Service)) => c,
            _ => {
                let other = *callers;
                fail(format!(
                    "callers `{other}` is neither `users` nor `service`"
                ));
                Callers::Service
            }
        };
        let max_arg_bytes = match max.parse::<usize>() {
            Ok(n) if (1..=MAX_PAYLOAD_BYTES).contains(&n) => n,
            _ => {
                fail(format!(
                    "max_bytes `{max}` is not a number from 1 to {MAX_PAYLOAD_BYTES}"
                ));
                0
            }
        };
        if ok {
            decls.push(TaskDecl {
                name: (*name).to_owned(),
                queue: Some((*queue).to_owned()),
                callers,
                max_arg_bytes,
            });
        }
    }
    (decls, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_tasks_parse_and_every_problem_is_named() {
        let (decls, problems) = parse_extra_tasks(
            "docling.extract/extraction/users/1048576, reports.build / analytics / service / 100",
            &["xenios.echo"],
        );
        assert!(
            problems.iter().any(|p| p.contains("1048576")),
            "{problems:?}"
        );
        assert_eq!(decls.len(), 1);
        assert_eq!(decls[0].name, "reports.build");
        assert_eq!(decls[0].queue.as_deref(), Some("analytics"));
        assert_eq!(decls[0].callers, Callers::Service);
        let (decls, problems) = parse_extra_tasks(
            "a/unacked/users/10,celery.backend_cleanup/q/users/10,xenios.echo/q/users/10,\
             b/q/everyone/10,c/q/users,d/q/users/0,e/_kombu.binding.x/users/5,f/q/users/5,f/q/users/5",
            &["xenios.echo"],
        );
        assert_eq!(decls.len(), 1, "{decls:?}");
        assert_eq!(problems.len(), 8, "{problems:?}");
    }
}
