# Build stage: compile a release binary against the locked dependencies.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin sluice \
    && strip target/release/sluice

# Runtime stage: a slim Debian with the binary and the container config
# only (no demo certificate or key), running as an unprivileged user.
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
# Listens on 0.0.0.0:8080, admin API on 0.0.0.0:9090. Mount your own config
# over this file, and certificates and keys as secrets (see the file).
COPY config/sluice.container.toml /etc/sluice/sluice.toml
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
# sluice asks its own admin API: no curl in the image. A config without an
# [admin] listener on port 9090 needs its own HEALTHCHECK (or NONE).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/sluice", "--health-check", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--config", "/etc/sluice/sluice.toml"]
