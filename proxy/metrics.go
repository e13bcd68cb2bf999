package proxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
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
	// previousPassword counts logins with the pool user's previous password in its rotation
	// window.
	previousPassword prometheus.Counter
	sessions         prometheus.Counter
	rejected         *prometheus.CounterVec
	cancels          prometheus.Counter
	serverLost       prometheus.Counter
	waitTimeouts     prometheus.Counter
	idleTxEnded      prometheus.Counter

	authenticating prometheus.Gauge
	waiting        prometheus.Gauge
	active         prometheus.Gauge
	idle           prometheus.Gauge

	serverConns  *prometheus.GaugeVec
	serverActive prometheus.Gauge
	serverIdle   prometheus.Gauge
	sessionTx    prometheus.Histogram
	stmtHits     prometheus.Counter
	stmtMisses   prometheus.Counter
	stmtEvicted  prometheus.Counter
	pinned       *prometheus.GaugeVec
	pinnedTotal  *prometheus.CounterVec
}

// pinReasons are the reasons a transaction-mode session is pinned to its server connection.
var pinReasons = sessionsql.Reasons

func newMetrics(poolName string) *metrics {
	labels := prometheus.Labels{"pool": poolName}
	x := &metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name:        "pgsidecar_proxy_client_connections",
			Help:        "Client connections to the proxy by state: authenticating, waiting for a server connection, active (holding one), idle (logged in, holding none; transaction mode only).",
			ConstLabels: labels,
		}, []string{"state"}),
		wait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "pgsidecar_proxy_client_wait_seconds",
			Help:        "Time an authenticated client waited for a server connection: once per session in session mode, at each checkout in transaction mode.",
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
		previousPassword: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_previous_password_logins_total",
			Help:        "Client logins with the previous password of DATABASE_URL's user, accepted for --proxy.password-rotation-window after a reload found that password changed. Once it stops rising, every client uses the new one.",
			ConstLabels: labels,
		}),
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
		waitTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_wait_timeouts_total",
			Help:        "Requests of transaction-mode clients that waited --proxy.query-wait-timeout for a server connection without getting one; each got ERROR 53300 in-band and stayed connected.",
			ConstLabels: labels,
		}),
		idleTxEnded: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_idle_transaction_timeouts_total",
			Help:        "Transaction-mode clients disconnected for staying idle in a transaction longer than --proxy.idle-transaction-timeout; their transactions were rolled back.",
			ConstLabels: labels,
		}),
		serverConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name:        "pgsidecar_proxy_server_connections",
			Help:        "The proxy's server connections by state: active (serving a client, or being reset after one) or idle (kept by the proxy for the next client; transaction mode only, since in session mode a connection goes back to the pool when its client leaves unless another client is waiting).",
			ConstLabels: labels,
		}, []string{"state"}),
		sessionTx: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "pgsidecar_proxy_session_transactions",
			Help:        "Transactions (explicit, or single statements outside one) per transaction-mode client session, observed when the session ends.",
			ConstLabels: labels,
			Buckets:     []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000, 100000},
		}),
		stmtHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_prepared_statement_hits_total",
			Help:        "Parses, Binds and Describes of a client's named statement in transaction mode that found it prepared on the server connection.",
			ConstLabels: labels,
		}),
		stmtMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_prepared_statement_misses_total",
			Help:        "Parses, Binds and Describes of a client's named statement in transaction mode that prepared it on the server connection.",
			ConstLabels: labels,
		}),
		stmtEvicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_prepared_statement_evictions_total",
			Help:        "Prepared statements closed on a server connection to stay within --proxy.max-prepared-statements.",
			ConstLabels: labels,
		}),
		pinned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name:        "pgsidecar_proxy_pinned_sessions",
			Help:        "Transaction-mode client sessions pinned to their server connection now, by the first reason (role, set_config, advisory_lock, listen, temp_table, prepare, cursor_with_hold, load, session_function, do_block, unknown_statement, unlexable, requested).",
			ConstLabels: labels,
		}, []string{"reason"}),
		pinnedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "pgsidecar_proxy_pinned_sessions_total",
			Help:        "Transaction-mode client sessions that were pinned to their server connection, by the first reason.",
			ConstLabels: labels,
		}, []string{"reason"}),
	}
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "pgsidecar_proxy_bytes_total",
		Help:        "Protocol bytes relayed, by direction (in: from clients, out: to clients).",
		ConstLabels: labels,
	}, []string{"direction"})
	x.bytesVec = bytes
	x.children()
	return x
}

// children takes the series of fixed label values that the proxy updates directly, and
// creates the others so that they are exported from the start.
func (x *metrics) children() {
	x.bytesIn = x.bytesVec.WithLabelValues("in")
	x.bytesOut = x.bytesVec.WithLabelValues("out")
	x.authenticating = x.clients.WithLabelValues("authenticating")
	x.waiting = x.clients.WithLabelValues("waiting")
	x.active = x.clients.WithLabelValues("active")
	x.idle = x.clients.WithLabelValues("idle")
	x.serverActive = x.serverConns.WithLabelValues("active")
	x.serverIdle = x.serverConns.WithLabelValues("idle")
	for _, r := range pinReasons {
		x.pinned.WithLabelValues(r)
		x.pinnedTotal.WithLabelValues(r)
	}
	for _, o := range []string{"commit", "rollback", "error", "abandoned"} {
		x.transactions.WithLabelValues(o)
	}
}

func (x *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{x.clients, x.wait, x.transactions, x.bytesVec, x.authFailures, x.previousPassword, x.sessions,
		x.rejected, x.cancels, x.serverLost, x.waitTimeouts, x.idleTxEnded, x.serverConns, x.sessionTx, x.stmtHits, x.stmtMisses, x.stmtEvicted,
		x.pinned, x.pinnedTotal}
}
