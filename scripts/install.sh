#!/bin/sh
# install.sh: install vbatch on a bare-metal host as systemd services.
#
# Run as root from a checkout (or release tree) holding bin/vbatch and
# bin/vbctl: it creates the vbatch system user, installs the binaries, the
# systemd units and example configuration, and creates the state and log
# directories. It is idempotent: binaries and units are replaced, files
# already under /etc/vbatch are never overwritten. See docs/deployment.md.
#
#   scripts/install.sh --role coordinator|agent|all [--prefix DIR]
#                      [--bin-dir DIR] [--dest-root DIR] [--no-systemctl]
set -eu

usage() {
	cat <<'EOF'
Usage: install.sh --role coordinator|agent|all [options]

  --role ROLE       what this host runs: coordinator, agent, or all (both)
  --prefix DIR      install binaries to DIR/bin (default /usr/local); the
                    units' ExecStart follows it
  --bin-dir DIR     where vbatch and vbctl are (default: bin/ next to scripts/)
  --dest-root DIR   stage the files under DIR, as a package build does
                    (DESTDIR): no user is created, nothing is chowned and
                    systemctl is not run; for packaging and tests
  --no-systemctl    do not run systemctl daemon-reload
  -h, --help        show this help
EOF
}

die() {
	echo "install.sh: $*" >&2
	exit 1
}

role=""
prefix=/usr/local
bin_dir=""
dest_root=""
run_systemctl=yes
while [ $# -gt 0 ]; do
	case "$1" in
	--role | --prefix | --bin-dir | --dest-root)
		[ $# -ge 2 ] || die "$1 needs a value"
		case "$1" in
		--role) role=$2 ;;
		--prefix) prefix=$2 ;;
		--bin-dir) bin_dir=$2 ;;
		--dest-root) dest_root=$2 ;;
		esac
		shift 2
		;;
	--role=*) role=${1#*=}; shift ;;
	--prefix=*) prefix=${1#*=}; shift ;;
	--bin-dir=*) bin_dir=${1#*=}; shift ;;
	--dest-root=*) dest_root=${1#*=}; shift ;;
	--no-systemctl) run_systemctl=no; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument: $1" ;;
	esac
done

case "$role" in
coordinator) roles=coordinator ;;
agent) roles=agent ;;
all) roles="coordinator agent" ;;
"") usage >&2; die "--role is required" ;;
*) die "--role must be coordinator, agent or all, not '$role'" ;;
esac
case "$prefix" in
*[!A-Za-z0-9/._+-]*) die "--prefix may hold only letters, digits and / . _ + -, not '$prefix'" ;;
/*) ;;
*) die "--prefix must be an absolute path, not '$prefix'" ;;
esac
prefix=${prefix%/}

src=$(cd "$(dirname "$0")/.." && pwd)
[ -n "$bin_dir" ] || bin_dir=$src/bin
for f in "$bin_dir/vbatch" "$bin_dir/vbctl"; do
	[ -x "$f" ] || die "$f not found or not executable (run 'make build' first, or give --bin-dir)"
done

# staged: files go under --dest-root and get no owners; a package's
# post-install (or this script run on the host) sets those.
staged=no
if [ -n "$dest_root" ]; then
	staged=yes
	run_systemctl=no
	mkdir -p "$dest_root"
	dest_root=$(cd "$dest_root" && pwd)
elif [ "$(id -u)" -ne 0 ]; then
	die "run as root (or stage with --dest-root DIR)"
fi
root=$dest_root

# ensure_dir PATH MODE OWNER: create vbatch's own directory PATH and set its
# mode and, on a real install, its owner (user:group). Directories shared
# with the system (/usr/local/bin, /etc/systemd/system) are only created if
# missing, never changed.
ensure_dir() {
	mkdir -p "$root$1"
	chmod "$2" "$root$1"
	if [ "$staged" = no ]; then
		chown "$3" "$root$1"
	fi
}

# replace SRC DST MODE: write SRC to DST through a temporary file and a
# rename, so a running binary is never overwritten in place.
replace() {
	if [ -f "$root$2" ] && cmp -s "$1" "$root$2"; then
		chmod "$3" "$root$2"
		echo "unchanged  $2"
		return
	fi
	tmp="$root$2.install.$$"
	cp "$1" "$tmp"
	chmod "$3" "$tmp"
	mv -f "$tmp" "$root$2"
	echo "installed  $2"
}

# keep_or_copy SRC DST MODE OWNER: install SRC as DST only if DST does not
# exist; an operator's file is never replaced.
keep_or_copy() {
	if [ -e "$root$2" ] || [ -L "$root$2" ]; then
		echo "kept       $2 (exists)"
		return
	fi
	tmp="$root$2.install.$$"
	cp "$1" "$tmp"
	chmod "$3" "$tmp"
	if [ "$staged" = no ]; then
		chown "$4" "$tmp"
	fi
	mv "$tmp" "$root$2"
	echo "installed  $2"
}

# nologin_shell prints the host's no-login shell.
nologin_shell() {
	for s in /usr/sbin/nologin /sbin/nologin /usr/bin/nologin; do
		if [ -x "$s" ]; then
			echo "$s"
			return
		fi
	done
	echo /bin/false
}

if [ "$staged" = no ]; then
	if ! getent group vbatch >/dev/null; then
		groupadd --system vbatch
		echo "created    group vbatch"
	fi
	if ! getent passwd vbatch >/dev/null; then
		useradd --system --gid vbatch --home-dir /var/lib/vbatch --no-create-home \
			--shell "$(nologin_shell)" --comment "vbatch service" vbatch
		echo "created    user vbatch"
	fi
fi

mkdir -p "$root$prefix/bin"
replace "$bin_dir/vbatch" "$prefix/bin/vbatch" 0755
replace "$bin_dir/vbctl" "$prefix/bin/vbctl" 0755

# Reference copies of the examples, replaced on every install so that an
# upgrade shows new settings next to the operator's files.
mkdir -p "$root$prefix/share"
ensure_dir "$prefix/share/vbatch" 0755 root:root
ensure_dir "$prefix/share/vbatch/examples" 0755 root:root
for f in "$src"/deploy/config/*.json "$src"/deploy/config/vbatch.env.example; do
	replace "$f" "$prefix/share/vbatch/examples/$(basename "$f")" 0644
done

mkdir -p "$root/etc/systemd/system"
for r in $roles; do
	unit=vbatch-$r.service
	tmpunit=$(mktemp)
	sed "s#^ExecStart=/usr/local/bin/vbatch #ExecStart=$prefix/bin/vbatch #" \
		"$src/deploy/systemd/$unit" >"$tmpunit"
	replace "$tmpunit" "/etc/systemd/system/$unit" 0644
	rm -f "$tmpunit"
done

# /etc/vbatch is readable by everyone (systemd's ConfigurationDirectory=
# keeps it root-owned); what is secret is readable by group vbatch only.
ensure_dir /etc/vbatch 0755 root:root
ensure_dir /etc/vbatch/tls 0750 root:vbatch
keep_or_copy "$src/deploy/config/vbatch.env.example" /etc/vbatch/vbatch.env 0600 root:root
for r in $roles; do
	case "$r" in
	coordinator) example=coordinator-1.json ;;
	agent) example=agent.json ;;
	esac
	keep_or_copy "$src/deploy/config/$example" "/etc/vbatch/$r.json" 0640 root:vbatch
done

ensure_dir /var/lib/vbatch 0750 vbatch:vbatch
ensure_dir /var/log/vbatch 0750 vbatch:vbatch
case " $roles " in
*" agent "*) ensure_dir /var/cache/vbatch 0750 vbatch:vbatch ;;
esac

if [ "$run_systemctl" = yes ]; then
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload
		echo "ran        systemctl daemon-reload"
	else
		echo "note: systemd is not running here; run 'systemctl daemon-reload' on the host" >&2
	fi
fi

echo
echo "Next (docs/deployment.md):"
for r in $roles; do
	case "$r" in
	coordinator)
		echo "  edit /etc/vbatch/coordinator.json: node-id, this host's addresses, join"
		echo "  set VBATCH_ROOT_KEY in /etc/vbatch/vbatch.env"
		;;
	agent) echo "  edit /etc/vbatch/agent.json: join, model, vllm-bin, vllm-args" ;;
	esac
done
echo "  put ca.pem, this host's certificate and key in /etc/vbatch/tls and the gossip key in"
echo "  /etc/vbatch/gossip.key (root:vbatch, mode 0640)"
for r in $roles; do
	echo "  systemctl enable --now vbatch-$r"
done
