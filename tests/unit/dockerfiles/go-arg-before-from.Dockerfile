ARG GO_VERSION=1.22
ARG ALPINE_VERSION=3.19
ARG REGISTRY=docker.io/library

FROM --platform=$BUILDPLATFORM ${REGISTRY}/golang:${GO_VERSION}-alpine${ALPINE_VERSION} AS build
ARG TARGETARCH
COPY . /src
RUN cd /src && GOARCH=$TARGETARCH go build -o /app

FROM ${REGISTRY}/alpine:${ALPINE_VERSION}
COPY --from=build /app /usr/local/bin/app
CMD ["app"]
