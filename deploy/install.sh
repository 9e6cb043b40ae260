#!/bin/sh
# Install (or remove) Edgewatch as two systemd services. Idempotent: run it again to upgrade.
#
#   deploy/install.sh [--prefix DIR] [--root DIR] [--gpu] [--wheelhouse DIR] [--no-deps]
#   deploy/install.sh --uninstall [--prefix DIR] [--root DIR]
#
#   --prefix DIR      virtual environment of the services (default /opt/edgewatch)
#   --root DIR        install into a staging tree instead of / (image builds, tests);
#                     the tree is laid out exactly as on the target, commands point at --prefix
#   --gpu             onnxruntime with CUDA (the `gpu` extra) instead of the CPU build
#   --wheelhouse DIR  offline: install only from wheels in DIR (pip wheel -w DIR '.[cpu]')
#   --no-deps         install the edgewatch package alone (dependencies already provided)
#   --uninstall       remove the services, units and environment; keep /etc/edgewatch and the event log
#
# Environment: PYTHON (interpreter for the environment, >= 3.10; default python3).
set -eu

prefix=/opt/edgewatch
root=
extra=cpu
wheelhouse=
nodeps=
action=install

die() { echo "install.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift ;;
        --prefix=*) prefix=${1#*=} ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift ;;
        --root=*) root=${1#*=} ;;
        --gpu) extra=gpu ;;
        --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; wheelhouse=$2; shift ;;
        --wheelhouse=*) wheelhouse=${1#*=} ;;
        --no-deps) nodeps=1 ;;
        --uninstall) action=uninstall ;;
        -h|--help) sed -n '2,17s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

case "$prefix" in /*) ;; *) die "--prefix must be an absolute path, got $prefix" ;; esac
prefix=${prefix%/}
if [ -n "$root" ]; then
    mkdir -p "$root" || die "--root: cannot create $root"
    root=$(cd "$root" && pwd)
    [ "$root" = / ] && root=
fi
[ -z "$wheelhouse" ] || [ -d "$wheelhouse" ] || die "--wheelhouse: no such directory $wheelhouse"
[ -z "$wheelhouse" ] || wheelhouse=$(cd "$wheelhouse" && pwd)

src=$(cd "$(dirname "$0")/.." && pwd)
venv=$root$prefix
unitdir=$root/etc/systemd/system
sysusersdir=$root/usr/lib/sysusers.d
tmpfilesdir=$root/usr/lib/tmpfiles.d
confdir=$root/etc/edgewatch
units="edgewatch-agent.service edgewatch-sidecar.service"
template=edgewatch-agent@.service  # more agents on one host: edgewatch-agent@NAME reads /etc/edgewatch/NAME.toml

# systemctl only on the live system, and only when systemd is the running init
live_systemd() { [ -z "$root" ] && [ -d /run/systemd/system ]; }
say() { echo "==> $*"; }

if [ $action = uninstall ]; then
    if live_systemd; then
        instances=$(cd "$unitdir" 2>/dev/null && ls -d *.wants/edgewatch-agent@?*.service 2>/dev/null \
            | sed 's|.*/||' | sort -u | tr '\n' ' ' || true)
        say "stopping and disabling $units $instances"
        systemctl stop 'edgewatch-agent@*.service' 2>/dev/null || true
        for u in $units $instances; do
            systemctl disable --now "$u" || echo "install.sh: could not disable $u (see above)" >&2
        done
    fi
    for u in $units $template; do rm -f "$unitdir/$u"; done
    rm -f "$sysusersdir/edgewatch.conf" "$tmpfilesdir/edgewatch.conf"
    if [ -x "$venv/bin/python" ] && [ -f "$venv/.edgewatch" ]; then
        say "removing $prefix"
        rm -rf "$venv"
    fi
    live_systemd && systemctl daemon-reload
    say "removed. Kept: /etc/edgewatch (configuration), /var/lib/edgewatch (event log), user edgewatch."
    echo "    To delete them too: rm -rf /etc/edgewatch /var/lib/edgewatch && userdel edgewatch"
    exit 0
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
    || die "need Python >= 3.10 (set PYTHON=/path/to/python3)"
for tool in systemd-sysusers systemd-tmpfiles; do
    command -v $tool >/dev/null || die "$tool not found: this installer targets systemd hosts"
done

say "system user and directories"
install -d -m 0755 "$sysusersdir" "$tmpfilesdir" "$unitdir"
install -m 0644 "$src/deploy/sysusers.d/edgewatch.conf" "$sysusersdir/edgewatch.conf"
install -m 0644 "$src/deploy/tmpfiles.d/edgewatch.conf" "$tmpfilesdir/edgewatch.conf"
if [ -n "$root" ]; then
    install -d -m 0755 "$root/etc" "$root/var/lib"
    systemd-sysusers --root="$root" "$sysusersdir/edgewatch.conf"
    systemd-tmpfiles --root="$root" --create "$tmpfilesdir/edgewatch.conf"
else
    systemd-sysusers "$sysusersdir/edgewatch.conf"
    systemd-tmpfiles --create "$tmpfilesdir/edgewatch.conf"
fi

say "Python environment in $prefix (onnxruntime: $extra)"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
touch "$venv/.edgewatch"  # marks the directory as ours for --uninstall
set -- --quiet --disable-pip-version-check --upgrade
[ -z "$wheelhouse" ] || set -- "$@" --no-index --find-links "$wheelhouse"
if [ -n "$nodeps" ]; then
    set -- "$@" --no-deps
    # the package alone: build it here when no wheel of it is at hand
    [ -n "$wheelhouse" ] || set -- "$@" --no-build-isolation
fi
if [ -n "$wheelhouse" ]; then
    "$venv/bin/python" -m pip install "$@" "edgewatch[$extra]"
else
    "$venv/bin/python" -m pip install "$@" "$src[$extra]"
fi
if [ -n "$root" ]; then
    # staged: scripts must name the interpreter where it will live on the target
    for f in "$venv"/bin/*; do
        [ -f "$f" ] && [ ! -L "$f" ] && grep -qF "$venv" "$f" 2>/dev/null && sed -i "s|$venv|$prefix|g" "$f"
    done
fi

say "units in /etc/systemd/system"
# a unit from deploy/systemd, with the environment's path and any further sed expressions
put_unit() {
    from=$1 to=$2
    shift 2
    sed -e "s|/opt/edgewatch/bin/|$prefix/bin/|g" "$@" "$src/deploy/systemd/$from" > "$unitdir/$to.tmp"
    chmod 0644 "$unitdir/$to.tmp"
    mv -f "$unitdir/$to.tmp" "$unitdir/$to"
}
for u in $units; do put_unit "$u" "$u"; done
# the template is the agent's unit reading the instance's own configuration file
put_unit edgewatch-agent.service "$template" -e '/^Description=/s|$| %i|' \
    -e 's|--config /etc/edgewatch/agent.toml|--config /etc/edgewatch/%i.toml|' \
    -e 's|^#   systemctl edit edgewatch-agent$|#   systemctl edit edgewatch-agent@NAME (one agent) or edgewatch-agent@.service (every one)|'

if [ -e "$confdir/agent.toml" ]; then
    say "keeping existing /etc/edgewatch/agent.toml (example: $src/deploy/agent.toml)"
else
    say "example configuration /etc/edgewatch/agent.toml"
    install -m 0640 "$src/deploy/agent.toml" "$confdir/agent.toml"
    group=$(sed -n 's/^edgewatch:[^:]*:\([0-9]*\):.*/\1/p' "$root/etc/group")
    chown "0:${group:-0}" "$confdir/agent.toml"
fi

if live_systemd; then
    systemctl daemon-reload
fi

cat <<EOF

Edgewatch is installed${root:+ in the staging tree $root}. Next steps:
  1. edit /etc/edgewatch/agent.toml (broker, credentials), then check it:
       $prefix/bin/edge-agent check-config /etc/edgewatch/agent.toml
  2. start both services now and at boot:
       systemctl enable --now edgewatch-sidecar edgewatch-agent
  3. check the whole setup:
       sudo -u edgewatch $prefix/bin/edge-agent doctor --config /etc/edgewatch/agent.toml
       systemctl status edgewatch-agent edgewatch-sidecar
       journalctl -u edgewatch-agent -f
  4. let an operator read the event log: usermod -aG edgewatch NAME
       $prefix/bin/edge-agent events --config /etc/edgewatch/agent.toml --since 1h
EOF
