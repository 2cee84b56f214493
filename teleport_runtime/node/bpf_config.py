"""``ssh_service.enhanced_recording``: the settings of BPF enhanced session recording
(:mod:`teleport_runtime.node.bpf`), kept apart from the loader so reading a config file does not
import it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from teleport_runtime.errors import BadParameter

#: Bound on a ring buffer (pages): 256 MiB.
MAX_BUFFER_PAGES = 65536


@dataclass(frozen=True)
class EnhancedRecordingConfig:
    """``ssh_service.enhanced_recording``: buffer sizes are in pages (4 KiB)."""

    enabled: bool = False
    command_buffer_size: int = 8
    disk_buffer_size: int = 128
    network_buffer_size: int = 8


def parse_enhanced_recording(value: Any, where: str = "ssh_service.enhanced_recording") -> EnhancedRecordingConfig:
    """Validate ``ssh_service.enhanced_recording`` (None: off, the defaults)."""
    if value is None:
        return EnhancedRecordingConfig()
    if not isinstance(value, dict):
        raise BadParameter(f"{where}: expected a mapping such as {{enabled: true, command_buffer_size: 8}}")
    known = ("enabled", "command_buffer_size", "disk_buffer_size", "network_buffer_size")
    for key in value:
        if key not in known:
            raise BadParameter(f"{where}: unknown field {key!r}: expected one of {', '.join(known)}")
    enabled = value.get("enabled", False)
    if not isinstance(enabled, bool):
        raise BadParameter(f"{where}.enabled: expected true or false, got {enabled!r}")
    defaults = EnhancedRecordingConfig()
    sizes: dict[str, int] = {}
    for key in known[1:]:
        pages = value.get(key, getattr(defaults, key))
        if (isinstance(pages, bool) or not isinstance(pages, int) or pages < 1 or pages > MAX_BUFFER_PAGES
                or pages & (pages - 1)):
            raise BadParameter(
                f"{where}.{key}: expected a number of 4 KiB pages that is a power of two from 1 to "
                f"{MAX_BUFFER_PAGES} (such as {getattr(defaults, key)}), got {pages!r}"
            )
        sizes[key] = pages
    return EnhancedRecordingConfig(enabled=enabled, **sizes)
