ARG BASE=alpine:3.19
FROM ${BASE}
RUN apk add --no-cache curl
CMD ["curl", "--version"]
