# Front door for developers. `make run` and `make test` are the README's quick start.
.PHONY: run test lint fmt bench services

run: ## Run the backend locally (starts Postgres/Redis when absent)
	scripts/run.sh

test: ## Run every test (starts Postgres/Redis when absent)
	scripts/test.sh

lint: ## rustfmt and clippy, as CI runs them
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

services: ## Start Postgres and Redis only
	scripts/services.sh --dev-db

-include infra/infra.mk
