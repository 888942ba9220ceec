# goreleaser's dockers_v2: the binaries were built outside; each platform copies its own
FROM scratch
ARG TARGETPLATFORM
COPY $TARGETPLATFORM/app /usr/bin/app
ENTRYPOINT ["/usr/bin/app"]
