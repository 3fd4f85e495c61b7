"""The fake patient and recording identification written into every synthetic EDF header.

Privacy tests assert that none of :data:`SYNTH_IDENTIFYING_STRINGS` ever reaches an output or a
log, which proves that header fields are never copied.
"""

from __future__ import annotations

import datetime as dt

__all__ = [
    "SYNTH_BIRTHDATE", "SYNTH_EQUIPMENT", "SYNTH_HOSPITAL", "SYNTH_IDENTIFYING_STRINGS", "SYNTH_PATIENT_CODE",
    "SYNTH_PATIENT_NAME", "SYNTH_PATIENT_SEX", "SYNTH_TECHNICIAN",
]

# Made up, but shaped like the real thing, so a privacy test that greps outputs and logs for them
# proves that header fields are never copied.  EDF+ subfields may not contain spaces.
SYNTH_PATIENT_CODE = "SYNPID-80417"
SYNTH_PATIENT_SEX = "F"
SYNTH_BIRTHDATE = dt.date(1970, 1, 1)
SYNTH_PATIENT_NAME = "Jane_Synthetic_Doe"
SYNTH_HOSPITAL = "StNowhere_Sleep_Clinic"
SYNTH_TECHNICIAN = "Tech_J_Fakename"
SYNTH_EQUIPMENT = "SynthPSG-3000"
#: Every identifying string of the fake header, as it appears in the file.
SYNTH_IDENTIFYING_STRINGS: tuple[str, ...] = (
    SYNTH_PATIENT_CODE,
    SYNTH_PATIENT_NAME,
    "01-JAN-1970",
    SYNTH_HOSPITAL,
    SYNTH_TECHNICIAN,
)
