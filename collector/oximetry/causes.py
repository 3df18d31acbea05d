"""Which outages end a sample's hold: one vocabulary for the recorder, the report and the export.

An outage that interrupts the recording (link lost, the Bluetooth adapter off or
asleep, silent link, daemon down, a recorder restart, a paused session) ends the zero-order hold of the last
sample, so the time after it counts in neither numerator nor denominator.
Lost packets are stored as gaps too, but within ``max_hold_s`` they are held
over by the definition (oximetry.md), so they do not break it.
"""

from __future__ import annotations

from collector.i18n import N_

BREAKING_CAUSES = frozenset({"device_disconnected", "adapter_off", "watchdog_silence", "daemon_down", "recorder_error",
                             "session_paused"})

#: How a gap's cause reads on the page (``t(cause with spaces)``): the msgids of the catalogues.
CAUSE_TEXT: dict[str, str] = {
    "device_disconnected": N_("device disconnected"), "adapter_off": N_("adapter off"),
    "watchdog_silence": N_("watchdog silence"), "daemon_down": N_("daemon down"), "recorder_error": N_("recorder error"),
    "session_paused": N_("session paused"), "lost_packets": N_("lost packets"),
}
