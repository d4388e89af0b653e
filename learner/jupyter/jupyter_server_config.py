"""The terminal of the learner's JupyterLab (`make lab`): bash with the course's .venv/bin first on PATH.

JupyterLab's default terminal is a login shell (`bash -l`), and a system's profile may set PATH afresh
(Debian's /etc/profile does), which loses the `qkv` command of the venv that `make lab` put first. This
terminal is an interactive bash that reads the usual bashrc files and then puts this server's own bin
folder (the venv's) first: see learner/terminal.bashrc.
"""

import sys
from pathlib import Path

c = get_config()  # noqa: F821 (provided by Jupyter when it loads this file)

RCFILE = Path(__file__).resolve().parent.parent / "terminal.bashrc"
c.ServerApp.terminado_settings = {
    "shell_command": ["/usr/bin/env", f"QKV_BIN={Path(sys.executable).parent}", "bash", "--rcfile",
                      str(RCFILE), "-i"],
}
