//! Remote control (kombu "pidbox"): what `celery inspect`, `celery control` and Flower ask
//! workers.
//!
//! Requests are PUBLISHed on `/<db>.celery.pidbox` with a body `{method, arguments,
//! destination, ticket, reply_to: {exchange, routing_key}}`; a reply `{<hostname>: <reply>}`
//! with headers `{ticket, clock}` is LPUSHed to each queue bound in
//! `_kombu.binding.reply.celery.pidbox` under the reply's routing key. Reply shapes follow
//! `tests/fixtures/celery/inspect-replies.json` (Flower's worker page needs the full
//! `active_queues` entries).
//!
//! Control commands: `revoke` (with `terminate`), `terminate`, `time_limit`, `rate_limit`,
//! `shutdown` (warm), `enable_events`/`disable_events`, with Celery's reply texts.

use std::time::Duration;

use serde_json::{Value, json};

use crate::jobs::broker::{self, PRIORITY_SEP};
use crate::jobs::protocol::{envelope, envelope_body, iso};
use crate::jobs::worker::{Held, RateLimit, Shared};

/// Builds a broadcast request envelope (`reply_to`: `(exchange, routing_key)`).
pub fn request(method: &str, arguments: Value, reply_to: Option<(&str, &str)>) -> String {
    let body = json!({
        "method": method,
        "arguments": arguments,
        "destination": null,
        "pattern": null,
        "matcher": null,
        "ticket": uuid::Uuid::new_v4().to_string(),
        "reply_to": reply_to.map(|(e, rk)| json!({"exchange": e, "routing_key": rk})),
    });
    let expires = chrono::Utc::now().timestamp() as f64 + 10.0;
    envelope(
        &body,
        "celery.pidbox",
        "",
        json!({"clock": 1, "expires": expires}),
        2,
    )
}

fn request_info(shared: &Shared, h: &Held) -> Value {
    let m = &h.message;
    json!({
        "id": m.id,
        "name": m.task,
        "args": m.args,
        "kwargs": m.kwargs,
        "type": m.task,
        "hostname": shared.hostname,
        "time_start": h.started,
        "acknowledged": false,
        "delivery_info": {
            "exchange": m.exchange,
            "routing_key": m.queue,
            "priority": m.priority,
            "redelivered": m.redelivered,
        },
        "worker_pid": std::process::id(),
    })
}

fn queue_dict(name: &str) -> Value {
    json!({
        "name": name,
        "exchange": {
            "name": name, "type": "direct", "arguments": null, "durable": true,
            "passive": false, "auto_delete": false, "delivery_mode": null, "no_declare": false,
        },
        "routing_key": name,
        "queue_arguments": null,
        "binding_arguments": null,
        "consumer_arguments": null,
        "durable": true,
        "exclusive": false,
        "auto_delete": false,
        "no_ack": false,
        "alias": null,
        "bindings": [],
        "no_declare": null,
        "expires": null,
        "message_ttl": null,
        "max_length": null,
        "max_length_bytes": null,
        "max_priority": null,
    })
}

fn max_rss_kib() -> u64 {
    crate::health::proc_status_kib(None, "VmHWM").unwrap_or(0)
}

fn stats(shared: &Shared) -> Value {
    let url = url::Url::parse(secrecy::ExposeSecret::expose_secret(&shared.deps.redis_url)).ok();
    let host = url
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let port = url.as_ref().and_then(url::Url::port).unwrap_or(6379);
    json!({
        "total": shared.totals(),
        "pid": std::process::id(),
        "clock": shared.clock.value().to_string(),
        "uptime": shared.started.elapsed().as_secs(),
        "pool": {
            "implementation": "xenios_core::jobs::worker:TokioPool",
            "max-concurrency": shared.concurrency,
            "processes": [std::process::id()],
            "max-tasks-per-child": "N/A",
            "put-guarded-by-semaphore": false,
            "timeouts": [
                shared.deps.jobs_config().soft_time_limit.as_secs_f64(),
                shared.deps.jobs_config().hard_time_limit.as_secs_f64(),
            ],
        },
        "broker": {
            "hostname": host, "userid": null, "virtual_host": shared.redis_db.to_string(),
            "port": port, "insist": false, "ssl": false, "transport": "redis",
            "connect_timeout": 4, "transport_options": {}, "login_method": null,
            "uri_prefix": null, "heartbeat": 120.0, "failover_strategy": "round-robin",
            "alternates": [], "credential_provider": null,
        },
        "prefetch_count": shared.prefetch,
        "unregistered": shared.unregistered(),
        "rusage": {"maxrss": max_rss_kib()},
    })
}

fn ids_of(arg: Option<&Value>) -> Vec<String> {
    match arg {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The reply to one method, or None for requests that get no reply.
fn reply(shared: &Shared, method: &str, args: &Value) -> Value {
    match method {
        "ping" => json!({"ok": "pong"}),
        "stats" => stats(shared),
        "active_queues" => Value::Array(shared.queues.iter().map(|q| queue_dict(q)).collect()),
        "registered" => json!(shared.registered()),
        "active" => {
            let hand = shared.hand();
            Value::Array(
                hand.active
                    .values()
                    .map(|h| request_info(shared, h))
                    .collect(),
            )
        }
        "reserved" => {
            let hand = shared.hand();
            Value::Array(
                hand.reserved
                    .values()
                    .map(|h| request_info(shared, h))
                    .collect(),
            )
        }
        "scheduled" => {
            let hand = shared.hand();
            Value::Array(
                hand.scheduled
                    .values()
                    .map(|h| {
                        json!({
                            "eta": h.message.eta.map(iso),
                            "priority": h.message.priority,
                            "request": request_info(shared, h),
                        })
                    })
                    .collect(),
            )
        }
        "revoked" => json!(shared.revoked_ids()),
        "conf" => json!({
            "task_default_queue": shared.deps.jobs_config().default_queue,
            "worker_concurrency": shared.concurrency,
            "worker_prefetch_multiplier": shared.prefetch / shared.concurrency.max(1),
            "task_soft_time_limit": shared.deps.jobs_config().soft_time_limit.as_secs_f64(),
            "task_time_limit": shared.deps.jobs_config().hard_time_limit.as_secs_f64(),
            "task_acks_late": true,
            "task_reject_on_worker_lost": true,
            "result_extended": true,
            "worker_send_task_events": shared.events.task_events(),
        }),
        "enable_events" => {
            shared.events.set_task_events(true);
            json!({"ok": "task events enabled"})
        }
        "disable_events" => {
            shared.events.set_task_events(false);
            json!({"ok": "task events disabled"})
        }
        "hello" => {
            for id in args
                .get("revoked")
                .and_then(Value::as_object)
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                shared.revoke_local(&id);
            }
            let now = chrono::Utc::now().timestamp() as f64;
            let revoked: serde_json::Map<String, Value> = shared
                .revoked_ids()
                .into_iter()
                .map(|id| (id, json!(now)))
                .collect();
            json!({"revoked": revoked, "clock": shared.clock.tick()})
        }
        "revoke" | "terminate" => {
            let ids = ids_of(args.get("task_id"));
            for id in &ids {
                shared.revoke_local(id);
            }
            tracing::info!(task_ids = ?ids, "tasks flagged as revoked");
            let terminate = method == "terminate"
                || args.get("terminate").and_then(Value::as_bool) == Some(true);
            if !terminate {
                return json!({"ok": format!("tasks {} flagged as revoked", ids.join(", "))});
            }
            // Any signal name stops the handler the same way: a Rust task is a future that
            // is dropped, not a process to signal.
            let stopped: Vec<&str> = ids
                .iter()
                .filter(|id| shared.terminate(id))
                .map(String::as_str)
                .collect();
            if stopped.is_empty() {
                json!({"ok": "terminate: tasks unknown"})
            } else {
                json!({"ok": format!("terminate: {}", stopped.join(", "))})
            }
        }
        "time_limit" => {
            let task = args.get("task_name").and_then(Value::as_str).unwrap_or("");
            // Clamped to `JOB_MAX_TIME_LIMIT_SECS`, as a message's own limits are.
            let max = shared.deps.jobs_config().max_time_limit;
            #[derive(Debug, thiserror::Error)]
            #[error("{0} must be a positive number of seconds")]
            struct NotSeconds(String);
            let secs = |k: &str| -> Result<Option<Duration>, NotSeconds> {
                match args.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => v
                        .as_f64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                        .and_then(|s| crate::jobs::time_limit(s, max))
                        .map(Some)
                        .ok_or_else(|| NotSeconds(k.to_owned())),
                }
            };
            match (secs("soft"), secs("hard")) {
                (Ok(soft), Ok(hard)) => {
                    if shared.set_time_limits(task, soft, hard) {
                        tracing::info!(task, ?soft, ?hard, "new time limits");
                        json!({"ok": "time limits set successfully"})
                    } else {
                        json!({"error": "unknown task"})
                    }
                }
                (Err(e), _) | (_, Err(e)) => json!({"error": e.to_string()}),
            }
        }
        "rate_limit" => {
            let task = args.get("task_name").and_then(Value::as_str).unwrap_or("");
            let spec = match args.get("rate_limit") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                None | Some(Value::Null) => "0".to_owned(),
                Some(other) => other.to_string(),
            };
            match RateLimit::parse(&spec) {
                Err(e) => json!({"error": format!("Invalid rate limit string: {e}")}),
                Ok(rate) => {
                    let disabled = rate.is_none();
                    if !shared.set_rate_limit(task, rate) {
                        json!({"error": "unknown task"})
                    } else if disabled {
                        tracing::info!(task, "rate limit disabled");
                        json!({"ok": "rate limit disabled successfully"})
                    } else {
                        tracing::info!(task, rate = %spec, "new rate limit");
                        json!({"ok": "new rate limit set successfully"})
                    }
                }
            }
        }
        "shutdown" => {
            shared.request_shutdown();
            json!({"ok": "shutting down"})
        }
        other => json!({"error": format!("No such control command: {other}")}),
    }
}

/// Handles one pidbox broadcast: replies when addressed to us and a reply is asked for.
pub(crate) async fn handle(shared: &Shared, payload: &[u8]) {
    let Ok(env) = serde_json::from_slice::<Value>(payload) else {
        tracing::debug!("ignoring a pidbox message that is not JSON");
        return;
    };
    if let Some(c) = env
        .get("headers")
        .and_then(|h| h.get("clock"))
        .and_then(Value::as_u64)
    {
        shared.clock.adjust(c);
    }
    let Some(body) = envelope_body(&env) else {
        return;
    };
    if let Some(Value::Array(d)) = body.get("destination")
        && !d.is_empty()
        && !d
            .iter()
            .any(|x| x.as_str() == Some(shared.hostname.as_str()))
    {
        return;
    }
    let Some(method) = body.get("method").and_then(Value::as_str) else {
        return;
    };
    let args = body.get("arguments").cloned().unwrap_or(Value::Null);
    if method == "hello"
        && args.get("from_node").and_then(Value::as_str) == Some(shared.hostname.as_str())
    {
        return;
    }
    let answer = reply(shared, method, &args);
    let Some(reply_to) = body.get("reply_to").filter(|r| r.is_object()) else {
        return;
    };
    let exchange = reply_to
        .get("exchange")
        .and_then(Value::as_str)
        .unwrap_or("reply.celery.pidbox");
    let Some(rk) = reply_to.get("routing_key").and_then(Value::as_str) else {
        return;
    };
    let ticket = body.get("ticket").cloned().unwrap_or(Value::Null);
    let payload = envelope(
        &json!({ shared.hostname.as_str(): answer }),
        exchange,
        rk,
        json!({"ticket": ticket, "clock": shared.clock.tick()}),
        1,
    );
    let result = async {
        let mut conn = crate::jobs::pooled(&shared.deps.redis).await?;
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}{exchange}", broker::BINDING_PREFIX))
            .query_async(&mut *conn)
            .await
            .map_err(broker::redis_error)?;
        let mut queues: Vec<String> = members
            .iter()
            .filter_map(|m| {
                let mut p = m.split(PRIORITY_SEP);
                let key = p.next()?;
                let _ = p.next()?;
                let queue = p.next()?;
                (key == rk).then(|| queue.to_owned())
            })
            .collect();
        if queues.is_empty() {
            queues.push(format!("{rk}.{exchange}"));
        }
        let mut pipe = redis::pipe();
        for q in &queues {
            pipe.cmd("LPUSH").arg(q).arg(&payload).ignore();
        }
        pipe.query_async::<()>(&mut *conn)
            .await
            .map_err(broker::redis_error)
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, method, "cannot send a pidbox reply");
    }
}
