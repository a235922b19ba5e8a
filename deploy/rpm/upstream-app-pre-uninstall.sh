# %preun of the upstream-app .rpm (deploy/package); $1 is 0 on erase.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now upstream-app.service || :
fi
