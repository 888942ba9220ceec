# One Dockerfile, several targets (docker buildx bake style): lint and unit tests run on the
# build machine, the "integration" stage tests on the target CPU itself.
FROM --platform=$BUILDPLATFORM golang:1.22 AS base
WORKDIR /src
COPY . .
RUN go mod download

FROM base AS lint
RUN go vet ./...

FROM base AS test
RUN go test ./...

FROM golang:1.22 AS integration
WORKDIR /src
COPY . .
RUN go test -tags integration ./...

FROM base AS build
ARG TARGETOS TARGETARCH
RUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/app .

FROM scratch AS release
COPY --from=build /out/app /app
ENTRYPOINT ["/app"]
