FROM	--platform="$BUILDPLATFORM"	golang:1.22	AS	build
WORKDIR /src
COPY . .
ARG TARGETARCH
RUN  GOARCH=$TARGETARCH go build -o /app .
FROM  busybox:1.36
COPY  --from=build /app /bin/app
CMD ["app"]
