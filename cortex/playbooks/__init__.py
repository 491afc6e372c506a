"""SOAR playbooks: what the Cortex does when an assessment changes (issue 13, in progress).

signing.py   Standard Webhooks signatures (several secrets during a rollover) or a static
             header token, secrets read from private files
retry.py     what a delivery attempt's outcome means (done, retry when, failed, endpoint
             gone) on the Standard Webhooks retry schedule with jitter
"""
