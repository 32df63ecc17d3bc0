#!/bin/sh
# Install or remove procpoold as a systemd service. Run as root from a checkout:
#
#   sh systemd/install.sh install     (what `make install` runs)
#   sh systemd/install.sh uninstall   (what `make uninstall` runs)
#   DASK=1 sh systemd/install.sh install   (`make install DASK=1`: with the Dask engine)
#
# install:   a virtual environment at /opt/procpoold/venv made with Debian's
#            /usr/bin/python3, the project installed into it from a wheel, the
#            system units in /etc/systemd/system, the user units in
#            /etc/systemd/user, the procpool group (systemd-sysusers),
#            /usr/local/bin/procctl, and the man pages procctl(1) and
#            procpoold(8) in /usr/local/share/man. Nothing is enabled or started.
#            With DASK=1 also the dask extra (procpool[dask]) in the venv, the
#            drop-in procpoold.service.d/dask.conf (network for the Dask client,
#            the config file below) and, unless it exists, the config file
#            /etc/procpoold/procpoold.toml (all commented out).
# uninstall: stops and disables the units and removes all of the above, but
#            keeps the state in /var/lib/procpoold and the config file in
#            /etc/procpoold unless PURGE=1.
#
# Environment:
#   WHEELHOUSE=DIR   install offline from the wheels in DIR (the project and all
#                    its dependencies, e.g. made by `pip wheel . -w DIR`);
#                    without it the project's wheel is built from this checkout
#                    and its dependencies come from the package index.
#   DASK=1           install with the Dask engine (see install above). An
#                    upgrade of an installation that has the drop-in keeps it
#                    (and installs the extra) without DASK=1; DASK=0 removes it.
#   PURGE=1          uninstall also removes /var/lib/procpoold and /etc/procpoold.
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
MAN_DIR=/usr/local/share/man
MAN_PAGES="$MAN_DIR/man1/procctl.1 $MAN_DIR/man8/procpoold.8"
STATE_DIR=/var/lib/procpoold
PYTHON=${INSTALL_PYTHON:-/usr/bin/python3}
UNITS="procpoold.socket procpoold.service"
DROP_IN_DIR=$UNIT_DIR/procpoold.service.d
DASK_DROP_IN=$DROP_IN_DIR/dask.conf
CONFIG_DIR=/etc/procpoold
CONFIG=$CONFIG_DIR/procpoold.toml

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
    dask=${DASK:-}
    case "$dask" in
        1|0) ;;
        "") if [ -e "$DASK_DROP_IN" ]; then dask=1; say "the Dask drop-in is installed: keeping it (DASK=0 removes it)"; else dask=0; fi ;;
        *) die "DASK must be 1 or 0, got '$dask'" ;;
    esac
    project=procpool
    if [ "$dask" = 1 ]; then project='procpool[dask]'; fi

    say "venv: $VENV"
    mkdir -p "$PREFIX"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv --without-pip "$VENV"
    fi

    if [ -n "${WHEELHOUSE:-}" ]; then
        [ -d "$WHEELHOUSE" ] || die "WHEELHOUSE=$WHEELHOUSE is not a folder"
        say "installing from the wheelhouse $WHEELHOUSE (offline)"
        pip_install --no-index --find-links "$WHEELHOUSE" "$project"
        # Same version number, new code: replace the project itself, never its dependencies.
        pip_install --no-index --find-links "$WHEELHOUSE" --force-reinstall --no-deps procpool
    else
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        say "building the procpool wheel from $SRC"
        "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps "$SRC" -w "$tmp"
        pip_install --find-links "$tmp" "$project"
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
    if [ "$dask" = 1 ]; then
        say "the Dask engine: $DASK_DROP_IN; settings in $CONFIG"
        install -d -m 0755 "$DROP_IN_DIR" "$CONFIG_DIR"
        install -m 0644 "$HERE/dask.conf" "$DASK_DROP_IN"
        # The administrator's file: never overwritten.
        if [ ! -e "$CONFIG" ]; then install -m 0644 "$HERE/procpoold.toml" "$CONFIG"; fi
    else
        remove_dask_drop_in
    fi
    systemd-sysusers "$SYSUSERS_DIR/procpool.conf"

    install -d -m 0755 "$(dirname "$BIN_LINK")"
    ln -sfn "$VENV/bin/procctl" "$BIN_LINK"
    # Made from the commands' --help text by the installed code itself (procpool.cli.manpage).
    say "man pages: $MAN_PAGES"
    "$VENV/bin/python" -m procpool.cli.manpage "$MAN_DIR" >/dev/null
    chmod 0644 $MAN_PAGES

    if have_systemd; then
        systemctl daemon-reload
        # An upgrade: a running daemon picks up the new code (jobs are kept by its state store).
        systemctl try-restart procpoold.service
    else
        say "systemd is not running here: run 'systemctl daemon-reload' once it is"
    fi
    say "installed. Start it with: systemctl start procpoold (or enable --now procpoold.socket)"
}

# The drop-in and its folder, if nothing else is left in it (the administrator's override.conf is).
remove_dask_drop_in() {
    if [ -e "$DASK_DROP_IN" ]; then
        say "removing the Dask drop-in $DASK_DROP_IN"
        rm -f "$DASK_DROP_IN"
    fi
    rmdir "$DROP_IN_DIR" 2>/dev/null || true
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
    remove_dask_drop_in
    if [ -L "$BIN_LINK" ] && [ "$(readlink "$BIN_LINK")" = "$VENV/bin/procctl" ]; then
        rm -f "$BIN_LINK"
    fi
    rm -f $MAN_PAGES
    rm -rf "$PREFIX"
    if [ "${PURGE:-0}" = 1 ]; then
        say "removing the state in $STATE_DIR and the config in $CONFIG_DIR"
        rm -rf "$STATE_DIR" "$CONFIG_DIR"
    else
        for kept in "$STATE_DIR" "$CONFIG_DIR"; do
            if [ -d "$kept" ]; then say "kept $kept (PURGE=1 removes it)"; fi
        done
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
