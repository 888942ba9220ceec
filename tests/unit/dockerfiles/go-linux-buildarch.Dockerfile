# coredns-style: the build machine spelled as linux/$BUILDARCH
ARG GOLANG=golang:1.22
FROM --platform=linux/$BUILDARCH ${GOLANG} AS build
ARG TARGETARCH
COPY . /src
RUN cd /src && GOARCH=$TARGETARCH make
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/coredns /coredns
ENTRYPOINT ["/coredns"]
