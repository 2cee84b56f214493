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
  - Node names, UUIDs and addresses are what the nodes report, so the plugin checks them before
    they reach OpenSSH or Ansible. A node whose name is not a DNS host name (letters, digits,
    C(-) and C(.), no label starting with C(-)) or whose ID is not a UUID is left out with a
    warning naming it. Ansible connects by node UUID (C(UUID.CLUSTER), which the proxy routes to
    exactly that node), never by a name a node chose.
  - Each node is one host. The inventory name is the node's name; when several nodes report the
    same name (compared case-insensitively), each of them is named C(NAME-UUID8) (the first 8
    characters of its UUID, or the whole UUID if that is not unique), so none of them stands in
    for another and each stays in its own label groups.
  - Group names made from labels (O(keyed_groups)) keep only ASCII letters, digits and C(_); every
    other character becomes C(_).
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
      - Connect to C(UUID.CLUSTER) (C(ansible_host)), the names the C(tsh config) OpenSSH config
        routes through the proxy. The inventory name stays the node's name.
      - With V(false), C(ansible_host) is the node's name, or the host part of its address when
        several nodes share the name; your own OpenSSH config or DNS must reach it.
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

import ipaddress
import json
import os
import re
import shlex
import subprocess
import tempfile
from collections import Counter
from typing import Any

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.unsafe_proxy import wrap_var

SUFFIXES = ("teleport.yml", "teleport.yaml", "cluster.yml", "cluster.yaml")

# What a node reports reaches OpenSSH's command line (ansible_host, %h in the ProxyCommand of
# tsh config), so only plain DNS names pass: no label starts with "-" (an ssh option) and no
# character is special to a shell or to ssh.
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(r"%s(?:\.%s)*" % (_DNS_LABEL, _DNS_LABEL))
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_GROUP_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def valid_dns_name(value: object) -> bool:
    """True for a host name such as ``node1`` or ``node1.example.com`` (at most 253 characters)."""
    return isinstance(value, str) and len(value) <= 253 and _DNS_NAME.fullmatch(value) is not None


def valid_address_host(value: object) -> bool:
    """True for an IP literal or a DNS name."""
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return valid_dns_name(value)


def address_host(addr: object) -> str | None:
    """The host part of ``host:port`` or ``[v6]:port``; None when there is none."""
    if not isinstance(addr, str) or not addr:
        return None
    if addr.startswith("["):
        host, sep, _port = addr[1:].partition("]")
        return host if sep else None
    host = addr.rpartition(":")[0] if addr.count(":") == 1 else addr
    return host or None


def safe_group_name(name: object) -> str:
    """A group name Ansible accepts as is: ASCII letters, digits and ``_``, not starting with a digit."""
    name = _GROUP_UNSAFE.sub("_", str(name))
    return "_" + name if name[:1].isdigit() else name


def inventory_names(nodes: list[dict[str, Any]]) -> dict[str, str]:
    """Inventory name per node UUID: the node's name where no other node reports it, else
    ``name-<uuid8>``; a name still used twice, or one that is another node's UUID (a node may
    pick a name that looks like another node's derived name or ID), falls back to the node's
    own UUID, which is unique."""
    counts = Counter(node["hostname"].lower() for node in nodes)
    names: dict[str, str] = {}
    for node in nodes:
        name = node["hostname"]
        names[node["id"]] = name if counts[name.lower()] == 1 else "%s-%s" % (name, node["id"][:8])
    while True:
        used = Counter(name.lower() for name in names.values())
        clashing = [uuid for uuid, name in names.items()
                    if name != uuid and (used[name.lower()] > 1 or name.lower() in names)]
        if not clashing:
            return names
        for uuid in clashing:
            names[uuid] = uuid


def host_vars(node: dict[str, Any], cluster: str | None, login: str | None, ssh_config_file: str,
              use_cluster_suffix: bool, unique_name: bool = True) -> dict[str, Any]:
    """Host variables for one checked node of ``tsh ls --format=json``."""
    if use_cluster_suffix and cluster:
        # The proxy routes UUID.CLUSTER to that node only, and its host certificate names it.
        target = "%s.%s" % (node["id"], cluster)
    elif unique_name:
        target = node["hostname"]
    else:
        target = address_host(node.get("addr"))
    out = dict(
        ansible_host=target,
        ansible_connection="ssh",
        ansible_ssh_common_args="-F %s" % shlex.quote(ssh_config_file),
        teleport_cluster=cluster,
        teleport_node_id=node["id"],
        teleport_node_name=node["hostname"],
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

    def _checked_nodes(self, nodes: object, cluster: str | None, use_cluster_suffix: bool) -> list[dict[str, Any]]:
        """The nodes whose UUID, name and labels are safe to use; each other one is warned about
        by UUID (or by what it gave as one) and left out."""
        if not isinstance(nodes, list):
            raise AnsibleParserError("tsh ls --format=json printed %s, not a list of nodes" % type(nodes).__name__)
        out: list[dict[str, Any]] = []
        for node in nodes:
            node_id = node.get("id") if isinstance(node, dict) else None
            node_id = node_id.lower() if isinstance(node_id, str) else node_id
            if not isinstance(node_id, str) or not _UUID.fullmatch(node_id):
                self.display.warning("teleport nodes: skipping a node whose ID %.80r is not a UUID" % (node_id,))
                continue
            node = dict(node, id=node_id)
            if not valid_dns_name(node.get("hostname")):
                self.display.warning(
                    "teleport nodes: skipping node %s: its name %.80r is not a DNS host name (letters, digits, "
                    "'-' and '.', no part starting with '-'); fix the node's nodename" % (node_id, node.get("hostname"))
                )
                continue
            labels = node.get("labels") or {}
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                self.display.warning("teleport nodes: skipping node %s: its labels are not a map of strings" % node_id)
                continue
            out.append(node)
        ids = Counter(node["id"] for node in out)
        for node_id in sorted(uuid for uuid, count in ids.items() if count > 1):
            self.display.warning("teleport nodes: skipping node %s: tsh listed it more than once" % node_id)
        out = [node for node in out if ids[node["id"]] == 1]
        if use_cluster_suffix and cluster and not valid_dns_name(cluster):
            raise AnsibleParserError(
                "the cluster name %r from tsh status is not a DNS name; check the proxy you logged in to" % (cluster,)
            )
        return out

    @staticmethod
    def _sanitize_group_name(name: str) -> str:
        # Label values are what the nodes report: keep group names within Ansible's rules.
        return safe_group_name(name)

    def _populate(self, data):
        ssh_config_file = self._write_ssh_config(data["ssh_config"])
        group = self.get_option("group")
        if group:
            self.inventory.add_group(group)
        strict = self.get_option("strict")
        use_cluster_suffix = self.get_option("use_cluster_suffix")
        nodes = self._checked_nodes(data["nodes"], data["cluster"], use_cluster_suffix)
        names = inventory_names(nodes)
        for node in nodes:
            name = names[node["id"]]
            unique_name = name == node["hostname"]
            if not (use_cluster_suffix and data["cluster"]) and not unique_name \
                    and not valid_address_host(address_host(node.get("addr"))):
                self.display.warning(
                    "teleport nodes: skipping node %s: its name %.80r is not unique and its address %.80r is "
                    "neither an IP nor a DNS name" % (node["id"], node["hostname"], node.get("addr"))
                )
                continue
            self.inventory.add_host(name, group=group or None)
            # Everything a node reports is data, never a template: on ansible-core before 2.19
            # an unmarked '{{ ... }}' in a label would be evaluated on the controller.
            variables = wrap_var(host_vars(node, data["cluster"], self.get_option("login"), ssh_config_file,
                                           use_cluster_suffix, unique_name=unique_name))
            for key, value in variables.items():
                self.inventory.set_variable(name, key, value)
            self._set_composite_vars(self.get_option("compose"), variables, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), variables, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, name, strict=strict)
