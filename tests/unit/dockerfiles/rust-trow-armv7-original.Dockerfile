# Trow's arm/v7 Dockerfile as first written for `docker build` on an x86 machine: the cross
# stage has no --platform, so under --platform it belongs to the target; the final stage is
# pinned to linux/arm/v7 and RUNs
FROM rust:1.79 AS cross
ARG TARGET=armv7-unknown-linux-gnueabihf
RUN rustup target add $TARGET && apt-get update && apt-get install -y gcc-arm-linux-gnueabihf
WORKDIR /usr/src/trow
COPY . .
RUN cargo build --target $TARGET --release

FROM --platform=linux/arm/v7 debian:stable-slim
RUN groupadd -r -g 333333 trow && useradd -r -g trow -u 333333 trow
COPY --from=cross /usr/src/trow/target/armv7-unknown-linux-gnueabihf/release/trow /trow
USER trow
ENTRYPOINT ["/trow"]
