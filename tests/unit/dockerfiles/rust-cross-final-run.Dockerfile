FROM --platform=$BUILDPLATFORM rust:1.79 AS build
ARG RUST_TARGET
RUN rustup target add $RUST_TARGET
COPY . /src
RUN cd /src && cargo build --release --target $RUST_TARGET

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y libssl3 ca-certificates
ARG RUST_TARGET
COPY --from=build /src/target/${RUST_TARGET}/release/app /usr/local/bin/
CMD ["app"]
