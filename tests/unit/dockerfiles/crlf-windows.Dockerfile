# saved on Windows: CRLF line ends
FROM --platform=$BUILDPLATFORM golang:1.22 AS build
ARG TARGETARCH
COPY . /src
RUN cd /src && \
    GOARCH=$TARGETARCH go build -o /app
FROM alpine:3.19
RUN apk add --no-cache tini
COPY --from=build /app /app
ENTRYPOINT ["/sbin/tini", "--", "/app"]
