"""What an alert says, as a message id and its parameters, rendered in the reader's language.

An alert row keeps ``message_id`` (the English text with ``{placeholders}``, a msgid of the
gettext catalogues) and ``params`` (the values, already formatted as text) next to the
English ``message``, so the page, ``collector alerts``, ``collector status`` and the
exports each show it in the language of whoever reads it.  A parameter whose name ends in
``_text`` is itself a msgid (a link state) and is translated before it is filled in.  Rows
written before message ids existed have none: their stored English message is shown.
"""

from __future__ import annotations

import json
from datetime import tzinfo
from typing import Any, Callable, Mapping

from collector.i18n import N_, translator
from collector.localtime import local_time

#: The title of each kind of alert.
KIND_TITLES: dict[str, str] = {
    "device_disconnected": N_("Device disconnected"),
    "no_sample": N_("No samples"),
    "finger_out": N_("Finger out"),
    "t90_above_threshold": N_("T90 above threshold"),
    "disk_almost_full": N_("Disk almost full"),
    "storage_backlog": N_("Storage behind"),
    "storage_failed": N_("Storage failed"),
}

ADAPTER_OFF = N_("no link to the oximeter for {seconds} s: the laptop's Bluetooth adapter is off (after sleep?); "
                 "switch Bluetooth on, the night reconnects by itself")
NO_LINK = N_("no link to the oximeter for {seconds} s (now {state_text}): check the device is on, in range and charged")
NO_SAMPLE = N_("no sample from the oximeter for {seconds} s although connected")
FINGER_OUT = N_("sensor off the finger for {seconds} s: put the probe back on")
T90_ABOVE = N_("provisional T90 {t90_pct} % is above the {threshold_pct} % criterion (after {analysed_h} h analysed; "
               "the alert waits for {min_analysed_h} h)")
DISK_LOW = N_("only {free_mb} MB free next to the database; free space now or recording stops")
STORAGE_BEHIND = N_("the database writer is {unwritten} samples behind: the disk is too slow or stalled; nothing is "
                    "lost yet, check the disk")
STORAGE_SPILLING = N_("the database writer is {unwritten} samples behind; new samples wait in {file} next to the "
                      "database and are written back when it catches up: nothing is lost yet, check the disk")
STORAGE_FAILED = N_("the database writer failed ({error}); samples are not being saved")
MESSAGE_IDS = (ADAPTER_OFF, NO_LINK, NO_SAMPLE, FINGER_OUT, T90_ABOVE, DISK_LOW, STORAGE_BEHIND, STORAGE_SPILLING,
               STORAGE_FAILED)

#: A repeating alert's time: how often, since when, and the latest raise (the page shows the same words).
RAISED_TIMES = N_("{count} times since {first}, last {last}")

#: Link states as they fill ``{state_text}`` (the page shows the same words on the bed card).
LINK_STATE_TEXT: dict[str, str] = {
    "searching": N_("searching"), "connecting": N_("connecting"), "connected": N_("connected"), "lost": N_("lost"),
    "reconnecting": N_("reconnecting"), "closed": N_("closed"),
}

#: How alert states read in the CLI.
STATE_TEXT: dict[str, str] = {
    "active": N_("ACTIVE"), "cleared": N_("cleared (to acknowledge)"),
    "acknowledged": N_("acknowledged (still holds)"), "resolved": N_("resolved"),
}


def fill(template: str, params: Mapping[str, str], _: Any = None) -> str:
    """``template`` with ``{name}`` replaced by its value (``*_text`` values translated by ``_`` first);
    an unknown placeholder stays as written, so a bad row still reads."""
    out = template
    for key, value in params.items():
        text = _(value) if _ is not None and key.endswith("_text") else value
        out = out.replace("{" + key + "}", str(text))
    return out


def render(message_id: str | None, params: Mapping[str, str] | None, message: str, lang: str | None) -> str:
    """The alert's message in ``lang``; the stored English ``message`` when the row has no message id."""
    if not message_id:
        return message
    _ = translator(lang)
    return fill(_(message_id), params or {}, _)


def title(kind: str, lang: str | None) -> str:
    return translator(lang)(KIND_TITLES.get(kind, kind))


def params_of(row: Mapping[str, Any]) -> dict[str, str]:
    """The parameters of a stored row (``params_json``), {} for rows without."""
    raw = row.get("params_json")
    return {str(k): str(v) for k, v in json.loads(raw).items()} if raw else {}


def localise(row: Mapping[str, Any], lang: str | None) -> dict[str, Any]:
    """An alert as a dict with ``title`` and ``message`` in ``lang`` (``message_en`` keeps the English)."""
    params = row.get("params") if isinstance(row.get("params"), dict) else params_of(row)
    out = {k: v for k, v in row.items() if k != "params_json"}
    out.update(params=params, message_en=row["message"], title=title(row["kind"], lang),
               message=render(row.get("message_id"), params, row["message"], lang))
    return out


def raised_text(a: dict[str, Any], tz: tzinfo, _: Callable[[str], str] = str) -> str:
    """When an alert was raised, as a person reads it (``_``: the reader's translator): "03:00 +08:00", or
    for a repeating one "116 times since 03:00 +08:00, last 05:58 +08:00" (``a``: a row or ``Alert.as_dict``)."""
    first = local_time(a["raised_utc"], tz)
    count = int(a.get("raise_count") or 1)
    if count <= 1:
        return first
    return _(RAISED_TIMES).format(count=count, first=first,
                                      last=local_time(a.get("last_raised_utc") or a["raised_utc"], tz))
