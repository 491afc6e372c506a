#!/usr/bin/env bash
# buf breaking against the previous commit of main (or $BUF_BREAKING_AGAINST, any buf input).
# Skips, saying so, when there is no previous commit with protos to compare with.
set -euo pipefail
buf="${BUF:-tools/npm/node_modules/.bin/buf}"
against="${BUF_BREAKING_AGAINST:-}"
if [ -z "$against" ]; then
    if ! git rev-parse -q --verify 'HEAD~1^{commit}' >/dev/null 2>&1; then
        echo "buf breaking: no previous commit in this clone; nothing to compare with"
        exit 0
    fi
    if ! git ls-tree -r --name-only 'HEAD~1' -- proto | grep -q '\.proto$' \
        || ! git cat-file -e 'HEAD~1:buf.yaml' 2>/dev/null; then
        echo "buf breaking: the previous commit has no buf module; nothing to compare with"
        exit 0
    fi
    against=".git#ref=HEAD~1"
fi
echo "buf breaking --against $against"
"$buf" breaking --against "$against"
