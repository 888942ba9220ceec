# The seed article's project (Trow), its arm/v7 Dockerfile: the cross stage on the build
# machine, the final stage pinned to linux/arm/v7 whatever is being built
FROM --platform=$BUILDPLATFORM rust:1.79 AS cross
ARG TARGET=armv7-unknown-linux-gnueabihf
RUN rustup target add $TARGET
RUN apt-get update && apt-get install -y gcc-arm-linux-gnueabihf
WORKDIR /usr/src/trow
COPY . .
RUN cargo build --target $TARGET --release

FROM --platform=linux/arm/v7 debian:stable-slim
COPY --from=cross /usr/src/trow/target/armv7-unknown-linux-gnueabihf/release/trow /trow
ENTRYPOINT ["/trow"]
