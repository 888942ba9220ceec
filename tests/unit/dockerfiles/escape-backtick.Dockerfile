# escape=`
FROM --platform=$BUILDPLATFORM alpine:3.19 AS build
RUN apk add --no-cache zig && `
    zig version
ARG ZIG_TARGET
COPY main.c /main.c
RUN zig cc -target $ZIG_TARGET -static `
      -o /app /main.c
FROM scratch
COPY --from=build /app /app
ENTRYPOINT ["/app"]
