"""SOAR playbooks: what the Cortex does when an assessment changes (issue 13, in progress).

definitions.py  playbook files (YAML): triggers over assessments, ordered steps (webhook, n8n,
                thehive, guardian) that may only name configured endpoints and guardians
signing.py      Standard Webhooks signatures (several secrets during a rollover) or a static
                header token, secrets read from private files
retry.py        what a delivery attempt's outcome means (done, retry when, failed, endpoint
                gone) on the Standard Webhooks retry schedule with jitter
"""
