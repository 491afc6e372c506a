"""Fuzzing the YAML loaders: Alpha rules, Cortex correlations, Cortex playbooks.

Seeds are the shipped files (alpha/rules/default, cortex/correlate/default, deploy/playbooks.yaml).
The documented refusals name FILE:LINE: `RuleError`, `CorrelationRuleError`,
`PlaybookDefinitionError`. YAML aliases (a "billion laughs") and deep nesting are in the mix.
"""

from __future__ import annotations

from typing import Final

from hypothesis import given

from alpha.rules.errors import RuleError
from alpha.rules.loader import default_rule_files
from alpha.rules.loader import load_texts as load_rules
from cortex.correlate.loader import default_files
from cortex.correlate.loader import load_texts as load_correlations
from cortex.errors import CorrelationRuleError, PlaybookDefinitionError
from cortex.playbooks.definitions import EndpointRef, load_playbook_texts
from tests.fuzz.harness import REPO, corpus, fuzz_settings, guarded, mutated_text, with_examples

RULE_FILES: Final = {p.name: p.read_text() for p in default_rule_files()}
BASE: Final = RULE_FILES["00_base.yaml"]
CORRELATIONS: Final = [p.read_text() for p in default_files()]
PLAYBOOKS: Final = (REPO / "deploy" / "playbooks.yaml").read_text()
ENDPOINTS: Final = {
    "soar": EndpointRef("soar", header_token=False),
    "n8n": EndpointRef("n8n", header_token=True),
    "hive": EndpointRef("hive", header_token=True),
}
GUARDIANS: Final = {"beta-web-01": "beta", "alpha-web-01": "alpha"}
ALIAS_BOMB: Final = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9)
)
TOKENS: Final = [
    "\n- ",
    "\n  ",
    ": ",
    "&a ",
    "*a",
    "!!python/object:os.system ",
    "{",
    "}",
    "[",
    "]",
    "'",
    '"',
    "|\n",
    ">-\n",
    "---\n",
    "...\n",
    "? ",
    "%YAML 1.1\n",
    "\t",
    " and ",
    " or ",
    " not ",
    " in (",
    ")",
    " startswith ",
    "=",
    "macro",
    "list",
]
YAML_CORPUS: Final = [b.decode("utf-8", "replace") for b in corpus("yaml")] + [ALIAS_BOMB]


@fuzz_settings(120, deadline_ms=2000)
@with_examples(YAML_CORPUS)
@given(
    mutated_text([BASE, RULE_FILES["50_auth.yaml"], RULE_FILES["40_network.yaml"]], tokens=TOKENS)
)
def test_alpha_rules_mutated(text: str) -> None:
    # After the base file, as the default set loads (the base defines the lists and macros).
    guarded(lambda: load_rules([("00_base.yaml", BASE), ("fuzz.yaml", text)]), RuleError)


@fuzz_settings(120, deadline_ms=2000)
@with_examples(YAML_CORPUS)
@given(mutated_text(CORRELATIONS, tokens=[*TOKENS, "filter: ", "window: ", "threshold: "]))
def test_correlations_mutated(text: str) -> None:
    guarded(lambda: load_correlations([("fuzz.yaml", text)]), CorrelationRuleError)


@fuzz_settings(120, deadline_ms=2000)
@with_examples(YAML_CORPUS)
@given(mutated_text([PLAYBOOKS], tokens=[*TOKENS, "steps:", "- webhook: soar", "trigger:"]))
def test_playbooks_mutated(text: str) -> None:
    guarded(
        lambda: load_playbook_texts(
            [("fuzz.yaml", text)], endpoints=ENDPOINTS, guardians=GUARDIANS
        ),
        PlaybookDefinitionError,
    )


def test_seeds_load() -> None:
    load_rules(list(RULE_FILES.items()))
    load_correlations([(str(i), t) for i, t in enumerate(CORRELATIONS)])
    load_playbook_texts([("p.yaml", PLAYBOOKS)], endpoints=ENDPOINTS, guardians=GUARDIANS)
