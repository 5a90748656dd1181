#!/bin/sh
# Entrypoint of labkit-yolo: `labkit detect /data/in /data/out [options]`, never as root.
#
# Files written into a volume belong to the user id of the process that writes them. So the detector
# runs as the owner of the output folder, and the files on the host belong to whoever owns out/:
#   - started with --user UID:GID, it already runs as that user: nothing to decide;
#   - out/ owned by a user: run as that user;
#   - out/ empty and owned by root (Docker creates a missing host folder as root): take the owner of
#     the input folder, give out/ to that user, run as that user;
#   - everything owned by root (root ran the command): run as the image's user `labkit`, then hand the
#     outputs back to root.
set -eu
IN=/data/in
OUT=/data/out
if [ "$(id -u)" != 0 ]; then exec labkit detect "$IN" "$OUT" "$@"; fi

owner=$(stat -c %u:%g "$OUT")
if [ "${owner%%:*}" = 0 ] && [ -z "$(ls -A "$OUT")" ] && [ -d "$IN" ]; then
    owner=$(stat -c %u:%g "$IN")
    chown "$owner" "$OUT"
fi
uid=${owner%%:*}
gid=${owner##*:}
if [ "$uid" != 0 ]; then
    exec setpriv --reuid="$uid" --regid="$gid" --clear-groups labkit detect "$IN" "$OUT" "$@"
fi

# root owns the outputs: detect as `labkit`, then give every output back to root
chown -R labkit:labkit "$OUT"
status=0
setpriv --reuid=labkit --regid=labkit --init-groups labkit detect "$IN" "$OUT" "$@" || status=$?
chown -R 0:0 "$OUT"
exit "$status"
