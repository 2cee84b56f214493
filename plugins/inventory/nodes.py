# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
name: nodes
short_description: The cluster's nodes as Ansible hosts, reached through the proxy
version_added: 0.1.0
description:
  - Lists the nodes your C(tsh) login can reach (C(tsh ls --format=json)) and makes each one a
    host, with its labels as host variables, grouped by labels with O(keyed_groups).
  - Ansible reaches the hosts with OpenSSH through the proxy, using the short-lived certificate
    of your C(tsh login). The plugin writes the OpenSSH config that C(tsh config) prints to
    O(ssh_config_file) and points C(ansible_ssh_common_args) at it. Log in first with
    C(tsh login --proxy=PROXY:3080 --user=NAME); when the certificate expires, log in again.
  - Nodes come from the proxy with your own identity, so the inventory shows what your roles
    allow and needs nothing on the auth server. (The C(teleport_access.cluster.cluster_info)
    module lists every node with the admin identity on the auth host instead.)
  - The inventory file's name must end in C(teleport.yml), C(teleport.yaml), C(cluster.yml) or
    C(cluster.yaml).
extends_documentation_fragment:
  - ansible.builtin.constructed
  - ansible.builtin.inventory_cache
options:
  plugin:
    description: The name of this plugin; makes the file an inventory of this plugin.
    type: str
    required: true
    choices: [teleport_access.cluster.nodes]
  tsh_path:
    description: The C(tsh) executable.
    type: str
    default: tsh
    env:
      - name: TELEPORT_TSH
  teleport_home:
    description: C(tsh)'s profile directory (C(TELEPORT_HOME)); defaults to C(tsh)'s own (C(~/.tsh)).
    type: path
    env:
      - name: TELEPORT_HOME
  login:
    description: OS login on the nodes (C(ansible_user)); one of the logins your roles allow.
    type: str
  labels:
    description: Only nodes with all of these labels (C(tsh ls key=value)).
    type: dict
    default: {}
  ssh_config_file:
    description:
      - Where to write the OpenSSH config of C(tsh config). Defaults to C(ansible_ssh_config) in
        the C(tsh) profile directory.
    type: path
  group:
    description: A group that holds every node of the cluster.
    type: str
    default: teleport_nodes
  use_cluster_suffix:
    description:
      - Connect to C(HOSTNAME.CLUSTER) (C(ansible_host)), the names the C(tsh config) OpenSSH config
        routes through the proxy. The inventory name stays the node's name.
    type: bool
    default: true
"""

EXAMPLES = r"""
# cluster.yml: every node you can reach, grouped by its env and tier labels
plugin: teleport_access.cluster.nodes
login: root
keyed_groups:
  - key: teleport_labels.env
    prefix: env
  - key: teleport_labels.tier
    prefix: tier
compose:
  node_arch: teleport_labels.arch | default('unknown')

# Then: tsh login --proxy=proxy.example.com:3080 --user=alice
#       ansible -i cluster.yml env_prod -m ping
"""

import json
import os
import subprocess
import tempfile

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

SUFFIXES = ("teleport.yml", "teleport.yaml", "cluster.yml", "cluster.yaml")


def host_vars(node, cluster, login, ssh_config_file, use_cluster_suffix):
    """Host variables for one node of ``tsh ls --format=json``."""
    hostname = node["hostname"]
    out = dict(
        ansible_host="%s.%s" % (hostname, cluster) if use_cluster_suffix and cluster else hostname,
        ansible_connection="ssh",
        ansible_ssh_common_args="-F %s" % ssh_config_file,
        teleport_cluster=cluster,
        teleport_node_id=node.get("id"),
        teleport_addr=node.get("addr"),
        teleport_labels=dict(node.get("labels") or {}),
    )
    if login:
        out["ansible_user"] = login
    return out


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """Hosts from ``tsh ls``, connected through the proxy with ``tsh config``'s OpenSSH settings."""

    NAME = "teleport_access.cluster.nodes"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(SUFFIXES)

    def _tsh(self, *args):
        cmd = [self.get_option("tsh_path")] + list(args)
        env = dict(os.environ)
        if self.get_option("teleport_home"):
            env["TELEPORT_HOME"] = self.get_option("teleport_home")
        try:
            done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  universal_newlines=True, check=False, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AnsibleParserError("cannot run %s: %s" % (" ".join(cmd), to_native(exc)))
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()
            raise AnsibleParserError(
                "%s failed: %s (log in with `tsh login --proxy=PROXY:3080 --user=NAME`)"
                % (" ".join(cmd), reason[-1] if reason else "exit %d" % done.returncode)
            )
        return done.stdout

    def _profile_dir(self):
        return self.get_option("teleport_home") or os.path.expanduser("~/.tsh")

    def _fetch(self):
        """Cluster name, nodes and the OpenSSH config, from tsh."""
        status = json.loads(self._tsh("status", "--format=json"))
        if status.get("expired"):
            raise AnsibleParserError(
                "the tsh certificate of %s expired at %s: run tsh login again"
                % (status.get("user"), status.get("valid_until"))
            )
        selector = ["%s=%s" % (k, v) for k, v in sorted((self.get_option("labels") or {}).items())]
        nodes = json.loads(self._tsh("ls", "--format=json", *selector))
        return dict(cluster=status.get("cluster"), nodes=nodes, ssh_config=self._tsh("config"))

    def _write_ssh_config(self, text):
        path = self.get_option("ssh_config_file") or os.path.join(self._profile_dir(), "ansible_ssh_config")
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
        try:
            with open(path) as handle:
                if handle.read() == text:
                    return path
        except OSError:
            pass
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ansible_ssh_config.")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return path

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        data = None
        if use_cache:
            try:
                data = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if data is None:
            data = self._fetch()
        if update_cache:
            self._cache[cache_key] = data
        self._populate(data)

    def _populate(self, data):
        ssh_config_file = self._write_ssh_config(data["ssh_config"])
        group = self.get_option("group")
        if group:
            self.inventory.add_group(group)
        strict = self.get_option("strict")
        for node in data["nodes"]:
            name = node["hostname"]
            self.inventory.add_host(name, group=group or None)
            variables = host_vars(node, data["cluster"], self.get_option("login"), ssh_config_file,
                                  self.get_option("use_cluster_suffix"))
            for key, value in variables.items():
                self.inventory.set_variable(name, key, value)
            self._set_composite_vars(self.get_option("compose"), variables, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), variables, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, name, strict=strict)
