# Cocoon build. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
export PATH := $(CURDIR)/.tools/bin:$(PATH)
export GOFLAGS := -buildvcs=false

# Pinned tool versions.
PROTOC_GEN_GO_VERSION    := v1.36.12
PROTOC_GEN_TTRPC_VERSION := v1.2.10
STATICCHECK_VERSION      := v0.8.2
CRICTL_VERSION           := v1.37.0
OPA_VERSION              := v1.22.3
COSIGN_VERSION           := v2.6.1

DEBIAN_PACKAGES := protobuf-compiler libprotobuf-dev containerd runc qemu-system-x86 busybox-static \
	cryptsetup-bin kmod cpio e2fsprogs erofs-utils iproute2 gzip util-linux rpm2cpio curl skopeo umoci

# Production images drop the simulated SNP provider: make build BUILD_TAGS='netgo osusergo'
BUILD_TAGS ?= netgo osusergo simulated

BINARIES := agent/cmd/cocoon-agent agent/cmd/cocoon-policy rootfs/cmd/cocoon-rootfs kbs-client/cmd/cocoon-kbs \
	kbs-client/cmd/kbs-client shim/cmd/containerd-shim-cocoon-v2 e2e/cmd/cocoon-demo
PROTO_DIR := rpc/proto
PROTOS    := $(wildcard $(PROTO_DIR)/*.proto)

.PHONY: help deps go-deps build test test-unit test-root lint bench protos check-protos demo clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps: ## install Debian packages and pinned Go tools (idempotent)
	@hack/deps.sh $(DEBIAN_PACKAGES)
	@$(MAKE) --no-print-directory go-deps

go-deps: ## download Go modules and install the pinned Go tools into .tools/bin
	$(GO) mod download
	@mkdir -p .tools/bin
	GOBIN=$(CURDIR)/.tools/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/.tools/bin $(GO) install github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc@$(PROTOC_GEN_TTRPC_VERSION)
	GOBIN=$(CURDIR)/.tools/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	GOBIN=$(CURDIR)/.tools/bin $(GO) install sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)
	GOBIN=$(CURDIR)/.tools/bin $(GO) install github.com/sigstore/cosign/v2/cmd/cosign@$(COSIGN_VERSION)

build: ## build every binary into bin/
	@mkdir -p bin
	@for b in $(BINARIES); do \
	  if [ -d $$b ]; then echo "go build $$b"; \
	    CGO_ENABLED=1 $(GO) build -trimpath -ldflags '-s -w -extldflags -static' -tags '$(BUILD_TAGS)' -o bin/$$(basename $$b) ./$$b || exit 1; fi; \
	done

test: ## all tests: unit, root integration (when root), end to end
	@hack/test.sh all

test-unit: ## tests that need no root
	@hack/test.sh unit

lint: ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...

bench: build ## benchmarks, each reported as a ratio against a reference measured in the same run
	@hack/bench.sh

protos: ## regenerate Go code from rpc/proto
	cd $(PROTO_DIR) && protoc -I . -I /usr/include \
	  --go_out=../.. --go_opt=module=github.com/cocoon-containers/cocoon \
	  --go-ttrpc_out=../.. --go-ttrpc_opt=module=github.com/cocoon-containers/cocoon \
	  $(notdir $(PROTOS))

check-protos: ## regenerate and fail if the committed code differs
	@$(MAKE) --no-print-directory protos
	@git diff --exit-code -- rpc/ || { echo "generated code is stale: run make protos and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- rpc/)" || { git status --porcelain -- rpc/; echo "untracked generated files"; exit 1; }

demo: deps build ## the main job on embedded defaults
	@hack/demo.sh

clean: ## remove build output
	rm -rf bin .tools/cache
