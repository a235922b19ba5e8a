# %preun of the gateway .rpm (deploy/package); $1 is 0 on erase, 1 on upgrade.
# Erase stops and disables the service (SIGTERM: it drains first).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now gateway.service || :
fi
