#!/bin/sh
# A Chromium for PNG export (kaleido drives it headless), called by `make setup`. As root on a
# machine with apt-get (Debian, as in CI) it installs Debian's `chromium` and a font with Arial's
# metrics. It never fails the set-up: when there is no Chromium it writes the reason to the file $1,
# which the PNG tests name in their skip message; the file is removed once a Chromium is found.
note="${1:?usage: setup_chromium.sh NOTE_FILE}"

find_browser() {
    for b in chromium chromium-browser google-chrome google-chrome-stable; do
        command -v "$b" && return 0
    done
    [ -n "$BROWSER_PATH" ] && [ -x "$BROWSER_PATH" ] && echo "$BROWSER_PATH" && return 0
    return 1
}

if path=$(find_browser); then
    rm -f "$note"
    echo "Chromium for PNG export: $path"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    reason="not root, so apt-get cannot install chromium (install one, or set BROWSER_PATH)"
elif ! command -v apt-get >/dev/null 2>&1; then
    reason="no apt-get (not Debian): install a Chrome/Chromium, or set BROWSER_PATH"
else
    log=$(mktemp)
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-liberation; } \
        >"$log" 2>&1 && path=$(find_browser); then
        rm -f "$note" "$log"
        echo "installed Chromium for PNG export: $path"
        exit 0
    fi
    last=$(grep -E '^(E|W|Err):' "$log" | tail -n 1)
    [ -n "$last" ] || last=$(tail -n 1 "$log")
    reason="apt-get install chromium failed: ${last:-no output}"
    rm -f "$log"
fi
printf '%s\n' "$reason" >"$note"
echo "no Chromium, so the PNG export tests will skip: $reason"
exit 0
