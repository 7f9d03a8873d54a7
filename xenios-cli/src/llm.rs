//! `complete` and `stream`.

use std::io::Write;
use std::process::ExitCode;

use futures::StreamExt;
use xenios_core::llm::{Completion, CompletionRequest, LlmStream, Message, StreamEvent, input};
use xenios_core::{AiBackend, RequestContext};

use crate::cli::LlmArgs;

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

/// `complete` (or, with `stream`, `stream`): one completion along a task's route.
pub async fn complete(backend: &AiBackend, args: LlmArgs, stream: bool) -> ExitCode {
    let req = match request(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::from(2);
        }
    };
    if backend.config().uses_fake_llm() {
        eprintln!(
            "xenios-cli: OPENROUTER_API_KEY is not set: answers come from the built-in fake LLM"
        );
    }
    let ctx = RequestContext::system();
    let result = if stream {
        match backend.llm().stream(&ctx, req).await {
            Ok(events) => return print_stream(events).await,
            Err(e) => Err(e),
        }
    } else {
        backend.llm().complete(&ctx, req).await
    };
    match result {
        Ok(c) => print_completion(&c),
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The request of the flags: core's task names, the system prompt first.
fn request(args: LlmArgs) -> Result<CompletionRequest, String> {
    let task = input::task(&args.task).map_err(|e| e.to_string())?;
    let prompt = prompt_text(args.prompt)?;
    let mut messages = Vec::new();
    if let Some(system) = args.system {
        messages.push(Message::system(system));
    }
    messages.push(Message::user(prompt));
    let mut req = CompletionRequest::new(task, messages);
    req.models = args
        .model
        .map(|m| m.split(',').map(|s| s.trim().to_owned()).collect());
    Ok(req)
}

fn summary(model: &str, fallback: bool, tokens: u64, latency_ms: u64) {
    eprintln!(
        "[model {model}{}, {tokens} tokens, {latency_ms} ms]",
        if fallback { " (fallback)" } else { "" },
    );
}

fn print_completion(c: &Completion) -> ExitCode {
    println!("{}", c.content);
    summary(
        &c.model_used,
        c.fallback_used,
        c.usage.total_tokens.into(),
        c.latency_ms,
    );
    ExitCode::SUCCESS
}

async fn print_stream(mut events: LlmStream) -> ExitCode {
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
                summary(
                    &s.model_used,
                    s.fallback_used,
                    s.usage.total_tokens.into(),
                    s.latency_ms,
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
