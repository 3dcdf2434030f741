# Container images, kind, tests and generated manifests.
#   make images                              both images, tagged $(REGISTRY)/switchboard-{operator,sidecar}:$(TAG)
#   make images REGISTRY=registry.example:5000/sb TAG=dev
#   make kind-load KIND_CLUSTER=switchboard  load both images into a kind cluster
#   make test                                 bash tests/run.sh
#   make manifests                            regenerate manifests/ from the Helm chart

REGISTRY ?= ghcr.io/switchboard-dev
TAG ?= 0.1.0
OPERATOR_IMAGE ?= $(REGISTRY)/switchboard-operator:$(TAG)
SIDECAR_IMAGE ?= $(REGISTRY)/switchboard-sidecar:$(TAG)
DOCKER ?= docker
KIND ?= kind
KIND_CLUSTER ?= switchboard
REVISION ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
BUILD_ARGS = --build-arg VERSION=$(TAG) --build-arg REVISION=$(REVISION)

.PHONY: images image-operator image-sidecar kind-load test manifests

images: image-operator image-sidecar

image-operator:
	$(DOCKER) build --target operator $(BUILD_ARGS) -t $(OPERATOR_IMAGE) .

image-sidecar:
	$(DOCKER) build --target sidecar $(BUILD_ARGS) -t $(SIDECAR_IMAGE) .

kind-load:
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(OPERATOR_IMAGE) $(SIDECAR_IMAGE)

test:
	bash tests/run.sh

manifests:
	bash scripts/gen-manifests.sh
