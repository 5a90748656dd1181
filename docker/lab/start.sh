#!/bin/bash
# Start JupyterLab for the labkit course. Token authentication is always on: JUPYTER_TOKEN sets your own,
# else a random one is made and printed with the URL. Extra arguments go to `jupyter lab`.
set -euo pipefail

# Run with --user UID:GID (a host user other than the image's): the image's home is not this user's,
# so use a fresh writable home with a copy of the course notebooks; work/ stays the mounted folder.
if [ ! -w "${HOME}" ]; then
  image_home=${HOME}
  HOME=$(mktemp -d /tmp/lab-home.XXXXXX)
  export HOME
  cp -r "${image_home}/labs" "${HOME}/labs"
  ln -s "${image_home}/work" "${HOME}/work"
  echo "labkit: uid $(id -u) cannot write ${image_home}: home is ${HOME} (a copy of the notebooks in labs/; keep your work in work/, the mounted folder)" >&2
fi
export USER="${USER:-$(id -un 2>/dev/null || echo lab)}"
if [ -d "${HOME}/work" ] && [ ! -w "${HOME}/work/" ]; then
  echo "labkit: work/ is not writable by uid $(id -u): start with --user \"\$(id -u):\$(id -g)\" (the owner of the mounted folder), or create the folder before docker run" >&2
fi

previous=
for arg in "$@"; do
  case "${previous}=${arg}" in
    *.token=|*.token=\"\"|*.token=\'\')
      echo "labkit: refusing an empty token (${previous} ${arg}): this image keeps token authentication on (set JUPYTER_TOKEN for your own token)" >&2
      exit 2;;
  esac
  previous=${arg}
done

if [ -z "${JUPYTER_TOKEN:-}" ]; then
  JUPYTER_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  url_token=${JUPYTER_TOKEN}
else
  url_token='<your JUPYTER_TOKEN>'
fi
export JUPYTER_TOKEN

# Students by default: JupyterLab serves work/ (a fresh folder when work/ is not writable); its labs/ holds the
# student's own copies of the course notebooks (in the mounted folder, so the work outlives the container):
# existing notebooks there are never overwritten, missing ones are added.
# LABKIT_AUDIENCE=instructor serves the home folder with the course notebooks, solutions included.
case "${LABKIT_AUDIENCE:-student}" in
  student)
    if [ -d "${HOME}/work" ] && [ -w "${HOME}/work/" ]; then root_dir=${HOME}/work; else root_dir=$(mktemp -d /tmp/lab-work.XXXXXX); fi
    labkit student "${HOME}/labs" "${root_dir}/labs" --keep-work >&2;;
  instructor) root_dir=${HOME};;
  *) echo "labkit: LABKIT_AUDIENCE must be student or instructor, not ${LABKIT_AUDIENCE}" >&2; exit 2;;
esac
echo "labkit lab ${LABKIT_VERSION:-} (${LABKIT_AUDIENCE:-student}): open http://127.0.0.1:${JUPYTER_PORT:-8888}/lab?token=${url_token}" >&2

exec jupyter lab --no-browser --ServerApp.ip="${JUPYTER_IP:-0.0.0.0}" --ServerApp.root_dir="${root_dir}" "$@"
