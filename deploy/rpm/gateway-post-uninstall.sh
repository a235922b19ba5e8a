# %postun of the gateway .rpm (deploy/package). The admin token stays, like a
# changed config file (kept as .rpmsave): a reinstall keeps the same token.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
