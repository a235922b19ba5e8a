# %postun of the upstream-app .rpm (deploy/package): with the drop-in gone on
# erase, Redis goes back to the distribution's settings.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 0 ]; then
        systemctl try-restart redis6.service || :
    fi
fi
