#!/usr/bin/env bash
# Headless Chromium for tests/test_serve_page.py (the web page of `sana serve`), from Debian's packages, once.
# Without root or apt-get the page test skips and says what to install.
command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell) >/dev/null 2>&1 \
        || echo "could not install chromium-headless-shell; the web page test will skip"
fi
exit 0
