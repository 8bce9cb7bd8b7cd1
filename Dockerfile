# syntax=docker/dockerfile:1
# switchyard in a container: a release build, then a small non-root runtime image.
#   docker build -t switchyard .
#   docker run -p 8080:8080 -v "$PWD/config:/etc/switchyard:ro" -v switchyard-state:/var/lib/switchyard switchyard
# The config's [state] path should point into /var/lib/switchyard (the config directory is
# mounted read-only), and [admin] listen at 127.0.0.1:9901 or 0.0.0.0:9901 with a token_env.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a change to the sources alone does not rebuild them: every target
# Cargo.toml declares as an empty stub, then a build of the dependencies alone.
COPY Cargo.toml Cargo.lock ./
COPY deploy/docker/stub-targets.sh deploy/docker/stub-targets.sh
RUN sh deploy/docker/stub-targets.sh \
    && cargo build --release --locked --bin switchyard \
    && rm -rf src benches
# The sources. (CI replays this stage outside Docker: .ci/image-build-stage.)
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin switchyard \
    && mkdir -p out/man \
    && cp target/release/switchyard out/ \
    && strip out/switchyard \
    && out/switchyard man --out out/man \
    && out/switchyard --version

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --home-dir /var/lib/switchyard --shell /usr/sbin/nologin switchyard \
    && mkdir -p /etc/switchyard /var/lib/switchyard \
    && chown switchyard:switchyard /var/lib/switchyard
COPY --from=build /src/out/switchyard /usr/local/bin/switchyard
COPY --from=build /src/out/man /usr/local/share/man/man1
COPY config/switchyard.toml /etc/switchyard/switchyard.toml
USER 10001:10001
WORKDIR /var/lib/switchyard
EXPOSE 8080 9901
# Ready once the config is loaded and the listeners are bound (GET /readyz on [admin] listen).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["switchyard", "healthcheck", "-c", "/etc/switchyard/switchyard.toml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["switchyard"]
CMD ["run", "-c", "/etc/switchyard/switchyard.toml"]
