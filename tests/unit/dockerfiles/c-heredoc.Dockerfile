# syntax=docker/dockerfile:1.7
FROM --platform=$BUILDPLATFORM alpine:3.19 AS build
RUN apk add --no-cache zig
COPY <<EOF /src/main.c
#include <stdio.h>
int main(void) { puts("hello"); return 0; }
EOF
ARG ZIG_TARGET
RUN <<EOT
set -e
# a heredoc body is script, not instructions:
FROM not-a-stage
zig cc -target "$ZIG_TARGET" -static -o /hello /src/main.c
EOT
FROM scratch
COPY --from=build /hello /hello
CMD ["/hello"]
