"""Development and test tooling for murder; never installed on deploy targets.

``murder_dev.cluster`` builds a local multi-host cluster out of Linux network
namespaces, each host running its own OpenSSH ``sshd``.
"""

from __future__ import annotations
