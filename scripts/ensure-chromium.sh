#!/bin/sh
# Headless Chromium for the browser test (tests/ui): installs the Debian package when it is missing.
set -eu
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }
else
    sudo apt-get install -y chromium || { sudo apt-get update && sudo apt-get install -y chromium; }
fi
command -v chromium >/dev/null 2>&1
