# syntax=docker/dockerfile:1
# Multi-stage build: dependencies are compiled in their own layer, so a change to src/ rebuilds
# only the service itself. The image it makes holds the binary and what it links (glibc,
# libgcc) and nothing else: no shell, no package manager, no curl; it runs as a user without
# privileges (65532, distroless's `nonroot`), and its health check is the binary itself.
#
# The base images are pinned by tag. To pin them by digest as well (what a registry serves
# under a tag can change), look the digest up and append it to the image's name in its FROM
# line, e.g. `FROM gcr.io/distroless/cc-debian12:nonroot@sha256:<digest> AS runtime`:
#
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot   # "Digest: sha256:..."
#   docker buildx imagetools inspect rust:1.95-slim-bookworm
#
# (or `docker pull <image>:<tag>` and `docker inspect --format '{{index .RepoDigests 0}}'
# <image>:<tag>`). Refresh them the same way, to take in the base images' security fixes.
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

# The build stage's Debian (bookworm, 12): the glibc the binary was linked against.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG CDR_GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="cdr-service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${CDR_GIT_COMMIT}"
COPY --from=build /app/target/release/cdr-service /usr/local/bin/cdr-service
# Numeric: Kubernetes' runAsNonRoot can verify only a numeric user.
USER 65532:65532
ENV ENV=production
EXPOSE 12052
# `cdr-service healthcheck` GETs /health/live on http.listen's port (`--ready` for
# /health/ready): exit 0 on a 2xx answer, 1 otherwise.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/cdr-service", "healthcheck"]
# SIGTERM starts a graceful stop bounded by shutdown.timeout (20s by default).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cdr-service"]
CMD ["run"]
