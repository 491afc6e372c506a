"""Beta: integrity assurance guardian (FIM, backups, certificates, vault, healing)."""
