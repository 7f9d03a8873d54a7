# Deployment targets, included by the root Makefile (`include infra/infra.mk`); make runs from
# the repository root, so every path here is relative to it. Guide: infra/README.md.
#
#   make provision ENV=staging [PROVISION_USER=root]   base system, firewall, Docker, Caddy
#   make deploy ENV=staging TAG=<git-sha>              or deploy-staging / deploy-prod TAG=...
#   make rollback ENV=production                       back to the tag before the last deploy
#   make edit-secrets ENV=production                   ansible-vault edit, then push-secrets
#   make infra-check                                   offline checks (CI runs them too)
#   make infra-e2e                                     everything for real (root, slow)

ENV ?= staging
TAG ?=
IMAGE ?= ghcr.io/xenios/ai-backend
# Ansible Vault password file (git-ignored); see infra/ansible/vault-password.example.
VAULT_PASSWORD_FILE ?= infra/ansible/.vault-password
# Extra ansible-playbook arguments, e.g. ANSIBLE_ARGS="--check --diff" or "--limit host".
ANSIBLE_ARGS ?=
PROVISION_USER ?=
DOCKER ?= docker
DOCKER_COMPOSE ?= docker compose

INFRA_VENV ?= target/infra-venv
INFRA_BIN := $(abspath $(INFRA_VENV))/bin
ANSIBLE_DIR ?= infra/ansible
INFRA_VAULT := --vault-password-file $(abspath $(VAULT_PASSWORD_FILE))
INFRA_INVENTORY := -i inventory/$(ENV).yml
# Ansible must run from infra/ansible so that its ansible.cfg, roles/ and inventory/ apply.
INFRA_PLAYBOOK = cd $(ANSIBLE_DIR) && ANSIBLE_CONFIG=ansible.cfg $(INFRA_BIN)/ansible-playbook \
	$(INFRA_INVENTORY) $(INFRA_VAULT) $(ANSIBLE_ARGS)

.PHONY: provision deploy deploy-staging deploy-prod rollback push-secrets edit-secrets encrypt \
	lint-ansible docker-build docker-up docker-down infra-check infra-chroot-test infra-image-test infra-engine-test infra-dev-test infra-venv \
	infra-env-check infra-vault-check infra-e2e

infra-venv:
	@infra/tests/venv.sh

infra-env-check:
	@case "$(ENV)" in staging|production) ;; \
	  *) echo "ENV must be staging or production, not '$(ENV)'" >&2; exit 2;; esac

infra-vault-check:
	@test -f "$(VAULT_PASSWORD_FILE)" || { \
	  echo "No vault password file at $(VAULT_PASSWORD_FILE) (set VAULT_PASSWORD_FILE=...)." >&2; \
	  echo "To try things out: cp infra/ansible/vault-password.example $(VAULT_PASSWORD_FILE)" >&2; \
	  exit 2; }

provision: infra-venv infra-env-check infra-vault-check
	$(INFRA_PLAYBOOK) $(if $(PROVISION_USER),-e ansible_user=$(PROVISION_USER)) playbooks/provision.yml

deploy: infra-venv infra-env-check infra-vault-check
	@test -n "$(TAG)" || { echo "TAG is required: make deploy ENV=$(ENV) TAG=<image tag>" >&2; exit 2; }
	$(INFRA_PLAYBOOK) -e app_image_tag=$(TAG) playbooks/deploy.yml

INFRA_MAKEFILE := $(firstword $(MAKEFILE_LIST))

deploy-staging:
	@$(MAKE) --no-print-directory -f $(INFRA_MAKEFILE) deploy ENV=staging TAG=$(TAG)

deploy-prod:
	@$(MAKE) --no-print-directory -f $(INFRA_MAKEFILE) deploy ENV=production TAG=$(TAG)

rollback: infra-venv infra-env-check infra-vault-check
	$(INFRA_PLAYBOOK) playbooks/rollback.yml

# Re-render .env from the vault on the hosts, keeping the deployed tag (after edit-secrets).
push-secrets: infra-venv infra-env-check infra-vault-check
	$(INFRA_PLAYBOOK) playbooks/secrets.yml

edit-secrets: infra-venv infra-env-check infra-vault-check
	$(INFRA_BIN)/ansible-vault edit $(INFRA_VAULT) $(ANSIBLE_DIR)/inventory/group_vars/$(ENV)/vault.yml

# Encrypt a plaintext vault file in place (FILE=..., default: the ENV's vault.yml).
FILE ?= $(ANSIBLE_DIR)/inventory/group_vars/$(ENV)/vault.yml
encrypt: infra-venv infra-vault-check
	$(INFRA_BIN)/ansible-vault encrypt $(INFRA_VAULT) $(FILE)

lint-ansible: infra-venv
	cd $(ANSIBLE_DIR) && $(INFRA_BIN)/ansible-lint -c .ansible-lint --offline --strict \
		. ../tests/render.yml

docker-build:
	$(DOCKER) build -f infra/docker/Dockerfile --target runtime \
		--build-arg GIT_COMMIT=$(or $(GIT_COMMIT),$(shell git rev-parse --short=12 HEAD 2>/dev/null)) \
		-t $(IMAGE):$(or $(TAG),dev) .

# The development stack of the root compose.yaml (= infra/docker/docker-compose.yml).
docker-up:
	$(DOCKER_COMPOSE) up -d --build

docker-down:
	$(DOCKER_COMPOSE) down

infra-check:
	bash infra/tests/check.sh

# The steps of infra-e2e one by one. Slow (minutes), root only, not run by CI.
infra-chroot-test:
	bash infra/tests/chroot-roles.sh

infra-image-test:
	bash infra/tests/image-build.sh

# deploy/rollback/secrets and Caddy HTTPS; needs infra-image-test's image.
infra-engine-test:
	bash infra/tests/engine-deploy.sh

infra-dev-test:
	bash infra/tests/dev-stack.sh

# Everything for real, in private namespaces with a throwaway engine: the real image, the dev
# stack, deploy/rollback, Caddy HTTPS from a local ACME server, provision. Root, slow.
infra-e2e:
	bash infra/tests/e2e.sh
