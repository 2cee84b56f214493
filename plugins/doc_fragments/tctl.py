# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations


class ModuleDocFragment:
    """Connection options and attribute descriptions shared by the modules that drive the cluster
    through tctl."""

    DOCUMENTATION = r"""
options:
  tctl_path:
    description:
      - The C(tctl) executable on the auth host, a name looked up on E(PATH) or an absolute path.
    type: str
    default: tctl
  tctl_config:
    description:
      - The auth server's C(teleport.yaml). C(tctl) reads the data dir (where the local admin
        identity lives) and the auth API address from it.
      - When unset, C(tctl) uses its own default, C(/etc/teleport.yaml).
    type: path
  auth_server:
    description:
      - Auth API address C(HOST:PORT) to use instead of the one in the config.
    type: str
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
  diff_mode:
    description: Returns details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  idempotent:
    description: Running the task twice gives the same state and reports changed only the first time.
notes:
  - These modules run C(tctl ... --format=json) on the host they are executed on, which must be
    an auth server (delegate to it with C(delegate_to) when the play targets other hosts).
    C(tctl) needs the local admin identity, so run them as root (C(become=true)).
"""
