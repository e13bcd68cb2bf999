#!/usr/bin/env bash
# Puts PostgreSQL 17 from Debian 13's packages into .toolchain/postgresql-17 on a Debian 12
# machine, whose own archive stops at PostgreSQL 15, and prints its bin directory. Nothing is
# installed system-wide: the packages are downloaded with a private apt state, unpacked, and
# their programs pointed (patchelf) at Debian 13's C library and libraries unpacked beside them,
# which Debian 12's cannot replace. `make test-pg17` runs the tests against it.
#
# The archive is the one this machine's apt sources use for Debian itself. A machine that has
# PostgreSQL 17 installed (Debian 13) needs none of this: the script prints its bin directory.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x /usr/lib/postgresql/17/bin/pg_ctl ]; then
	echo /usr/lib/postgresql/17/bin
	exit 0
fi
dest=$PWD/.toolchain/postgresql-17
bin=$dest/root/usr/lib/postgresql/17/bin
if [ -x "$bin/pg_ctl" ] && "$bin/postgres" --version >/dev/null 2>&1; then
	echo "$bin"
	exit 0
fi

if ! command -v patchelf >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		apt-get install -y -qq patchelf >&2
	else
		echo "postgres17: patchelf is missing (Debian: apt-get install patchelf)" >&2
		exit 1
	fi
fi

# The Debian archive of this machine's sources (deb822 or one-line format).
mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
	mirror=$(awk '$1 == "deb" && $2 !~ /security/ && $3 !~ /-/ { print $2; exit }' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
	echo "postgres17: no Debian archive found in /etc/apt/sources.list(.d)" >&2
	exit 1
fi

rm -rf "$dest"
mkdir -p "$dest/apt/lists/partial" "$dest/apt/cache/archives/partial" "$dest/debs" "$dest/root" "$dest/libs"
echo "deb $mirror trixie main" >"$dest/apt/sources.list"
apt=(-o "Dir::Etc::sourcelist=$dest/apt/sources.list" -o Dir::Etc::sourceparts=/nonexistent
	-o "Dir::State::Lists=$dest/apt/lists" -o "Dir::Cache=$dest/apt/cache" -o APT::Sandbox::User=root)
apt-get "${apt[@]}" -qq update >&2
# PostgreSQL 17, its client tools (pg_receivewal) and the libraries whose Debian 12 versions are
# too old for them or absent.
(cd "$dest/debs" && apt-get "${apt[@]}" -qq download postgresql-17 postgresql-client-17 libpq5 libc6 libicu76 \
	libssl3t64 libxml2 libzstd1 liblz4-1 libldap2 libstdc++6 libgcc-s1 libselinux1 libsystemd0 libpam0g \
	libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libuuid1 zlib1g libsasl2-2 libcap2 \
	libpcre2-8-0 libkeyutils1 libxslt1.1 liblzma5 libgcrypt20 libgpg-error0 >&2)
for deb in "$dest"/debs/*.deb; do
	dpkg-deb -x "$deb" "$dest/root"
done
for dir in "$dest/root/usr/lib/x86_64-linux-gnu" "$dest/root/lib/x86_64-linux-gnu"; do
	[ -d "$dir" ] && cp -a "$dir"/. "$dest/libs/"
done
libs=$dest/libs
for f in "$bin"/*; do
	patchelf --set-interpreter "$libs/ld-linux-x86-64.so.2" --force-rpath \
		--set-rpath "$libs:$dest/root/usr/lib/postgresql/17/lib" "$f" 2>/dev/null || true
done
for f in "$dest"/root/usr/lib/postgresql/17/lib/*.so; do
	patchelf --force-rpath --set-rpath "$libs" "$f" 2>/dev/null || true
done
# The test clusters run as the postgres user when root.
chmod -R a+rX "$dest"
"$bin/postgres" --version >&2
echo "$bin"
