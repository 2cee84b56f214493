#!/bin/sh
# Whether the host certificate needs (re)signing: prints "ok", or the reason it does not do.
# Usage: host_cert_status.sh CERT RENEW_BEFORE_SECONDS NAME,NAME... < host CA keys (active first, one per line)
set -eu
cert="$1"
renew="$2"
names="$3"
if [ ! -s "$cert" ]; then echo missing; exit 0; fi
info="$(ssh-keygen -L -f "$cert")"
# "Valid: from 2026-11-28T15:00:00 to 2026-12-28T15:00:00"
to="$(printf '%s\n' "$info" | sed -n 's/^ *Valid: from [^ ]* to \(.*\)$/\1/p')"
if [ -z "$to" ] || [ "$to" = forever ]; then echo unbounded; exit 0; fi
if [ $(( $(date -d "$to" +%s) - $(date +%s) )) -le "$renew" ]; then echo expiring; exit 0; fi
# The auth service adds names of its own (the host ID, loopback): each wanted name must be there.
have="$(printf '%s\n' "$info" | sed -n '/^ *Principals:/,/^ *Critical Options:/p' | sed '1d;$d' | tr -d ' ')"
for name in $(printf '%s\n' "$names" | tr , ' '); do
    printf '%s\n' "$have" | grep -qxF "$name" || { echo other-names; exit 0; }
done
ca="$(printf '%s\n' "$info" | sed -n 's/^ *Signing CA: [^ ]* \(SHA256:[^ ]*\).*$/\1/p')"
active="$(head -n 1 | ssh-keygen -l -f - | awk '{print $2}')"
# During a host CA rotation the proxy checks against the new CA once it is active.
if [ "$ca" != "$active" ]; then echo not-from-the-active-host-ca; exit 0; fi
echo ok
