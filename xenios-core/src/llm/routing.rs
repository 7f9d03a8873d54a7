//! The routing table the engine follows: which models serve a [`Task`], in which order, with
//! which temperature and `max_tokens`. The types and their defaults (the product spec's
//! table) are configuration and live in [`crate::config::llm`], which reads `LLM_ROUTES_FILE`
//! and `LLM_ROUTES`; they are re-exported here, where the engine uses them.

pub use crate::config::llm::{
    GPT_4O_MINI, LlmConfig, OPUS, Route, RoutingTable, SONNET, Task, UnknownTaskName,
};
