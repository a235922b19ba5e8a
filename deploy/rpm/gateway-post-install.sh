# %post of the gateway .rpm (deploy/package); $1 is 1 on install, 2+ on upgrade.
# An admin token for the protected admin endpoints, once: root-only, the
# service reads it as a systemd credential (see gateway.service).
if [ ! -e /etc/gateway/admin-token ]; then
    (
        umask 077
        od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >/etc/gateway/admin-token.new
        echo >>/etc/gateway/admin-token.new
    )
    chmod 0600 /etc/gateway/admin-token.new
    mv /etc/gateway/admin-token.new /etc/gateway/admin-token
fi
# Where systemd runs: apply the sysctl drop-in, enable and start the service on
# install, restart it on upgrade.
if [ -d /run/systemd/system ]; then
    /usr/lib/systemd/systemd-sysctl 60-gateway.conf >/dev/null 2>&1 || :
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl enable --now gateway.service || :
    else
        systemctl try-restart gateway.service || :
    fi
fi
