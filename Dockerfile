# Build stage: compile a release binary against the locked dependencies.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin sluice \
    && strip target/release/sluice

# Runtime stage: a slim Debian with only the binary and its config,
# running as an unprivileged user.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /opt/sluice --shell /usr/sbin/nologin sluice
WORKDIR /opt/sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY --chown=sluice:sluice config ./config
USER sluice
# The shipped config's listeners; mount your own config over
# /opt/sluice/config/sluice.toml and listen on 0.0.0.0 inside the container.
EXPOSE 8080 8443
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--config", "config/sluice.toml"]
