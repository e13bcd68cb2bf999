package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's own series. Query latency and errors of proxied traffic go to the pool
// manager's series (Manager.RecordQuery), so dashboards see library and proxied traffic alike.
type metrics struct {
	clients      *prometheus.GaugeVec
	wait         prometheus.Histogram
	transactions *prometheus.CounterVec
	bytesVec     *prometheus.CounterVec
	bytesIn      prometheus.Counter
	bytesOut     prometheus.Counter
	authFailures *prometheus.CounterVec
	sessions     prometheus.Counter
	rejected     *prometheus.CounterVec
	cancels      prometheus.Counter
	serverLost   prometheus.Counter

	authenticating prometheus.Gauge
	waiting        prometheus.Gauge
	active         prometheus.Gauge
}

func newMetrics(poolName string) *metrics {
	labels := prometheus.Labels{"pool": poolName}
	x := &metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name:        "pgsidecar_proxy_client_connections",
			Help:        "Client connections to the proxy by state (authenticating, waiting for a server connection, active).",
			ConstLabels: labels,
		}, []string{"state"}),
		wait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "pgsidecar_proxy_client_wait_seconds",
			Help:        "Time an authenticated client waited for a server connection from the pool.",
			ConstLabels: labels,
			Buckets:     []float64{0.00001, 0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10},
		}),
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_transactions_total",
			Help:        "Explicit transactions of proxied clients by outcome: commit, rollback, error (failed, or its server connection was lost), abandoned (the client left in the middle).",
			ConstLabels: labels,
		}, []string{"outcome"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_auth_failures_total",
			Help:        "Client authentications that failed, by method.",
			ConstLabels: labels,
		}, []string{"method"}),
		sessions: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_sessions_total",
			Help:        "Client sessions that got a server connection.",
			ConstLabels: labels,
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_client_errors_total",
			Help:        "Errors the proxy itself sent to clients (not relayed from the server), by SQLSTATE; each ends that client's connection.",
			ConstLabels: labels,
		}, []string{"sqlstate"}),
		cancels: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_cancel_requests_total",
			Help:        "Cancel requests forwarded to the server.",
			ConstLabels: labels,
		}),
		serverLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_server_connections_lost_total",
			Help:        "Server connections that failed during a client session; the client got FATAL 08006.",
			ConstLabels: labels,
		}),
	}
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "pgsidecar_proxy_bytes_total",
		Help:        "Protocol bytes relayed, by direction (in: from clients, out: to clients).",
		ConstLabels: labels,
	}, []string{"direction"})
	x.bytesIn = bytes.WithLabelValues("in")
	x.bytesOut = bytes.WithLabelValues("out")
	x.authenticating = x.clients.WithLabelValues("authenticating")
	x.waiting = x.clients.WithLabelValues("waiting")
	x.active = x.clients.WithLabelValues("active")
	for _, o := range []string{"commit", "rollback", "error", "abandoned"} {
		x.transactions.WithLabelValues(o)
	}
	x.bytesVec = bytes
	return x
}

func (x *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{x.clients, x.wait, x.transactions, x.bytesVec, x.authFailures, x.sessions,
		x.rejected, x.cancels, x.serverLost}
}
