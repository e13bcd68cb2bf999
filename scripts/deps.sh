#!/usr/bin/env bash
# Makes sure the tools the tests use are installed. On Debian as root it installs the missing
# packages with apt-get; elsewhere it names what to install and fails. Go itself comes from the
# Go module proxy (Debian's golang is older than go.mod asks) into .toolchain/, which the
# Makefile puts first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PWD/.toolchain/go/bin:$PATH:/usr/local/go/bin"

# The go line of go.mod, e.g. 1.26.0, and whether the go on PATH is at least that.
want_go=$(awk '$1 == "go" { print $2; exit }' go.mod)
go_ok() {
	local v
	v=$(go env GOVERSION 2>/dev/null) || return 1
	v=${v#go}
	[ "$(printf '%s\n%s\n' "$want_go" "$v" | sort -V | head -n1)" = "$want_go" ]
}

# fetch_go puts the newest Go of go.mod's minor series in .toolchain/go, from the toolchain
# module that GOTOOLCHAIN=auto would download too.
fetch_go() {
	local proxy os arch series version tmp
	# The first entry of GOPROXY (entries are separated by , or |).
	proxy=${GOPROXY:-https://proxy.golang.org}
	proxy=${proxy%%[,|]*}
	if [ "$proxy" = off ]; then
		echo "deps: GOPROXY=off forbids downloading Go; install Go $want_go or newer" >&2
		return 1
	fi
	[ "$proxy" = direct ] && proxy=https://proxy.golang.org
	os=$(uname -s | tr '[:upper:]' '[:lower:]')
	case $(uname -m) in
	x86_64) arch=amd64 ;;
	aarch64 | arm64) arch=arm64 ;;
	*) echo "deps: no Go toolchain for $(uname -m); install Go $want_go or newer" >&2; return 1 ;;
	esac
	series=$(echo "$want_go" | cut -d. -f1,2)
	version=$(curl -fsS "$proxy/golang.org/toolchain/@v/list" |
		sed -n "s/^v0\.0\.1-go\($series\(\.[0-9]*\)\?\)\.$os-$arch\$/\1/p" | sort -V | tail -n1)
	if [ -z "$version" ]; then
		echo "deps: $proxy has no Go $series toolchain for $os-$arch; install Go $want_go or newer" >&2
		return 1
	fi
	echo "deps: Go $want_go or newer is missing; fetching go$version from $proxy into .toolchain/" >&2
	tmp=$(mktemp -d)
	curl -fsS -o "$tmp/go.zip" "$proxy/golang.org/toolchain/@v/v0.0.1-go$version.$os-$arch.zip"
	unzip -q "$tmp/go.zip" -d "$tmp"
	rm -rf .toolchain/go
	mkdir -p .toolchain
	mv "$tmp/golang.org/toolchain@v0.0.1-go$version.$os-$arch" .toolchain/go
	rm -rf "$tmp"
	# Module zips keep no file modes.
	chmod +x .toolchain/go/bin/* .toolchain/go/pkg/tool/*/*
	PATH="$PWD/.toolchain/go/bin:$PATH" go_ok
}

# command -> Debian package
declare -A need=(
	[pg_ctl]=postgresql
	[promtool]=prometheus
	[chromium]=chromium
	[amtool]=prometheus-alertmanager
	[prometheus-alertmanager]=prometheus-alertmanager
	[psql]=postgresql-client
	[pgbench]=postgresql-client
	[prometheus-postgres-exporter]=prometheus-postgres-exporter
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
go_ok || {
	have curl || missing+=(curl ca-certificates)
	have unzip || missing+=(unzip)
}
for cmd in "${!need[@]}"; do
	have "$cmd" || missing+=("${need[$cmd]}")
done
if [ ${#missing[@]} -eq 0 ]; then
	go_ok || fetch_go
	exit
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "deps: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# Debian starts a cluster and services on install; the tests run their own.
	for svc in postgresql prometheus prometheus-node-exporter; do
		if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
	done
	go_ok || fetch_go
	exit
fi
echo "deps: missing tools; install these packages (Debian names): ${missing[*]}" >&2
exit 1
