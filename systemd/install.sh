#!/bin/sh
# Install or remove procpoold as a systemd service. Run as root from a checkout:
#
#   sh systemd/install.sh install     (what `make install` runs)
#   sh systemd/install.sh uninstall   (what `make uninstall` runs)
#
# install:   a virtual environment at /opt/procpoold/venv made with Debian's
#            /usr/bin/python3, the project installed into it from a wheel, the
#            system units in /etc/systemd/system, the user units in
#            /etc/systemd/user, the procpool group (systemd-sysusers),
#            and /usr/local/bin/procctl. Nothing is enabled or started.
# uninstall: stops and disables the units and removes all of the above, but
#            keeps the state in /var/lib/procpoold unless PURGE=1.
#
# Environment:
#   WHEELHOUSE=DIR   install offline from the wheels in DIR (the project and all
#                    its dependencies, e.g. made by `pip wheel . -w DIR`);
#                    without it the project's wheel is built from this checkout
#                    and its dependencies come from the package index.
#   PURGE=1          uninstall also removes /var/lib/procpoold.
#   INSTALL_PYTHON   the interpreter for the venv [/usr/bin/python3]. It must live
#                    outside /root (hidden from the service) and be readable by
#                    every user (their call tasks run it as themselves).
#
# Both actions are idempotent: running one twice is the same as running it once.

set -eu
# Every user runs procctl and (in their call tasks' workers) this venv's Python: whatever root's
# own umask is, what is installed here must be readable by all.
umask 022

PREFIX=/opt/procpoold
VENV=$PREFIX/venv
UNIT_DIR=/etc/systemd/system
USER_UNIT_DIR=/etc/systemd/user
SYSUSERS_DIR=/etc/sysusers.d
BIN_LINK=/usr/local/bin/procctl
STATE_DIR=/var/lib/procpoold
PYTHON=${INSTALL_PYTHON:-/usr/bin/python3}
UNITS="procpoold.socket procpoold.service"

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(dirname "$HERE")

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

# True when systemd is the running service manager (not in a chroot or a build container).
have_systemd() { [ -d /run/systemd/system ]; }

need_root() {
    [ "$(id -u)" = 0 ] || die "run this as root (sudo make $1)"
}

pip_install() {
    # pip of the interpreter itself, aimed at the venv (fast, needs pip >= 22.3);
    # otherwise the venv's own pip, bootstrapped by ensurepip.
    if "$PYTHON" -m pip --version >/dev/null 2>&1; then
        "$PYTHON" -m pip --python "$VENV/bin/python" install --quiet --disable-pip-version-check "$@"
    else
        [ -x "$VENV/bin/pip" ] || "$VENV/bin/python" -m ensurepip --upgrade >/dev/null
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@"
    fi
}

do_install() {
    need_root install
    [ -x "$PYTHON" ] || die "$PYTHON not found (apt-get install python3-venv)"

    say "venv: $VENV"
    mkdir -p "$PREFIX"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv --without-pip "$VENV"
    fi

    if [ -n "${WHEELHOUSE:-}" ]; then
        [ -d "$WHEELHOUSE" ] || die "WHEELHOUSE=$WHEELHOUSE is not a folder"
        say "installing from the wheelhouse $WHEELHOUSE (offline)"
        pip_install --no-index --find-links "$WHEELHOUSE" procpool
        # Same version number, new code: replace the project itself, never its dependencies.
        pip_install --no-index --find-links "$WHEELHOUSE" --force-reinstall --no-deps procpool
    else
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        say "building the procpool wheel from $SRC"
        "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps "$SRC" -w "$tmp"
        pip_install --find-links "$tmp" procpool
        pip_install --no-index --find-links "$tmp" --force-reinstall --no-deps procpool
    fi
    mkdir -p "$PREFIX/docs"
    install -m 0644 "$SRC/docs/systemd.md" "$PREFIX/docs/systemd.md"

    say "units: $UNIT_DIR, $USER_UNIT_DIR; users: $SYSUSERS_DIR/procpool.conf"
    install -d -m 0755 "$UNIT_DIR" "$USER_UNIT_DIR" "$SYSUSERS_DIR"
    for unit in $UNITS; do
        install -m 0644 "$HERE/$unit" "$UNIT_DIR/$unit"
        install -m 0644 "$HERE/user/$unit" "$USER_UNIT_DIR/$unit"
    done
    install -m 0644 "$HERE/sysusers.d/procpool.conf" "$SYSUSERS_DIR/procpool.conf"
    systemd-sysusers "$SYSUSERS_DIR/procpool.conf"

    install -d -m 0755 "$(dirname "$BIN_LINK")"
    ln -sfn "$VENV/bin/procctl" "$BIN_LINK"

    if have_systemd; then
        systemctl daemon-reload
        # An upgrade: a running daemon picks up the new code (jobs are kept by its state store).
        systemctl try-restart procpoold.service
    else
        say "systemd is not running here: run 'systemctl daemon-reload' once it is"
    fi
    say "installed. Start it with: systemctl start procpoold (or enable --now procpoold.socket)"
}

do_uninstall() {
    need_root uninstall
    if have_systemd; then
        # The socket first, or it would start the service again; errors mean "not loaded".
        systemctl disable --now procpoold.socket procpoold.service >/dev/null 2>&1 || true
        systemctl stop procpoold.service procpoold.socket >/dev/null 2>&1 || true
    fi
    for unit in $UNITS; do
        rm -f "$UNIT_DIR/$unit" "$USER_UNIT_DIR/$unit"
    done
    rm -f "$SYSUSERS_DIR/procpool.conf"
    if [ -L "$BIN_LINK" ] && [ "$(readlink "$BIN_LINK")" = "$VENV/bin/procctl" ]; then
        rm -f "$BIN_LINK"
    fi
    rm -rf "$PREFIX"
    if [ "${PURGE:-0}" = 1 ]; then
        say "removing the state in $STATE_DIR"
        rm -rf "$STATE_DIR"
    elif [ -d "$STATE_DIR" ]; then
        say "kept the state in $STATE_DIR (PURGE=1 removes it)"
    fi
    if have_systemd; then
        systemctl daemon-reload
        systemctl reset-failed procpoold.service procpoold.socket >/dev/null 2>&1 || true
    fi
    say "uninstalled (the procpool group is kept, as is the custom for system groups)"
}

case "${1:-}" in
    install) do_install ;;
    uninstall) do_uninstall ;;
    *) die "usage: $0 install|uninstall" ;;
esac
