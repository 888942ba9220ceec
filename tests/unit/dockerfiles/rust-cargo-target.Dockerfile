FROM --platform=$BUILDPLATFORM rust:1.79-bookworm AS build
ARG RUST_TARGET
ARG GNU_TRIPLE
RUN rustup target add "$RUST_TARGET"
RUN apt-get update && apt-get install -y --no-install-recommends "gcc-${GNU_TRIPLE//_/-}" libc6-dev-cross
WORKDIR /src
COPY . .
RUN cargo build --release --target "$RUST_TARGET" && cp "target/$RUST_TARGET/release/app" /app

FROM debian:bookworm-slim
COPY --from=build /app /usr/local/bin/app
CMD ["app"]
