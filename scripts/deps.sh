#!/usr/bin/env bash
# Makes sure the tools the tests use are installed. On Debian as root it installs the missing
# packages with apt-get; elsewhere it names what to install and fails.
set -euo pipefail

# command -> Debian package
declare -A need=(
	[go]=golang
	[pg_ctl]=postgresql
	[promtool]=prometheus
	[chromium]=chromium
	[amtool]=prometheus-alertmanager
	[psql]=postgresql-client
	[pgbench]=postgresql-client
)
if [ "${PGSIDECAR_DEPS_EXTRA:-}" != "" ]; then
	for pair in $PGSIDECAR_DEPS_EXTRA; do need[${pair%%=*}]=${pair#*=}; done
fi

have() {
	command -v "$1" >/dev/null 2>&1 && return 0
	# PostgreSQL's server tools live outside PATH on Debian.
	[ "$1" = pg_ctl ] && compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null && return 0
	return 1
}

missing=()
for cmd in "${!need[@]}"; do
	have "$cmd" || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "deps: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# Debian starts a cluster and services on install; the tests run their own.
	for svc in postgresql prometheus prometheus-node-exporter; do
		if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
	done
	exit 0
fi
echo "deps: missing tools; install these packages (Debian names): ${missing[*]}" >&2
exit 1
