"""The ``--help`` text of flags that several tasks share, defaults read from DEFAULTS."""

from __future__ import annotations

from fabfile.settings import DEFAULTS

H_INV = "Ansible-style hosts.ini (default: murder.inventory config)"
H_TAG = "release name (no '/')"
H_TEMP = f"temp dir on the hosts (default {DEFAULTS['temp_path']})"
H_MURDER = f"where murder.pyz lives on the hosts (default {DEFAULTS['remote_murder_path']})"
H_PORT = f"tracker port (default {DEFAULTS['tracker_port']})"
H_DEST = (
    f"the app's directory on the peers: releases/TAG and the current symlink go under it "
    f"(default {DEFAULTS['destination_path']})"
)
H_KEEP = (
    f"newest releases kept on each peer; the current one is never removed "
    f"(default {DEFAULTS['keep_releases']})"
)
H_JSON = "also write the per-host report as JSON to this file"
H_PATH_IS_FILE = "the payload is one file: swarm it as is, no tarball"
