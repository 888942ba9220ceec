FROM alpine:3.19 AS build
RUN apk add --no-cache build-base
COPY . /src
RUN make -C /src
FROM alpine:3.19
COPY --from=build /src/app /usr/bin/app
CMD ["app"]
