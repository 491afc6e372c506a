#!/usr/bin/env bash
# buf breaking: the working tree's API against the version it must stay wire-compatible with.
#
# Which version (unless $BUF_BREAKING_AGAINST names any buf input, which then wins):
# - On a branch other than main: the merge-base of HEAD with main (origin/main, else main; or
#   $BUF_BREAKING_MAIN). The whole branch is checked at once, so a break spread over several
#   commits (remove a field, then an unrelated commit) cannot hide behind the last one.
# - On main itself (HEAD is main, or an ancestor of it, as in CI's fresh clone): the last
#   release tag `v*` reachable from HEAD, else the first commit that has the buf module, i.e. the
#   v1 API as first published. Not HEAD~1 or "the previous commit that touched proto/": a branch
#   merged by fast-forward or rebase puts its commits on main one by one, and the last one alone
#   says nothing about the others. The FILE rules only allow additions, so "compatible with the
#   first version" is what "compatible from one commit to the next" adds up to.
# A shallow clone (CI's fetch-depth: 1) lacks that history: the script fails and says so rather
# than pass with nothing checked. It passes, saying so, only when the chosen base has no buf
# module yet (the branch introduces the API). The base is exported with `git archive` into a temp
# directory: buf's own `.git#ref=` input clones at depth 50 and misses an older base.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
buf="${BUF:-tools/npm/node_modules/.bin/buf}"
module_dir=proto

fail() {
    echo "buf breaking: $*" >&2
    exit 2
}

if [ -n "${BUF_BREAKING_AGAINST:-}" ]; then
    echo "buf breaking --against $BUF_BREAKING_AGAINST"
    exec "$buf" breaking --against "$BUF_BREAKING_AGAINST"
fi

git rev-parse -q --verify 'HEAD^{commit}' >/dev/null 2>&1 \
    || fail "no commit checked out; nothing to compare with (set BUF_BREAKING_AGAINST)"
if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    fail "this is a shallow clone, so the base to compare with may be missing. Fetch the history
(git fetch --unshallow --tags; in CI, check out with fetch-depth: 0) or set BUF_BREAKING_AGAINST."
fi

has_module() { # commit -> whether it holds buf.yaml and at least one .proto under the module
    # grep reads all (no -q): an early exit would make git die of SIGPIPE, a failure to pipefail.
    git cat-file -e "$1:buf.yaml" 2>/dev/null \
        && git ls-tree -r --name-only "$1" -- "$module_dir" | grep '\.proto$' >/dev/null
}

main_ref=""
for ref in ${BUF_BREAKING_MAIN:-origin/main main}; do
    if git rev-parse -q --verify "$ref^{commit}" >/dev/null; then
        main_ref=$ref
        break
    fi
done
[ -n "${BUF_BREAKING_MAIN:-}" ] && [ -z "$main_ref" ] \
    && fail "BUF_BREAKING_MAIN=$BUF_BREAKING_MAIN names no commit"

head=$(git rev-parse HEAD)
base=""
if [ -n "$main_ref" ]; then
    fork=$(git merge-base HEAD "$main_ref") \
        || fail "HEAD and $main_ref share no history; set BUF_BREAKING_AGAINST"
    if [ "$fork" != "$head" ]; then
        base=$fork
        why="merge-base with $main_ref"
    fi
fi
if [ -z "$base" ]; then
    if tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*' HEAD 2>/dev/null); then
        base=$(git rev-parse "$tag^{commit}")
        why="last release tag $tag"
    else
        for c in $(git rev-list --reverse HEAD -- buf.yaml "$module_dir"); do
            if has_module "$c"; then
                base=$c
                break
            fi
        done
        if [ -z "$base" ]; then
            echo "buf breaking: no commit has the buf module yet; nothing to compare with"
            exit 0
        fi
        why="first commit with the buf module; no release tag v* yet"
    fi
fi
if ! has_module "$base"; then
    echo "buf breaking: the base ($why, ${base:0:12}) has no buf module; nothing to compare with"
    exit 0
fi

against=$(mktemp -d)
trap 'rm -rf "$against"' EXIT
paths=(buf.yaml "$module_dir")
git cat-file -e "$base:buf.lock" 2>/dev/null && paths+=(buf.lock)
git archive "$base" -- "${paths[@]}" | tar -x -C "$against"
echo "buf breaking --against ${base:0:12} ($why)"
"$buf" breaking --against "$against"
