"""CDISC ODM 1.3.2 for the study's EDC, and the tidy ``results.csv``, from export bundles.

Built from the bundle files alone (``subject.json``, ``night_<s>.json``,
``spirometry_<s>.json``, ``eligibility.json``, ``audit.csv``), so the ODM holds exactly
the scrubbed, form-precision values the bundle holds.  The study's item map (OIDs,
UCUM units, code lists) is ``[export.odm]`` in the config.

Layout: one ``ClinicalData`` with a ``SubjectData`` per subject (``SiteRef`` to the site's
``Location``), one screening ``StudyEventData`` and ``FormData``, an ``ItemGroupData`` per
night and per spirometry session (repeat key: the session number) and one for the
eligibility decision.  Every ``ItemData`` carries its own ``AuditRecord`` (who, where,
when the value was made, and the bundle file it comes from); the site's audit trail
rows follow as ``AuditRecords`` (``SourceID`` = the row's id and hash in the chain).
Signatures: :data:`Signature` records passed in are written as ``Signature`` elements
with their ``SignatureDef``; the export itself signs nothing.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Iterable

from . import csvs

NS = "http://www.cdisc.org/ns/odm/v1.3"
SYSTEM_USER = "collector"  # the user of values the software computed (reports, results, decisions)
RESULT_COLUMNS = ["site_uuid", "site", "subject", "visit", "repeat", "session_uuid", "test", "item_oid", "value", "unit",
                  "method", "method_version", "collected_utc"]

# test -> (ODM DataType, where the value comes from)
NIGHT_TESTS = {"t90_pct": "float", "analysed_h": "float", "nadir_spo2": "float", "odi4_per_h": "float", "night_valid": "text"}
SPIRO_TESTS = {"fvc_l": "float", "fev1_l": "float", "predicted_fvc_l": "float", "lln_fvc_l": "float",
               "fvc_pct_predicted": "float", "z_fvc": "float", "grade_fvc": "text", "spirometry_valid": "text"}
ELIG_TESTS = {"decision": "text", "age_years": "integer"}


@dataclass(frozen=True)
class Signature:
    """An investigator's signature on a subject's data (made elsewhere; written here as given)."""

    subject: str
    user: str
    meaning: str
    legal_reason: str
    at_utc: str
    full_name: str = ""  # the printed name of the signature's manifestation


@dataclass(frozen=True)
class Result:
    """One measurement of one subject: a row of results.csv and an ItemData."""

    site_uuid: str
    site: str
    subject: str
    group: str  # oximetry / spirometry / eligibility
    repeat: str
    session_uuid: str
    test: str
    value: str
    method: str
    method_version: str
    collected_utc: str
    source: str  # the bundle file it comes from


def _oid_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text) or "_"


def _value(v: Any, datatype: str) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "Y" if v else "N"
    if datatype == "integer":
        return str(int(v))
    if isinstance(v, float):
        return repr(v)
    return str(v)


def results_of(files: dict[str, bytes]) -> list[Result]:
    """Every screening measurement in one bundle (bag paths -> bytes), in a stable order."""
    subject = json.loads(files["data/subject.json"])
    site_uuid, site, pseudonym = subject["site_uuid"], subject["site"], subject["pseudonym"]
    software = subject["software"]
    out: list[Result] = []
    for s in subject["sessions"]:
        sid = s["id"]
        if s["kind"] == "night":
            night = json.loads(files[f"data/night_{sid}.json"])
            rep = night["report"]
            vals = {"t90_pct": rep.get("t90_pct"), "nadir_spo2": rep.get("nadir_spo2"), "odi4_per_h": rep.get("odi4_per_h"),
                    "analysed_h": None if rep.get("analysed_s") is None else round(rep["analysed_s"] / 3600.0, 2),
                    "night_valid": rep.get("night_valid")}
            method = str(rep.get("definitions", {}).get("t90") or "")
            when = night["session"].get("stopped_utc") or ""
            for test, dt in NIGHT_TESTS.items():
                v = _value(vals[test], dt)
                if v is not None:
                    out.append(Result(site_uuid, site, pseudonym, "oximetry", str(sid), s["session_uuid"], test, v,
                                      method, software, when, f"data/night_{sid}.json"))
        else:
            sp = json.loads(files[f"data/spirometry_{sid}.json"])
            res = sp.get("result")
            if not res:
                continue
            vals = {k: res.get(k) for k in SPIRO_TESTS if k != "spirometry_valid"}
            vals["spirometry_valid"] = None if res.get("valid") is None else bool(res.get("valid"))
            for test, dt in SPIRO_TESTS.items():
                v = _value(vals[test], dt)
                if v is not None:
                    out.append(Result(site_uuid, site, pseudonym, "spirometry", str(sid), s["session_uuid"], test, v,
                                      str(res.get("equation") or ""), software, str(res.get("computed_utc") or ""),
                                      f"data/spirometry_{sid}.json"))
    elig = json.loads(files["data/eligibility.json"])
    vals = {"decision": elig.get("decision"), "age_years": subject.get("age_at_screening_years")}
    for test, dt in ELIG_TESTS.items():
        v = _value(vals[test], dt)
        if v is not None:
            out.append(Result(site_uuid, site, pseudonym, "eligibility", "", "", test, v, "eligibility rules", software,
                              str(elig.get("evaluated_at") or subject["export_utc"]), "data/eligibility.json"))
    return out


def results_csv(results: Iterable[Result], odm_config: dict[str, Any]) -> bytes:
    """Long format: one row per subject, visit, test; units in UCUM."""
    items = odm_config["items"]
    rows = [{"site_uuid": r.site_uuid, "site": r.site, "subject": r.subject, "visit": odm_config["study_event_oid"],
             "repeat": r.repeat, "session_uuid": r.session_uuid, "test": r.test, "item_oid": items[r.test]["oid"],
             "value": r.value, "unit": items[r.test].get("unit") or "", "method": r.method,
             "method_version": r.method_version, "collected_utc": r.collected_utc} for r in results]
    return csvs.write_csv(RESULT_COLUMNS, rows)


class _Doc:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    @staticmethod
    def el(parent: ET.Element | None, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        e = ET.Element(f"{{{NS}}}{tag}", attrs) if parent is None else ET.SubElement(parent, f"{{{NS}}}{tag}", attrs)
        if text is not None:
            e.text = text
        return e

    def translated(self, parent: ET.Element, tag: str, text: str) -> None:
        self.el(self.el(parent, tag), "TranslatedText", text, **{"{http://www.w3.org/XML/1998/namespace}lang": "en"})

    def group_oid(self, group: str) -> str:
        return str(self.cfg[f"{group}_group_oid"])

    def study(self, root: ET.Element) -> None:
        c = self.cfg
        study = self.el(root, "Study", OID=c["study_oid"])
        gv = self.el(study, "GlobalVariables")
        self.el(gv, "StudyName", c["study_name"])
        self.el(gv, "StudyDescription", c["study_name"])
        self.el(gv, "ProtocolName", c["protocol_name"])
        units = sorted({i["unit"] for i in c["items"].values() if i.get("unit")})
        if units:
            bd = self.el(study, "BasicDefinitions")
            for u in units:
                mu = self.el(bd, "MeasurementUnit", OID=self.unit_oid(u), Name=u)
                self.translated(mu, "Symbol", u)
        mdv = self.el(study, "MetaDataVersion", OID=c["metadata_version_oid"], Name=f"{c['study_name']} screening")
        proto = self.el(mdv, "Protocol")
        self.el(proto, "StudyEventRef", StudyEventOID=c["study_event_oid"], OrderNumber="1", Mandatory="Yes")
        se = self.el(mdv, "StudyEventDef", OID=c["study_event_oid"], Name="Screening", Repeating="No", Type="Scheduled")
        self.el(se, "FormRef", FormOID=c["form_oid"], Mandatory="Yes")
        form = self.el(mdv, "FormDef", OID=c["form_oid"], Name="Screening measurements", Repeating="No")
        groups = (("oximetry", NIGHT_TESTS, "Overnight oximetry", "Yes"), ("spirometry", SPIRO_TESTS, "Spirometry", "Yes"),
                  ("eligibility", ELIG_TESTS, "Eligibility", "No"))
        for g, _, _, _ in groups:
            self.el(form, "ItemGroupRef", ItemGroupOID=self.group_oid(g), Mandatory="No")
        for g, tests, name, repeating in groups:
            ig = self.el(mdv, "ItemGroupDef", OID=self.group_oid(g), Name=name, Repeating=repeating)
            for test in tests:
                if test in c["items"]:
                    self.el(ig, "ItemRef", ItemOID=c["items"][test]["oid"], Mandatory="No")
        for tests in (NIGHT_TESTS, SPIRO_TESTS, ELIG_TESTS):
            for test, dt in tests.items():
                item = c["items"].get(test)
                if item is None:
                    continue
                idef = self.el(mdv, "ItemDef", OID=item["oid"], Name=item["name"], DataType=dt,
                               **({"Length": "64"} if dt == "text" else {}))
                self.translated(idef, "Question", item["name"])
                if item.get("unit"):
                    self.el(idef, "MeasurementUnitRef", MeasurementUnitOID=self.unit_oid(item["unit"]))
                if item.get("codelist"):
                    self.el(idef, "CodeListRef", CodeListOID=item["codelist"])
        for oid, cl in c["codelists"].items():
            cle = self.el(mdv, "CodeList", OID=oid, Name=cl["name"], DataType="text")
            for code, decode in cl["items"].items():
                self.translated(self.el(cle, "CodeListItem", CodedValue=code), "Decode", decode)

    @staticmethod
    def unit_oid(unit: str) -> str:
        return "MU." + _oid_part({"%": "pct", "/h": "per_h", "1": "one"}.get(unit, unit))


def user_oid(actor: str) -> str:
    return "USR." + _oid_part(actor)


def location_oid(site_uuid: str) -> str:
    return "LOC." + site_uuid


def _audit_record(doc: _Doc, parent: ET.Element, *, user: str, site_uuid: str, at: str, reason: str | None,
                  source: str, record_id: str | None = None) -> None:
    ar = doc.el(parent, "AuditRecord", **({"ID": record_id} if record_id else {}))
    doc.el(ar, "UserRef", UserOID=user_oid(user))
    doc.el(ar, "LocationRef", LocationOID=location_oid(site_uuid))
    doc.el(ar, "DateTimeStamp", at)
    if reason:
        doc.el(ar, "ReasonForChange", reason)
    doc.el(ar, "SourceID", source)


def odm_document(bundles: list[dict[str, bytes]], odm_config: dict[str, Any], *, file_oid: str, created_utc: str,
                 software: str, exported_by: str, signatures: Iterable[Signature] = ()) -> bytes:
    """One ODM 1.3.2 snapshot of every bundle given (bag paths -> bytes for each)."""
    ET.register_namespace("", NS)
    doc = _Doc(odm_config)
    c = odm_config
    root = doc.el(None, "ODM", FileOID=file_oid, FileType="Snapshot", Granularity="All", CreationDateTime=created_utc,
                  ODMVersion="1.3.2", SourceSystem="collector", SourceSystemVersion=software.split()[-1],
                  Originator=exported_by)
    doc.study(root)
    subjects = [json.loads(b["data/subject.json"]) for b in bundles]
    audit_rows = [(subj, csvs.read_csv(b["data/audit.csv"], csvs.AUDIT_COLUMNS)) for subj, b in zip(subjects, bundles)]
    sigs = list(signatures)
    users = sorted({exported_by, SYSTEM_USER} | {r["actor"] for _, rows in audit_rows for r in rows if r["actor"]} | {s.user for s in sigs})
    admin = doc.el(root, "AdminData", StudyOID=c["study_oid"])
    full_names = {s.user: s.full_name for s in sigs if s.full_name}
    for u in users:
        ue = doc.el(admin, "User", OID=user_oid(u))
        doc.el(ue, "LoginName", u)
        if u in full_names:
            doc.el(ue, "FullName", full_names[u])
    for site_uuid, site in sorted({(s["site_uuid"], s["site"]) for s in subjects}):
        loc = doc.el(admin, "Location", OID=location_oid(site_uuid), Name=site, LocationType="Site")
        doc.el(loc, "MetaDataVersionRef", StudyOID=c["study_oid"], MetaDataVersionOID=c["metadata_version_oid"],
               EffectiveDate=created_utc[:10])
    meanings = sorted({(s.meaning, s.legal_reason) for s in sigs})
    sig_oids = {m: f"SD.{k + 1}" for k, m in enumerate(meanings)}
    for (meaning, legal), oid in sig_oids.items():
        sd = doc.el(admin, "SignatureDef", OID=oid, Methodology="Electronic")
        doc.el(sd, "Meaning", meaning)
        doc.el(sd, "LegalReason", legal)

    clinical = doc.el(root, "ClinicalData", StudyOID=c["study_oid"], MetaDataVersionOID=c["metadata_version_oid"])
    for subj, files in zip(subjects, bundles):
        sd = doc.el(clinical, "SubjectData", SubjectKey=subj["pseudonym"], TransactionType="Insert")
        for s in (s for s in sigs if s.subject == subj["pseudonym"]):
            se = doc.el(sd, "Signature")
            doc.el(se, "UserRef", UserOID=user_oid(s.user))
            doc.el(se, "LocationRef", LocationOID=location_oid(subj["site_uuid"]))
            doc.el(se, "SignatureRef", SignatureOID=sig_oids[(s.meaning, s.legal_reason)])
            doc.el(se, "DateTimeStamp", s.at_utc)
            break  # ODM allows one Signature per SubjectData; further ones belong to a later transaction
        doc.el(sd, "SiteRef", LocationOID=location_oid(subj["site_uuid"]))
        results = results_of(files)
        if not results:
            continue
        form = doc.el(doc.el(sd, "StudyEventData", StudyEventOID=c["study_event_oid"]), "FormData", FormOID=c["form_oid"])
        groups: dict[tuple[str, str], ET.Element] = {}
        for r in results:
            item = c["items"].get(r.test)
            if item is None:
                continue  # the study does not collect this test
            key = (r.group, r.repeat)
            if key not in groups:
                attrs = {"ItemGroupOID": doc.group_oid(r.group)}
                if r.repeat:
                    attrs["ItemGroupRepeatKey"] = r.repeat
                groups[key] = doc.el(form, "ItemGroupData", **attrs)
            idata = doc.el(groups[key], "ItemData", ItemOID=item["oid"], Value=r.value)
            _audit_record(doc, idata, user=SYSTEM_USER, site_uuid=r.site_uuid,
                          at=r.collected_utc or subj["export_utc"], reason=None,
                          source=f"{subj['site_uuid']}/{r.session_uuid or subj['pseudonym']}/{r.source}; {r.method} {r.method_version}".strip())
            if item.get("unit"):
                doc.el(idata, "MeasurementUnitRef", MeasurementUnitOID=doc.unit_oid(item["unit"]))
    seen: set[str] = set()
    for subj, all_rows in audit_rows:
        fresh = [a for a in all_rows if f"AR.{subj['site_uuid'][:8]}.{a['id']}" not in seen]
        if not fresh:
            continue
        ars = doc.el(clinical, "AuditRecords")
        for a in fresh:
            rid = f"AR.{subj['site_uuid'][:8]}.{a['id']}"  # xs:ID: unique in the file
            seen.add(rid)
            what = a["action"] + (f" ({a['reason']})" if a["reason"] else "")
            _audit_record(doc, ars, user=a["actor"] or "unknown", site_uuid=subj["site_uuid"], at=a["at_utc"], reason=what,
                          source=f"audit {a['id']} {a['row_hash']}", record_id=rid)
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"
