# %post of the upstream-app .rpm (deploy/package); $1 is 1 on install, 2+ on
# upgrade. The package ships a drop-in for redis6.service (port 6380, loopback,
# memory cap): Redis is enabled and (re)started with it, then the app.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    systemctl enable redis6.service >/dev/null 2>&1 || :
    systemctl restart redis6.service || :
    if [ "$1" -eq 1 ]; then
        systemctl enable --now upstream-app.service || :
    else
        systemctl try-restart upstream-app.service || :
    fi
fi
