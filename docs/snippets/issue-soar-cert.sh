#!/bin/sh
# On the CA machine: a certificate for one SOAR integration instance (role `soar`, host
# soar-01), then what it says. Copy ca.crt, soar-soar-01.crt and soar-soar-01.key (mode 0600)
# to the integration; the Cortex sees spiffe://<trust-domain>/soar/soar-01.
set -eu
PKI=${PKI:-/etc/qsc/pki}
qsc pki issue soar soar-01 --dir "$PKI" --dns soar-01.example.org
qsc pki show "$PKI/soar-soar-01.crt"
