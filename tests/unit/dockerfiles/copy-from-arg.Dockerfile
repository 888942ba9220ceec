# Which builder the final stage copies from is a build arg. BuildKit never expands --from, so
# the global ARG picks the stage in FROM and --from names that stage.
ARG BUILDER=builder-cross
FROM --platform=$BUILDPLATFORM golang:1.22 AS builder-cross
ARG TARGETARCH
COPY . /src
RUN cd /src && GOARCH=$TARGETARCH go build -o /app
FROM golang:1.22 AS builder-native
COPY . /src
RUN cd /src && go build -o /app
FROM ${BUILDER} AS builder
FROM alpine:3.19
COPY --from=builder /app /usr/bin/app
CMD ["app"]
