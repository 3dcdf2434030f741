# syntax=docker/dockerfile:1
# Both Switchboard images, from one build stage; pick one with --target:
#   docker build --target operator -t ghcr.io/switchboard-dev/switchboard-operator:0.1.0 .
#   docker build --target sidecar  -t ghcr.io/switchboard-dev/switchboard-sidecar:0.1.0 .
# or `make images`. The context is the repository root (the Cargo workspace).

# ---- build: static musl binaries for the builder's own architecture (amd64 or arm64) ----
FROM rust:1.95 AS build
# ring (rustls' crypto, in the operator) compiles C: musl-gcc comes from musl-tools.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The caches only speed up rebuilds; the binaries are copied out of the cached target dir in the
# same step. Both are built in one cargo run, so the shared dependencies compile once.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && rustup target add "$target" \
 && cargo build --release --locked --target "$target" \
      -p switchboard-operator --bin switchboard-operator \
      -p switchboard-sidecar --bin switchboard-sidecar \
 && for bin in switchboard-operator switchboard-sidecar; do \
      install -D -m 0755 "target/$target/release/$bin" "/out/$bin"; \
    done

# ---- run: no shell, no package manager, uid 65532 ----
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.source="https://github.com/switchboard-dev/switchboard" \
      org.opencontainers.image.url="https://github.com/switchboard-dev/switchboard" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
USER 65532:65532

FROM runtime AS sidecar
LABEL org.opencontainers.image.title="switchboard-sidecar" \
      org.opencontainers.image.description="Per-pod Redis-protocol sidecar that bridges a socket server's Redis adapter to a shared pub/sub backplane"
COPY --from=build /out/switchboard-sidecar /usr/local/bin/switchboard-sidecar
# 6379: the Redis listener (loopback unless --listen says otherwise); 9091: /healthz, /readyz, /metrics.
EXPOSE 6379 9091
ENTRYPOINT ["/usr/local/bin/switchboard-sidecar"]

FROM runtime AS operator
LABEL org.opencontainers.image.title="switchboard-operator" \
      org.opencontainers.image.description="Kubernetes operator for Switchboard: RealtimeCluster -> Redis backplane, ingress affinity, sidecar injection"
COPY --from=build /out/switchboard-operator /usr/local/bin/switchboard-operator
# 8080: /healthz, /readyz, /metrics; 9443: the injection webhook (HTTPS).
EXPOSE 8080 9443
ENTRYPOINT ["/usr/local/bin/switchboard-operator"]
