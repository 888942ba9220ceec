from --platform=$BUILDPLATFORM golang:1.22 as build
onbuild run echo "runs only in images built FROM this one"
arg TARGETARCH
copy . /src
run cd /src && GOARCH=$TARGETARCH go build -o /app
from scratch
copy --from=build /app /app
entrypoint ["/app"]
