#!/usr/bin/env bash
# Regenerates the golden outputs of crates/coffer/tests/cli_kustomize.rs with a real kubectl
# (kustomize v5): `kubectl kustomize DIR` for each directory under cases/, and
# `kubectl create secret ... --append-hash` for each line of create.cases.
#
#   scripts/make-kustomize-goldens.sh          # from the repository root; needs kubectl, python3
#
# Outputs, under crates/coffer/tests/golden/kustomize/out/:
#   NAME.yaml   stdout of a successful build
#   NAME.warn   its stderr (kustomize's deprecation warnings), when there is any
#   NAME.err    the message of a failed build. kubectl logs it as a klog line
#               (`E... run.go:72] "command failed" err="MESSAGE"`); this keeps MESSAGE, unquoted,
#               with the case directory written as $DIR and cases/ as $CASES. Coffer prints
#               `error: MESSAGE`.
#   create-NAME.out  stdout of `kubectl create secret ARGS` run in create/
#
# Where kubectl's message cannot or must not be copied, the line is rewritten below (see
# `deviate`), and the test checks Coffer against the rewritten text.
set -euo pipefail

cd "$(dirname "$0")/.."
G=crates/coffer/tests/golden/kustomize
OUT="$G/out"
CASES="$(cd "$G/cases" && pwd -P)"
command -v kubectl >/dev/null || { echo "kubectl not found" >&2; exit 1; }
kubectl version --client >&2 || true

rm -rf "$OUT"
mkdir -p "$OUT"

# kubectl's klog line -> the error message.
extract() {
    python3 -c '
import re, sys, ast
text = sys.stdin.read()
m = re.search(r"err=\"((?:[^\"\\]|\\.)*)\"", text)
if m:
    # klog quotes with Go %q, whose escapes Python string literals read the same way here.
    sys.stdout.write(ast.literal_eval("\"" + m.group(1) + "\""))
    sys.exit(0)
m = re.search(r"err=<\n((?:\t.*\n)*) >", text)
if m:
    sys.stdout.write("".join(l[1:] + "\n" for l in m.group(1).splitlines()))
    sys.exit(0)
sys.stderr.write("no error message in: " + text)
sys.exit(1)
'
}

# Deliberate differences from kubectl's wording, one per reason.
deviate() {
    local name=$1
    case "$name" in
    duplicate-generator | merge-behavior)
        # kubectl prints a Go pointer (`&{0xc000... <nil>}`), different on every run.
        sed -E 's/merging from generator &\{0x[0-9a-f]+ <nil>\}:/merging from generator:/'
        ;;
    bad-literal)
        # kubectl lists every literal source, values included; Coffer shows keys only.
        sed -E 's/literal sources \[user=admin novalue\]: invalid literal source novalue,/literal sources [user=… …]: invalid literal source …,/'
        ;;
    bad-env-line)
        # kubectl prints the offending line (a secret value) as bytes and as text.
        python3 -c '
import sys
t = sys.stdin.read()
i = t.index("line [")
sys.stdout.write(t[:i] + "line 2 has invalid utf8 bytes (the line is not shown)")
'
        ;;
    *) cat ;;
    esac
}

for dir in "$G"/cases/*/; do
    name=$(basename "$dir")
    abs="$(cd "$dir" && pwd -P)"
    if kubectl kustomize "$abs" >"$OUT/$name.yaml" 2>"$OUT/$name.stderr"; then
        if [ -s "$OUT/$name.stderr" ]; then
            mv "$OUT/$name.stderr" "$OUT/$name.warn"
        else
            rm "$OUT/$name.stderr"
        fi
    else
        rm "$OUT/$name.yaml"
        extract <"$OUT/$name.stderr" |
            deviate "$name" |
            python3 -c '
import sys
t = sys.stdin.read()
sys.stdout.write(t.replace(sys.argv[1], "$DIR").replace(sys.argv[2], "$CASES"))
' "$abs" "$CASES" >"$OUT/$name.err"
        rm "$OUT/$name.stderr"
    fi
done

while IFS='|' read -r name args; do
    name=$(echo "$name" | xargs)
    case "$name" in '' | '#'*) continue ;; esac
    # shellcheck disable=SC2086 # the arguments are split on purpose
    (cd "$G/create" && kubectl create secret $args) >"$OUT/create-$name.out"
done <"$G/create.cases"

echo "wrote $(ls "$OUT" | wc -l) files under $OUT" >&2
