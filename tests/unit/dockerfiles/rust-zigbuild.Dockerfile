FROM --platform=$BUILDPLATFORM rust:1.79 AS build
RUN pip3 install --break-system-packages ziglang cargo-zigbuild || \
    (apt-get update && apt-get install -y python3-pip && pip3 install --break-system-packages ziglang cargo-zigbuild)
ARG RUST_TARGET
RUN rustup target add "$RUST_TARGET"
WORKDIR /src
COPY . .
RUN cargo zigbuild --release --target "$RUST_TARGET" && cp target/$RUST_TARGET/release/app /app
FROM gcr.io/distroless/cc-debian12
COPY --from=build /app /app
CMD ["/app"]
