//! `xenios-server`: reads the configuration, sets up logging and serves until SIGTERM.

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a request or a job allocates and frees many small
/// buffers across threads, and glibc's allocator (`_int_malloc`, `_int_free`,
/// `malloc_consolidate`) was a fifth of the server's user-space CPU in a profile of
/// `scripts/bench-me.sh`; with mimalloc the same run answers 5-19% more requests. Built
/// `no_thp` (the workspace's feature): with transparent huge pages its arenas took the
/// server's idle RSS from 20 to 42 MB, without them 25 MB.
///
/// Measured again for low-load latency: the heap on huge pages *together with* the code
/// copied onto an anonymous huge-page mapping (`mremap` over the text segment) cut the
/// serving threads' CPU per call at 20 req/s by about 30% (`scripts/bench-llm.sh`) and
/// raised `scripts/bench-me.sh` by 4-6%, but idle RSS went to 47 MB, past the 30 MB
/// target; either one alone showed no gain. Revisit only as an opt-in.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The backend's own tasks run here; HTTP is served from a thread per core
/// ([`xenios_server::serve`]).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let config = match xenios_core::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xenios-server: {e}");
            return ExitCode::from(2);
        }
    };
    // Held to the end of main: dropping it flushes error reports and spans.
    let _telemetry = xenios_core::telemetry::init(&config);
    match xenios_server::serve(config, xenios_core::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "xenios-server failed");
            ExitCode::FAILURE
        }
    }
}
