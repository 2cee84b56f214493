"""What preflight needs to know about a host, in one round trip (run by the host's python3).

argv: CONFIG_PATH DATA_DIR BIN_DIR PREFIX SERVICE_NAME PORT...
Prints one JSON object: python (major.minor, or an error), machine, systemd (PID 1 is systemd),
install ("none", "ours" or "foreign", with the paths found in "found") and ports_in_use (those of
PORT... some process listens on).
"""

import importlib.util
import json
import os
import platform
import sys

config, data_dir, bin_dir, prefix, service = sys.argv[1:6]
ports = {int(p) for p in sys.argv[6:]}

# venv needs ensurepip to make a virtualenv with pip (Debian: python3-venv).
missing = [name for name in ("venv", "ensurepip") if importlib.util.find_spec(name) is None]
python = "%d.%d" % sys.version_info[:2] if not missing else "error: no %s module" % " or ".join(missing)

units = ["/etc/systemd/system/%s.service" % service, "/lib/systemd/system/%s.service" % service,
         "/usr/lib/systemd/system/%s.service" % service]
binaries = [os.path.join(bin_dir, name) for name in ("teleport", "tctl", "tsh")]
found = [p for p in [config] + binaries + units if os.path.lexists(p)]
if os.path.isdir(data_dir) and os.listdir(data_dir):
    found.append(data_dir)


def ours():
    """Made by these roles: the commands link into PREFIX's venv and the unit is the role's."""
    venv_bin = os.path.join(prefix, "venv", "bin")
    for path in binaries:
        if os.path.lexists(path) and os.path.dirname(os.path.realpath(path)) != os.path.realpath(venv_bin):
            return False
    for path in units:
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as handle:
                if "Description=Teleport access " not in handle.read():
                    return False
    return os.path.exists(os.path.join(venv_bin, "teleport"))


install = "none" if not found else "ours" if ours() else "foreign"

listening = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        with open(table, encoding="ascii") as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    listening.add(int(fields[1].rsplit(":", 1)[1], 16))
    except OSError:
        pass

print(json.dumps(dict(
    python=python,
    machine=platform.machine(),
    systemd=os.path.isdir("/run/systemd/system"),
    install=install,
    found=found,
    ports_in_use=sorted(ports & listening),
)))
