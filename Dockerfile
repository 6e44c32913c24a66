# syntax=docker/dockerfile:1
# Multi-stage build: dependencies are compiled in their own layer, so a change to src/ rebuilds
# only the service itself.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# make: jemalloc (the service's allocator) is built from C sources.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# 1. Dependencies only, against stub crates: every member of the workspace (the service at the
#    root, the crates in crates/) with empty targets, and the benches its manifest names. Both
#    stages build the service's package alone (-p), so both resolve the same features.
COPY Cargo.toml Cargo.lock ./
COPY crates/core/Cargo.toml crates/core/
COPY crates/schema/Cargo.toml crates/schema/
COPY crates/storm/Cargo.toml crates/storm/
COPY crates/testkit/Cargo.toml crates/testkit/
RUN mkdir -p src benches crates/core/src crates/schema/src crates/storm/src crates/testkit/src \
    && echo 'fn main() {}' > src/main.rs \
    && for lib in src crates/core/src crates/schema/src crates/storm/src crates/testkit/src; do echo '' > $lib/lib.rs; done \
    && echo 'fn main() {}' > benches/fold.rs \
    && echo 'fn main() {}' > benches/storm.rs \
    && cargo build --release --locked -p cdr-service \
    && rm -rf src benches crates/*/src
# 2. The service.
ARG CDR_GIT_COMMIT=unknown
ENV CDR_GIT_COMMIT=${CDR_GIT_COMMIT}
COPY config ./config
COPY migrations ./migrations
COPY src ./src
COPY benches ./benches
COPY crates ./crates
RUN touch src/main.rs src/lib.rs crates/*/src/lib.rs \
    && cargo build --release --locked -p cdr-service --bin cdr-service

FROM debian:bookworm-slim AS runtime
ARG VERSION=0.1.0
ARG CDR_GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="cdr-service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${CDR_GIT_COMMIT}"
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home cdr
COPY --from=build /app/target/release/cdr-service /usr/local/bin/cdr-service
USER cdr
ENV ENV=production
EXPOSE 12052
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:12052/health/live || exit 1
# SIGTERM starts a graceful stop bounded by shutdown.timeout (20s by default).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cdr-service"]
CMD ["run"]
