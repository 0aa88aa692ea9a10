# syntax=docker/dockerfile:1
# contact-sync container image.
#   docker build -t contact-sync:0.1.0 .
#   docker run --rm contact-sync:0.1.0 check-config      # validates the bundled example config
# Kubernetes manifests: deploy/kubernetes/ (they mount the real config and secrets).

ARG RUST_IMAGE=rust:1-slim-bookworm

# ---- build -----------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Only what the build reads; sqlx::migrate! embeds migrations/ at compile time.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
# Cargo.toml declares the benchmark target; cargo refuses a manifest whose target is missing.
COPY benches ./benches
# The workspace lists crates/contact-sync-sim, so cargo needs its manifest and sources to
# resolve the workspace, although the binary below does not link it.
COPY crates ./crates
# --no-default-features: the production binary has no `demo` feature, so neither the demo nor
# the stand-ins it runs against (deploy/check-production-build.sh proves it in CI).
# BuildKit cache mounts keep the crates.io downloads and compiled dependencies between builds.
# The binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin contact-sync \
 && install -D -m 0755 target/release/contact-sync /out/contact-sync \
 && mkdir -p /out/state

# ---- runtime ---------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc_s, CA certificates (rustls reads the system roots), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/contact-sync /usr/local/bin/contact-sync
COPY config/contact-sync.example.toml /etc/contact-sync/contact-sync.toml
# Database directory, writable by the non-root user (mount a volume here).
COPY --from=build --chown=65532:65532 /out/state /var/lib/contact-sync
ENV CONTACT_SYNC_CONFIG=/etc/contact-sync/contact-sync.toml \
    CONTACT_SYNC__DATABASE__URL=sqlite:///var/lib/contact-sync/contact-sync.db \
    CONTACT_SYNC__ADMIN__LISTEN=0.0.0.0:9464
WORKDIR /var/lib/contact-sync
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 9464
# No HEALTHCHECK: distroless has no shell or curl to run one; orchestrators probe
# http://:9464/healthz and /readyz instead (see deploy/kubernetes/deployment.yaml).
ENTRYPOINT ["/usr/local/bin/contact-sync"]
CMD ["--config", "/etc/contact-sync/contact-sync.toml"]
