# syntax=docker/dockerfile:1
# sweeper: a small image with only the binary, run as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY tests ./tests
RUN cargo build --release --locked --bin sweeper

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sweeper /usr/local/bin/sweeper
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sweeper"]
CMD ["run", "--output", "json", "--log-format", "json"]
