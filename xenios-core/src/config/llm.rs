//! The LLM settings (`LLM_*`): the routing table (task -> models, temperature, max_tokens),
//! timeouts, retries and the model allow list. `crate::llm` applies them (routes, retries,
//! fallback, [`crate::llm::policy::authorize`]); this module only reads and checks them, so
//! the configuration does not depend on the engine.
//!
//! Defaults follow the product spec exactly:
//!
//! | task | primary | fallback | temperature | max_tokens |
//! |---|---|---|---|---|
//! | session_summary | anthropic/claude-opus-4.5 | anthropic/claude-sonnet-4 | 0.3 | 4000 |
//! | insight_generation | anthropic/claude-opus-4.5 | anthropic/claude-sonnet-4 | 0.5 | 2000 |
//! | chat | anthropic/claude-opus-4.5 | anthropic/claude-sonnet-4 | 0.7 | 1500 |
//! | intent_classification | anthropic/claude-sonnet-4 | openai/gpt-4o-mini | 0.0 | 100 |
//! | entity_extraction | anthropic/claude-sonnet-4 | openai/gpt-4o-mini | 0.0 | 500 |
//!
//! Operators override them without
//! rebuilding, in this order (later wins):
//! 1. `LLM_ROUTES_FILE`: a JSON file `{"chat": {"models": [..], "temperature": 0.7,
//!    "max_tokens": 2000}, ...}`; every field optional, unknown tasks or fields refused.
//! 2. `LLM_ROUTES`: models only, `chat=m1,m2;intent_classification=m3`.
//!
//! Problems (unknown task, empty route, duplicate model, bad numbers) are reported with the
//! other configuration problems at startup.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Longest accepted model id.
const MAX_MODEL_ID_LEN: usize = 200;

/// OpenRouter id of Claude Opus 4.5.
pub const OPUS: &str = "anthropic/claude-opus-4.5";
/// OpenRouter id of Claude Sonnet 4.
pub const SONNET: &str = "anthropic/claude-sonnet-4";
/// OpenRouter id of GPT-4o mini.
pub const GPT_4O_MINI: &str = "openai/gpt-4o-mini";

/// The kinds of work the backend asks models for; named in snake_case (`session_summary`)
/// in APIs, config and audit rows.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::IntoStaticStr,
    strum::Display,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum Task {
    /// Summary of a coaching session (reasoning).
    SessionSummary,
    /// Insights across sessions (reasoning).
    InsightGeneration,
    /// Conversational replies, usually streamed.
    Chat,
    /// Classifying a message's intent (simple).
    IntentClassification,
    /// Extracting entities from text (simple).
    EntityExtraction,
}

impl Task {
    /// Every task.
    pub const ALL: &'static [Task] = <Task as strum::VariantArray>::VARIANTS;

    /// The name used in APIs, config and audit rows.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A name that is not one of the [`Task`]s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown task `{}` (one of {})",
    .0.chars().take(64).collect::<String>(),
    Task::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
)]
pub struct UnknownTaskName(pub String);

impl FromStr for Task {
    type Err = UnknownTaskName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Task::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTaskName(s.to_owned()))
    }
}

/// How one task is served.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Models tried in order: the primary, then fallbacks.
    pub models: Vec<String>,
    /// Sampling temperature.
    pub temperature: f32,
    /// Most tokens to generate.
    pub max_tokens: u32,
}

impl Route {
    fn new(models: &[&str], temperature: f32, max_tokens: u32) -> Self {
        Self {
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            temperature,
            max_tokens,
        }
    }
}

/// The route of every task.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingTable {
    routes: BTreeMap<Task, Route>,
}

impl Default for RoutingTable {
    fn default() -> Self {
        let routes = Task::ALL
            .iter()
            .map(|&t| {
                let route = match t {
                    Task::SessionSummary => Route::new(&[OPUS, SONNET], 0.3, 4000),
                    Task::InsightGeneration => Route::new(&[OPUS, SONNET], 0.5, 2000),
                    Task::Chat => Route::new(&[OPUS, SONNET], 0.7, 1500),
                    Task::IntentClassification => Route::new(&[SONNET, GPT_4O_MINI], 0.0, 100),
                    Task::EntityExtraction => Route::new(&[SONNET, GPT_4O_MINI], 0.0, 500),
                };
                (t, route)
            })
            .collect();
        Self { routes }
    }
}

impl RoutingTable {
    /// The route of a task.
    pub fn route(&self, task: Task) -> &Route {
        // Every task has a route: built from defaults, overrides only replace fields.
        &self.routes[&task]
    }

    /// Every task with its route.
    pub fn iter(&self) -> impl Iterator<Item = (Task, &Route)> {
        self.routes.iter().map(|(t, r)| (*t, r))
    }

    fn route_mut(&mut self, task: Task) -> &mut Route {
        self.routes
            .entry(task)
            .or_insert_with(|| Route::new(&[], 0.0, 1))
    }
}

/// One entry of `LLM_ROUTES_FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteOverride {
    models: Option<Vec<String>>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
}

/// LLM settings: routes, timeouts, retries.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    /// The routing table (defaults, `LLM_ROUTES_FILE`, `LLM_ROUTES`).
    pub routes: RoutingTable,
    /// `LLM_CONNECT_TIMEOUT_MS`: TCP/TLS connect timeout of the upstream client (default 5000).
    pub connect_timeout: Duration,
    /// `LLM_TTFT_TIMEOUT_MS`: most time from sending a request to its first token, or to the
    /// whole answer when not streaming (default 60000).
    pub ttft_timeout: Duration,
    /// `LLM_TIMEOUT_MS`: most time one attempt may take end to end (default 300000).
    pub total_timeout: Duration,
    /// `LLM_MAX_RETRIES`: retries of one model on retryable failures before falling back
    /// (default 2).
    pub max_retries: u32,
    /// `LLM_RETRY_BASE_MS`: first backoff delay, doubled each retry, with jitter (default 250).
    pub retry_base_delay: Duration,
    /// `LLM_RETRY_MAX_DELAY_MS`: longest wait between retries, `Retry-After` included
    /// (default 10000); a longer `Retry-After` moves on to the next model instead.
    pub retry_max_delay: Duration,
    /// `LLM_RETRY_BUDGET_MS`: most time spent waiting between retries in one call
    /// (default 20000).
    pub retry_budget: Duration,
    /// `LLM_ALLOWED_MODELS`: the models the service may name in a call (comma-separated ids
    /// or `prefix*` patterns; default: every model of the routing table). Users never name
    /// models (see [`crate::llm::policy`]).
    pub allowed_models: ModelAllowList,
    /// `LLM_USER_DAILY_TOKENS`: tokens one user may spend per UTC day, counted in Redis from
    /// the usage upstreams report (default 0: no budget). The service is not budgeted.
    pub user_daily_tokens: u64,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            routes: RoutingTable::default(),
            connect_timeout: Duration::from_secs(5),
            ttft_timeout: Duration::from_secs(60),
            total_timeout: Duration::from_secs(300),
            max_retries: 2,
            retry_base_delay: Duration::from_millis(250),
            retry_max_delay: Duration::from_secs(10),
            retry_budget: Duration::from_secs(20),
            allowed_models: ModelAllowList::from_routes(&RoutingTable::default()),
            user_daily_tokens: 0,
        }
    }
}

impl LlmConfig {
    /// Reads the settings through a variable lookup, appending each problem to `problems`.
    pub fn from_lookup(
        lookup: &dyn Fn(&str) -> Option<String>,
        problems: &mut Vec<String>,
    ) -> Self {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut millis = |name: &str, default: Duration| -> Duration {
            match get(name) {
                None => default,
                Some(raw) => match raw.parse::<u64>() {
                    Ok(ms) => Duration::from_millis(ms),
                    Err(e) => {
                        problems.push(format!("{name}: cannot parse `{raw}`: {e}"));
                        default
                    }
                },
            }
        };
        let d = Self::default();
        let connect_timeout = millis("LLM_CONNECT_TIMEOUT_MS", d.connect_timeout);
        let ttft_timeout = millis("LLM_TTFT_TIMEOUT_MS", d.ttft_timeout);
        let total_timeout = millis("LLM_TIMEOUT_MS", d.total_timeout);
        let retry_base_delay = millis("LLM_RETRY_BASE_MS", d.retry_base_delay);
        let retry_max_delay = millis("LLM_RETRY_MAX_DELAY_MS", d.retry_max_delay);
        let retry_budget = millis("LLM_RETRY_BUDGET_MS", d.retry_budget);
        let max_retries = match get("LLM_MAX_RETRIES") {
            None => d.max_retries,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n) if n <= 10 => n,
                _ => {
                    problems.push(format!(
                        "LLM_MAX_RETRIES: `{raw}` is not a number from 0 to 10"
                    ));
                    d.max_retries
                }
            },
        };
        let mut routes = RoutingTable::default();
        if let Some(path) = get("LLM_ROUTES_FILE") {
            match std::fs::read_to_string(&path) {
                Ok(text) => apply_routes_json(&mut routes, &text, problems),
                Err(e) => problems.push(format!("LLM_ROUTES_FILE: cannot read `{path}`: {e}")),
            }
        }
        if let Some(spec) = get("LLM_ROUTES") {
            apply_routes_spec(&mut routes, &spec, problems);
        }
        for (task, route) in routes.iter() {
            if let Err(e) = validate_models(&route.models) {
                problems.push(format!("LLM routes: task `{task}`: {e}"));
            }
        }
        let allowed_models = match get("LLM_ALLOWED_MODELS") {
            None => ModelAllowList::from_routes(&routes),
            Some(raw) => ModelAllowList::parse(&raw).unwrap_or_else(|e| {
                problems.push(format!("LLM_ALLOWED_MODELS: {e}"));
                ModelAllowList::from_routes(&routes)
            }),
        };
        let user_daily_tokens = match get("LLM_USER_DAILY_TOKENS") {
            None => 0,
            Some(raw) => raw.parse::<u64>().unwrap_or_else(|e| {
                problems.push(format!("LLM_USER_DAILY_TOKENS: cannot parse `{raw}`: {e}"));
                0
            }),
        };
        Self {
            allowed_models,
            user_daily_tokens,
            routes,
            connect_timeout,
            ttft_timeout,
            total_timeout,
            max_retries,
            retry_base_delay,
            retry_max_delay,
            retry_budget,
        }
    }
}

fn apply_routes_json(table: &mut RoutingTable, text: &str, problems: &mut Vec<String>) {
    let parsed: BTreeMap<String, RouteOverride> = match serde_json::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            problems.push(format!("LLM_ROUTES_FILE: not a valid routes file: {e}"));
            return;
        }
    };
    for (name, o) in parsed {
        let task = match name.parse::<Task>() {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("LLM_ROUTES_FILE: {e}"));
                continue;
            }
        };
        let route = table.route_mut(task);
        if let Some(models) = o.models {
            route.models = models;
        }
        if let Some(t) = o.temperature {
            if (0.0..=2.0).contains(&t) {
                route.temperature = t;
            } else {
                problems.push(format!(
                    "LLM_ROUTES_FILE: task `{task}`: temperature {t} is not between 0 and 2"
                ));
            }
        }
        if let Some(m) = o.max_tokens {
            if m > 0 {
                route.max_tokens = m;
            } else {
                problems.push(format!(
                    "LLM_ROUTES_FILE: task `{task}`: max_tokens must be at least 1"
                ));
            }
        }
    }
}

fn apply_routes_spec(table: &mut RoutingTable, spec: &str, problems: &mut Vec<String>) {
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, models)) = entry.split_once('=') else {
            problems.push(format!("LLM_ROUTES: `{entry}` is not `task=model1,model2`"));
            continue;
        };
        match name.trim().parse::<Task>() {
            Ok(task) => {
                table.route_mut(task).models = models
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            Err(e) => problems.push(format!("LLM_ROUTES: {e}")),
        }
    }
}

/// The models the service may name in a call (`LLM_ALLOWED_MODELS`).
///
/// Entries are exact model ids, or prefixes ending in `*` (`anthropic/*`; a lone `*` allows
/// any model, meant for development and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelAllowList {
    exact: HashSet<String>,
    prefixes: Vec<String>,
}

impl ModelAllowList {
    /// Every model of the routing table (the default).
    pub fn from_routes(routes: &RoutingTable) -> Self {
        Self {
            exact: routes
                .iter()
                .flat_map(|(_, r)| r.models.iter().cloned())
                .collect(),
            prefixes: Vec::new(),
        }
    }

    /// Parses a comma-separated list; `Err` names the bad entry.
    pub fn parse(raw: &str) -> std::result::Result<Self, ModelListError> {
        let mut list = Self {
            exact: HashSet::new(),
            prefixes: Vec::new(),
        };
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Some(prefix) = entry.strip_suffix('*') {
                if prefix.contains('*') {
                    return Err(ModelListError::MisplacedStar(entry.to_owned()));
                }
                list.prefixes.push(prefix.to_owned());
            } else if is_valid_model_id(entry) {
                list.exact.insert(entry.to_owned());
            } else {
                return Err(ModelListError::NotAnEntry(entry.to_owned()));
            }
        }
        if list.exact.is_empty() && list.prefixes.is_empty() {
            return Err(ModelListError::EmptyAllowList);
        }
        Ok(list)
    }

    /// Whether `model` may be named.
    pub fn allows(&self, model: &str) -> bool {
        self.exact.contains(model) || self.prefixes.iter().any(|p| model.starts_with(p))
    }
}

/// What is wrong with a list of model ids (a request's `models`, a route,
/// `LLM_ALLOWED_MODELS`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelListError {
    /// No model at all.
    #[error("the list of models is empty")]
    Empty,
    /// An entry that is not a model id (quoted up to 200 characters).
    #[error("`{0}` is not a model id like `anthropic/claude-sonnet-4`")]
    NotAModelId(String),
    /// The same model twice.
    #[error("model `{0}` is listed twice")]
    Twice(String),
    /// An allow-list entry with `*` elsewhere than at its end.
    #[error("`{0}`: `*` may only end an entry")]
    MisplacedStar(String),
    /// An allow-list entry that is not a model id.
    #[error("`{0}` is not a model id")]
    NotAnEntry(String),
    /// An allow list without entries.
    #[error("the list is empty")]
    EmptyAllowList,
}

/// Checks a list of model ids: not empty, sane ids, no duplicates (in linear time: a hostile
/// list is checked with one hash set, not by comparing every pair).
pub(crate) fn validate_models(models: &[String]) -> std::result::Result<(), ModelListError> {
    if models.is_empty() {
        return Err(ModelListError::Empty);
    }
    let mut seen = std::collections::HashSet::with_capacity(models.len());
    for m in models {
        if !is_valid_model_id(m) {
            return Err(ModelListError::NotAModelId(
                m.chars().take(MAX_MODEL_ID_LEN).collect(),
            ));
        }
        if !seen.insert(m.as_str()) {
            return Err(ModelListError::Twice(m.clone()));
        }
    }
    Ok(())
}

/// A model id: 1 to 200 printable ASCII characters without spaces.
fn is_valid_model_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_MODEL_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> (LlmConfig, Vec<String>) {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut problems = Vec::new();
        let c = LlmConfig::from_lookup(&|n| map.get(n).cloned(), &mut problems);
        (c, problems)
    }

    #[test]
    fn defaults_are_the_spec_table_literally() {
        let (c, problems) = read(&[]);
        assert!(problems.is_empty(), "{problems:?}");
        let spec = [
            (
                "session_summary",
                "anthropic/claude-opus-4.5",
                "anthropic/claude-sonnet-4",
                0.3,
                4000,
            ),
            (
                "insight_generation",
                "anthropic/claude-opus-4.5",
                "anthropic/claude-sonnet-4",
                0.5,
                2000,
            ),
            (
                "chat",
                "anthropic/claude-opus-4.5",
                "anthropic/claude-sonnet-4",
                0.7,
                1500,
            ),
            (
                "intent_classification",
                "anthropic/claude-sonnet-4",
                "openai/gpt-4o-mini",
                0.0,
                100,
            ),
            (
                "entity_extraction",
                "anthropic/claude-sonnet-4",
                "openai/gpt-4o-mini",
                0.0,
                500,
            ),
        ];
        assert_eq!(c.routes.iter().count(), spec.len());
        for (task, primary, fallback, temperature, max_tokens) in spec {
            let route = c.routes.route(task.parse().unwrap());
            assert_eq!(route.models, [primary, fallback], "{task}");
            assert_eq!(route.temperature, temperature, "{task}");
            assert_eq!(route.max_tokens, max_tokens, "{task}");
        }
    }

    #[test]
    fn env_spec_overrides_and_is_validated() {
        let (c, problems) = read(&[("LLM_ROUTES", "chat=a/x, b/y ; entity_extraction=c/z")]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.routes.route(Task::Chat).models, ["a/x", "b/y"]);
        assert_eq!(c.routes.route(Task::EntityExtraction).models, ["c/z"]);

        let (_, problems) = read(&[(
            "LLM_ROUTES",
            "poetry=a/x;chat=;intent_classification=a/x,a/x;oops",
        )]);
        let text = problems.join("\n");
        assert!(text.contains("unknown task `poetry`"), "{text}");
        assert!(
            text.contains("task `chat`: the list of models is empty"),
            "{text}"
        );
        assert!(text.contains("`a/x` is listed twice"), "{text}");
        assert!(text.contains("`oops` is not"), "{text}");
    }

    #[test]
    fn routes_file_overrides_fields_and_refuses_unknowns() {
        let dir = std::env::temp_dir().join(format!("xenios-routes-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"chat": {"models": ["m/1"], "temperature": 1.0}, "session_summary": {"max_tokens": 10}}"#,
        )
        .unwrap();
        let (c, problems) = read(&[("LLM_ROUTES_FILE", good.to_str().unwrap())]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.routes.route(Task::Chat).models, ["m/1"]);
        assert_eq!(c.routes.route(Task::Chat).temperature, 1.0);
        assert_eq!(c.routes.route(Task::SessionSummary).max_tokens, 10);
        assert_eq!(c.routes.route(Task::SessionSummary).models, [OPUS, SONNET]);

        let bad = dir.join("bad.json");
        std::fs::write(
            &bad,
            r#"{"summarize": {"models": ["m/1"]}, "chat": {"models": []}}"#,
        )
        .unwrap();
        let (_, problems) = read(&[("LLM_ROUTES_FILE", bad.to_str().unwrap())]);
        let text = problems.join("\n");
        assert!(text.contains("unknown task `summarize`"), "{text}");
        assert!(
            text.contains("task `chat`: the list of models is empty"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
