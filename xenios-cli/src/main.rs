//! `xenios-cli`: the backend from the command line, through `AiBackend` directly (no HTTP).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod jobs;

/// Command-line client of the Xenios AI backend.
#[derive(Debug, Parser)]
#[command(name = "xenios-cli", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the readiness of Postgres and Redis (exit 1 when not ready).
    Health,
    /// Print service status as JSON.
    Status,
    /// Apply the embedded database migrations (schema ai_backend).
    Migrate {
        /// Revert the most recent migration instead.
        #[arg(long)]
        revert_last: bool,
        /// Only list pending migrations.
        #[arg(long, conflicts_with = "revert_last")]
        pending: bool,
    },
    /// Run one LLM completion along a task's route and print it.
    Complete(LlmArgs),
    /// Stream one LLM completion, printing tokens as they arrive.
    Stream(LlmArgs),
    /// Enqueue a Celery-compatible job and print its id (or, with --wait, its result).
    Enqueue {
        /// Task name, e.g. `xenios.echo`.
        task: String,
        /// Positional arguments as a JSON array.
        #[arg(long, default_value = "[]")]
        args: String,
        /// Keyword arguments as a JSON object.
        #[arg(long, default_value = "{}")]
        kwargs: String,
        /// Queue (default: routed by task-name prefix).
        #[arg(long)]
        queue: Option<String>,
        /// Seconds before the job may run.
        #[arg(long)]
        countdown: Option<f64>,
        /// Priority 0-9 (0 first).
        #[arg(long)]
        priority: Option<u8>,
        /// Wait for the result and print it (exit 1 unless SUCCESS).
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Print a job's state and result as JSON.
    Job {
        /// Task id.
        id: String,
    },
    /// Revoke a job: workers (Rust and Python) skip it.
    Revoke {
        /// Task id.
        id: String,
        /// Stop it too if it is already running.
        #[arg(long)]
        terminate: bool,
    },
}

#[derive(Debug, clap::Args)]
struct LlmArgs {
    /// Task: session_summary, insight_generation, chat, intent_classification,
    /// entity_extraction.
    #[arg(long, default_value = "chat")]
    task: String,
    /// Use this model (or comma-separated models) instead of the task's route.
    #[arg(long)]
    model: Option<String>,
    /// Optional system prompt.
    #[arg(long)]
    system: Option<String>,
    /// The user prompt; `-` or nothing reads it from stdin (one trailing newline dropped).
    prompt: Option<String>,
}

/// Most bytes of a prompt read from stdin.
const MAX_STDIN_PROMPT_BYTES: u64 = 1024 * 1024;

/// The prompt: the argument, or stdin when it is `-` or absent.
fn prompt_text(arg: Option<String>) -> Result<String, String> {
    use std::io::{IsTerminal, Read};

    if let Some(p) = arg.filter(|p| p != "-") {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err("no prompt: pass it as an argument, or pipe it on stdin".to_owned());
    }
    let mut bytes = Vec::new();
    stdin
        .lock()
        .take(MAX_STDIN_PROMPT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the prompt from stdin: {e}"))?;
    if bytes.len() as u64 > MAX_STDIN_PROMPT_BYTES {
        return Err(format!(
            "the prompt on stdin is larger than {MAX_STDIN_PROMPT_BYTES} bytes"
        ));
    }
    let mut text =
        String::from_utf8(bytes).map_err(|_| "the prompt on stdin is not UTF-8".to_owned())?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.trim().is_empty() {
        return Err("the prompt on stdin is empty".to_owned());
    }
    Ok(text)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match xenios_core::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::from(2);
        }
    };
    xenios_core::telemetry::init_with("warn", xenios_core::config::LogFormat::Pretty);
    let backend = match xenios_core::AiBackend::builder(config).build().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Complete(args) => llm(&backend, args, false).await,
        Command::Stream(args) => llm(&backend, args, true).await,
        Command::Enqueue {
            task,
            args,
            kwargs,
            queue,
            countdown,
            priority,
            wait,
            timeout,
        } => {
            jobs::enqueue(
                &backend, task, &args, &kwargs, queue, countdown, priority, wait, timeout,
            )
            .await
        }
        Command::Job { id } => jobs::show(&backend, &id).await,
        Command::Revoke { id, terminate } => jobs::revoke(&backend, &id, terminate).await,
        Command::Health => {
            let r = backend.readiness().await;
            for c in &r.components {
                match &c.error {
                    None => println!("{:<9} healthy   {} ms", c.name, c.latency_ms),
                    Some(e) => println!("{:<9} unhealthy {e}", c.name),
                }
            }
            if r.ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Migrate {
            revert_last,
            pending,
        } => {
            let result = if revert_last {
                backend.revert_last_migration().await
            } else if pending {
                backend.pending_migrations().await
            } else {
                backend.migrate().await
            };
            match result {
                Ok(versions) => {
                    let verb = if revert_last {
                        "reverted"
                    } else if pending {
                        "pending"
                    } else {
                        "applied"
                    };
                    if versions.is_empty() {
                        println!("{verb}: none (up to date)");
                    }
                    for v in versions {
                        println!("{verb}: {v}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("xenios-cli: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status => {
            let s = backend.status().await;
            match serde_json::to_string_pretty(&s) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("xenios-cli: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn llm(backend: &xenios_core::AiBackend, args: LlmArgs, stream: bool) -> ExitCode {
    use std::io::Write;

    use futures::StreamExt;
    use xenios_core::llm::{CompletionRequest, Message, StreamEvent, Task};

    let task: Task = match args.task.parse() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::from(2);
        }
    };
    let prompt = match prompt_text(args.prompt) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::from(2);
        }
    };
    let mut messages = Vec::new();
    if let Some(system) = args.system {
        messages.push(Message::system(system));
    }
    messages.push(Message::user(prompt));
    let mut req = CompletionRequest::new(task, messages);
    req.models = args
        .model
        .map(|m| m.split(',').map(|s| s.trim().to_owned()).collect());
    if backend.config().uses_fake_llm() {
        eprintln!(
            "xenios-cli: OPENROUTER_API_KEY is not set: answers come from the built-in fake LLM"
        );
    }
    let ctx = xenios_core::RequestContext::system();
    let code = if stream {
        match backend.stream(&ctx, req).await {
            Err(e) => {
                eprintln!("xenios-cli: {e}");
                ExitCode::FAILURE
            }
            Ok(mut events) => {
                let mut code = ExitCode::SUCCESS;
                let mut out = std::io::stdout();
                while let Some(event) = events.next().await {
                    match event {
                        StreamEvent::Delta { content } => {
                            let _ = write!(out, "{content}");
                            let _ = out.flush();
                        }
                        StreamEvent::Done(s) => {
                            let _ = writeln!(out);
                            eprintln!(
                                "[model {}{}, {} tokens, {} ms]",
                                s.model_used,
                                if s.fallback_used { " (fallback)" } else { "" },
                                s.usage.total_tokens,
                                s.latency_ms
                            );
                        }
                        StreamEvent::Error { message, .. } => {
                            let _ = writeln!(out);
                            eprintln!("xenios-cli: stream failed: {message}");
                            code = ExitCode::FAILURE;
                        }
                    }
                }
                code
            }
        }
    } else {
        match backend.complete(&ctx, req).await {
            Ok(c) => {
                println!("{}", c.content);
                eprintln!(
                    "[model {}{}, {} tokens, {} ms]",
                    c.model_used,
                    if c.fallback_used { " (fallback)" } else { "" },
                    c.usage.total_tokens,
                    c.latency_ms
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xenios-cli: {e}");
                ExitCode::FAILURE
            }
        }
    };
    // The audit row is best effort here: do not hang when Postgres is down.
    backend
        .flush_audit_within(std::time::Duration::from_secs(3))
        .await;
    code
}
