"""murder's fabfile: ``fab deploy``, ``fab rollback`` and Murder's tasks as ``fab murder.*``.

Every knob lives under the ``murder`` config key (defaults below, then
``fabric.yaml``, then ``FABRIC_MURDER_*`` environment variables, then task flags).
See ``fabric.yaml.example`` and ``hosts.example.ini``.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

# `fab` puts fabfile/ itself on sys.path, not the checkout it sits in: in a checkout
# where murder is not pip-installed, the engine package is found beside us.
if importlib.util.find_spec("murder_core") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from invoke.collection import Collection

from fabfile import murder_tasks
from fabfile.deploy import deploy, rollback_task, run_deploy, run_rollback
from fabfile.settings import DEFAULTS, Settings, settings_from_config


def _keep_murder_task_names() -> None:
    """Let ``fab murder.start_tracker`` keep Murder's underscores.

    Invoke renames ``start_tracker`` to ``start-tracker`` unless the *root* collection
    has ``auto_dash_names`` off, and ``fab`` builds the root from the config value
    ``tasks.auto_dash_names`` before it sees ours. We are imported right before that
    step, so set it on the running program's config (fabric.yaml may still override).
    """
    try:
        import fabric.main  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - fabric is a hard dependency of this package
        return
    config = getattr(fabric.main.program, "config", None)
    if config is not None:
        config.tasks.auto_dash_names = False


_keep_murder_task_names()

murder = Collection.from_module(murder_tasks, name="murder", auto_dash_names=False)
ns = Collection(deploy, rollback_task, murder, auto_dash_names=False)
# Booleans go in as strings: Invoke casts an environment string onto a bool default as
# "anything but '' or '0' is true", so FABRIC_MURDER_COMPRESS=false would turn gzip ON.
# Onto a string default it passes the text through, and Settings parses it strictly.
ns.configure(
    {
        "murder": {
            k: ("true" if v else "false") if isinstance(v, bool) else copy.deepcopy(v)
            for k, v in DEFAULTS.items()
        }
    }
)

__all__ = ["DEFAULTS", "Settings", "ns", "run_deploy", "run_rollback", "settings_from_config"]
