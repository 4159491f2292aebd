# shellcheck shell=bash
# tools/deps.sh: the Debian 12 packages standin's build, tests and sandbox
# need, and a function that installs the missing ones.  Sourced by ./test.sh
# and ./sandbox.sh (bash).

STANDIN_PACKAGES=(
	build-essential autoconf automake libtool pkg-config
	libpq-dev postgresql-server-dev-15 libldap-dev libetpan-dev libev-dev check libinih-dev libjansson-dev
	libssl-dev libsystemd-dev libcurl4-gnutls-dev etcd-server
	postgresql-15 postgresql-client-15 slapd ldap-utils dovecot-core dovecot-imapd
	python3 python3-pytest clang libclang-rt-14-dev socat man-db iproute2 util-linux procps
	systemd
)

# standin_install_missing LOGFILE: apt-get install the packages not yet
# installed.  The packages' own services (postgresql, slapd, dovecot) are kept
# from starting: standin's tests and sandbox start their own servers on free
# loopback ports.  Returns non-zero (with the end of the apt log on stderr)
# when something is missing and cannot be installed.
standin_install_missing() {
	local log=$1 missing=() p rc own_policy=0
	for p in "${STANDIN_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "missing Debian packages (run as root to install them): ${missing[*]}" >&2
		return 1
	fi
	echo "installing ${missing[*]}"
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		own_policy=1
	fi
	{
		DEBIAN_FRONTEND=noninteractive apt-get update -q &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
				"${missing[@]}"
	} >"$log" 2>&1
	rc=$?
	[ $own_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d
	if [ $rc -ne 0 ]; then
		tail -20 "$log" >&2
		echo "apt-get failed (full log: $log)" >&2
		return 1
	fi
	rm -f "$log"
}
