#!/usr/bin/env bash
# Build the Molecule base image (Debian bookworm with systemd as PID 1) locally with debootstrap.
# No registry is reachable from the project's machines, so the image is made here and cached by
# tag; the build is skipped when the tag already exists (pass --force to rebuild).
#
# Usage: molecule/base-image/build.sh [--force]
# Env:   TELEPORT_MOLECULE_IMAGE  image tag (default localhost/teleport-access-base:bookworm)
#        DEBIAN_MIRROR            mirror for debootstrap (default http://deb.debian.org/debian)
#        CONTAINERS_CONF          podman settings (default: molecule/containers.conf beside this)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${TELEPORT_MOLECULE_IMAGE:-localhost/teleport-access-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/../containers.conf}"

force=0
[[ "${1:-}" == "--force" ]] && force=1

if [[ $force -eq 0 ]] && podman image exists "$image"; then
    echo "base image $image exists; skipping build"
    exit 0
fi

for tool in debootstrap podman tar; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is required" >&2; exit 1; }
done
[[ $(id -u) -eq 0 ]] || { echo "build.sh: debootstrap needs root" >&2; exit 1; }

# What the hosts need: python3 (+venv) for Ansible and the runtime's virtualenv, OpenSSH for the
# interop checks through the proxy, systemd to run the services as on a real host.
packages=(
    python3 python3-venv
    openssh-server openssh-client openssh-sftp-server
    iproute2 sudo systemd systemd-sysv dbus procps curl ca-certificates
)

rootfs="$(mktemp -d /var/tmp/teleport-base-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap bookworm into $rootfs (this takes about a minute)"
debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
    bookworm "$rootfs" "$mirror"

# A container's identity comes from podman, not from the image: every container gets its own
# machine-id at boot, and sshd host keys are made on first start rather than shared by all.
: > "$rootfs/etc/machine-id"
rm -f "$rootfs"/etc/ssh/ssh_host_*
mkdir -p "$rootfs/etc/systemd/system/ssh.service.d"
cat > "$rootfs/etc/systemd/system/ssh.service.d/hostkeys.conf" <<'UNIT'
[Service]
# Reset the list so the keys exist before the stock `sshd -t` check runs.
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT
# Units that make no sense in a container and only slow the boot down or fail.
for unit in getty.target systemd-udevd.service systemd-udev-trigger.service \
            systemd-remount-fs.service sys-kernel-debug.mount sys-kernel-tracing.mount \
            systemd-logind.service console-getty.service; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

tar -C "$rootfs" -c . | podman import \
    --change 'CMD ["/sbin/init"]' \
    --change 'ENV container=podman' \
    --change 'STOPSIGNAL SIGRTMIN+3' \
    - "$image"
echo "built $image"
