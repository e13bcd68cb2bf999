#!/usr/bin/env bash
# Runs the proxy's side-by-side benchmarks against PgBouncer (proxy/poolbench_test.go) with the
# open file limit raised for 1000 clients, and keeps their output in bench-proxy-pool.txt.
#
#   scripts/proxy-bench.sh                 # all of them
#   scripts/proxy-bench.sh ProxySessionPool # one; settings: see proxy/poolbench_test.go
#
# They skip when pgbench or pgbouncer is missing. Each pgbench run lasts PROXYBENCH_SECONDS
# (default 10), PROXYBENCH_ROUNDS rounds (default 3): about 25 minutes for all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
want=${1:-'ProxyTransactionPool|ProxyIdleClients|ProxyConnectionChurn|ProxySessionPool'}

# 1000 clients need a descriptor each at pgbench, at the pooler (and at the pooler a second one
# while it connects them); PgBouncer inherits this limit too.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 8192 ]; then
	ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
echo "open file limit $(ulimit -n); load average $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs"
$GO test -run '^$' -bench "^Benchmark($want)\$" -benchtime 1x -timeout 120m ./proxy/ | tee bench-proxy-pool.txt
