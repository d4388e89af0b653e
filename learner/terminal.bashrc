# The start-up file of JupyterLab's terminal under `make lab` (learner/jupyter/jupyter_server_config.py
# starts `bash --rcfile` on it, with QKV_BIN set to the course's .venv/bin). It reads the usual bashrc
# files, then puts the venv first on PATH, so that `qkv check NAME` works whatever they (or the system's
# profile) did to PATH.
[ -r /etc/bash.bashrc ] && . /etc/bash.bashrc
[ -r "$HOME/.bashrc" ] && . "$HOME/.bashrc"
if [ -n "$QKV_BIN" ]; then
    export PATH="$QKV_BIN:$PATH"
    export VIRTUAL_ENV="${QKV_BIN%/bin}"
fi
