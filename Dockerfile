# syntax=docker/dockerfile:1
# Build: docker build -t pgsidecar .
# Run:   docker run -e DATABASE_URL=postgres://app:secret@db:5432/pos -p 9188:9188 pgsidecar

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG REVISION=unknown
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=${VERSION} -X github.com/prometheus/common/version.Revision=${REVISION}" \
      -o /out/pgsidecar . \
 && mkdir -p /out/etc/pgsidecar && cp queries.yaml /out/etc/pgsidecar/

# A static binary needs nothing but CA certificates (for sslmode=verify-full) and a user.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pgsidecar /usr/local/bin/pgsidecar
# Found there by default (--queries.file).
COPY --from=build /out/etc/pgsidecar /etc/pgsidecar
USER 65532:65532
# 9188: metrics, API and status page. 6432: the optional PostgreSQL proxy.
EXPOSE 9188 6432
ENTRYPOINT ["/usr/local/bin/pgsidecar"]
