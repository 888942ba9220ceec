# One fetch stage per architecture, all on the build machine; FROM picks the target's own
# (FROM expands the automatic platform ARGs; --from would not)
FROM --platform=$BUILDPLATFORM alpine:3.19 AS fetch
RUN apk add --no-cache curl
FROM fetch AS fetch-amd64
RUN curl -fsSLo /tool https://example.invalid/tool-x86_64
FROM fetch AS fetch-arm64
RUN curl -fsSLo /tool https://example.invalid/tool-aarch64
FROM fetch AS fetch-s390x
RUN curl -fsSLo /tool https://example.invalid/tool-s390x
FROM fetch-${TARGETARCH} AS fetched
FROM scratch
COPY --from=fetched /tool /tool
ENTRYPOINT ["/tool"]
