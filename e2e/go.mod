module github.com/pgsidecar/pgsidecar/e2e

go 1.26.7

require github.com/pgsidecar/pgsidecar v0.0.0

require (
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.73.1 // indirect
	github.com/prometheus/prometheus v0.316.0 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

replace github.com/pgsidecar/pgsidecar => ../
