"""Spirometry results off the line: HL7 v2 ORU^R01 over MLLP and GDT 2.1 codecs (sans-I/O).

Import what you need from its modules: ``gdt``, ``hl7``, ``registry``, ``results``.  The
package itself imports nothing, so reading a codec's names does not load pyserial.
"""
