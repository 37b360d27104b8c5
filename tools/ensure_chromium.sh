#!/bin/sh
# Make sure Debian's chromium is present for the browser check of the built book.
# Installs it with apt-get when missing and possible (root, apt-get present); otherwise says so loudly.
# The browser test itself then fails unless WDLIB_SKIP_BROWSER=1 is set on purpose.
CHROMIUM="${WDLIB_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: $CHROMIUM missing; installing Debian's chromium with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    if [ -x "$CHROMIUM" ]; then exit 0; fi
fi
echo "################################################################################" >&2
echo "ensure_chromium: NO CHROMIUM at $CHROMIUM and it could not be installed here." >&2
echo "The browser check of the HTML book will FAIL. Install Debian's chromium" >&2
echo "(apt-get install chromium) or set WDLIB_SKIP_BROWSER=1 to skip it knowingly." >&2
echo "################################################################################" >&2
exit 0
