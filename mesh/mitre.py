"""MITRE ATT&CK ids as rule tags: syntax checks, tactic names and the names of known techniques.

Tags carry techniques (`T1055`, `T1055.008`) and tactics (`TA0005` or Falco's
`mitre_defense_evasion`). Technique ids are checked for syntax only: ATT&CK grows, and a rule may
name a technique this table does not know (it then goes out without a name). Tactics form a closed
set, the `MitreTactic` enum of the API.
"""

from __future__ import annotations

import re

from qsc.common.v1 import classification_pb2

TECHNIQUE_ID = re.compile(r"T\d{4}(?:\.\d{3})?")
TACTIC_ID = re.compile(r"TA(\d{4})")

# Tactic enum value by its Falco-style tag name (`mitre_defense_evasion` -> 5).
TACTIC_BY_TAG: dict[str, int] = {
    "mitre_" + v.name.removeprefix("MITRE_TACTIC_").lower(): v.number
    for v in classification_pb2.MitreTactic.DESCRIPTOR.values
    if v.number != 0
}
TACTIC_NUMBERS: frozenset[int] = frozenset(TACTIC_BY_TAG.values())

_E = classification_pb2.MITRE_TACTIC_EXECUTION
_P = classification_pb2.MITRE_TACTIC_PERSISTENCE
_PE = classification_pb2.MITRE_TACTIC_PRIVILEGE_ESCALATION
_DE = classification_pb2.MITRE_TACTIC_DEFENSE_EVASION
_CA = classification_pb2.MITRE_TACTIC_CREDENTIAL_ACCESS
_D = classification_pb2.MITRE_TACTIC_DISCOVERY
_LM = classification_pb2.MITRE_TACTIC_LATERAL_MOVEMENT
_C2 = classification_pb2.MITRE_TACTIC_COMMAND_AND_CONTROL
_X = classification_pb2.MITRE_TACTIC_EXFILTRATION
_I = classification_pb2.MITRE_TACTIC_IMPACT
_IA = classification_pb2.MITRE_TACTIC_INITIAL_ACCESS
_R = classification_pb2.MITRE_TACTIC_RECONNAISSANCE
_COL = classification_pb2.MITRE_TACTIC_COLLECTION

# Techniques the default ruleset uses (and a few neighbours): name and the tactics they serve.
TECHNIQUES: dict[str, tuple[str, tuple[int, ...]]] = {
    "T1003.008": ("/etc/passwd and /etc/shadow", (_CA,)),
    "T1005": ("Data from Local System", (_COL,)),
    "T1014": ("Rootkit", (_DE,)),
    "T1021.004": ("SSH", (_LM,)),
    "T1036.005": ("Match Legitimate Name or Location", (_DE,)),
    "T1037.004": ("RC Scripts", (_P, _PE)),
    "T1040": ("Network Sniffing", (_CA, _D)),
    "T1041": ("Exfiltration Over C2 Channel", (_X,)),
    "T1046": ("Network Service Discovery", (_D,)),
    "T1048": ("Exfiltration Over Alternative Protocol", (_X,)),
    "T1053.003": ("Cron", (_E, _P, _PE)),
    "T1055": ("Process Injection", (_DE, _PE)),
    "T1055.008": ("Ptrace System Calls", (_DE, _PE)),
    "T1055.009": ("Proc Memory", (_DE, _PE)),
    "T1059": ("Command and Scripting Interpreter", (_E,)),
    "T1059.004": ("Unix Shell", (_E,)),
    "T1068": ("Exploitation for Privilege Escalation", (_PE,)),
    "T1070.002": ("Clear Linux or Mac System Logs", (_DE,)),
    "T1070.003": ("Clear Command History", (_DE,)),
    "T1070.004": ("File Deletion", (_DE,)),
    "T1070.006": ("Timestomp", (_DE,)),
    "T1071": ("Application Layer Protocol", (_C2,)),
    "T1078": ("Valid Accounts", (_DE, _P, _PE, _IA)),
    "T1078.003": ("Local Accounts", (_DE, _P, _PE, _IA)),
    "T1090": ("Proxy", (_C2,)),
    "T1098": ("Account Manipulation", (_P, _PE)),
    "T1098.004": ("SSH Authorized Keys", (_P, _PE)),
    "T1105": ("Ingress Tool Transfer", (_C2,)),
    "T1110": ("Brute Force", (_CA,)),
    "T1110.001": ("Password Guessing", (_CA,)),
    "T1110.003": ("Password Spraying", (_CA,)),
    "T1110.004": ("Credential Stuffing", (_CA,)),
    "T1136.001": ("Local Account", (_P,)),
    "T1190": ("Exploit Public-Facing Application", (_IA,)),
    "T1195.002": ("Compromise Software Supply Chain", (_IA,)),
    "T1222.002": ("Linux and Mac File and Directory Permissions Modification", (_DE,)),
    "T1485": ("Data Destruction", (_I,)),
    "T1531": ("Account Access Removal", (_I,)),
    "T1543.002": ("Systemd Service", (_P, _PE)),
    "T1546.004": ("Unix Shell Configuration Modification", (_P, _PE)),
    "T1547.006": ("Kernel Modules and Extensions", (_P, _PE)),
    "T1548": ("Abuse Elevation Control Mechanism", (_PE, _DE)),
    "T1548.001": ("Setuid and Setgid", (_PE, _DE)),
    "T1548.003": ("Sudo and Sudo Caching", (_PE, _DE)),
    "T1552.001": ("Credentials In Files", (_CA,)),
    "T1552.004": ("Private Keys", (_CA,)),
    "T1552.005": ("Cloud Instance Metadata API", (_CA,)),
    "T1554": ("Compromise Host Software Binary", (_P,)),
    "T1555": ("Credentials from Password Stores", (_CA,)),
    "T1556": ("Modify Authentication Process", (_CA, _DE, _P)),
    "T1561.001": ("Disk Content Wipe", (_I,)),
    "T1571": ("Non-Standard Port", (_C2,)),
    "T1574.006": ("Dynamic Linker Hijacking", (_P, _PE, _DE)),
    "T1595": ("Active Scanning", (_R,)),
    "T1609": ("Container Administration Command", (_E,)),
    "T1610": ("Deploy Container", (_DE, _E)),
    "T1611": ("Escape to Host", (_PE,)),
    "T1620": ("Reflective Code Loading", (_DE,)),
    "T1622": ("Debugger Evasion", (_DE, _D)),
}


def looks_like_technique(tag: str) -> bool:
    """True for tags meant as a technique id (`T` and a digit), well formed or not."""
    return len(tag) > 1 and tag[0] in "Tt" and tag[1].isdigit()


def looks_like_tactic(tag: str) -> bool:
    return (tag[:2].upper() == "TA" and tag[2:3].isdigit()) or tag.startswith("mitre_")


def tactic_of(tag: str) -> int | None:
    """The tactic a tactic tag names, or None when it names none."""
    m = TACTIC_ID.fullmatch(tag)
    if m is not None:
        number = int(m.group(1))
        return number if number in TACTIC_NUMBERS else None
    return TACTIC_BY_TAG.get(tag)
