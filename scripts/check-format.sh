#!/usr/bin/env bash
# Fails when a C++ file differs from clang-format's output (config: .clang-format).
set -euo pipefail
cd "$(dirname "$0")/.."
files=$(git ls-files '*.cpp' '*.hpp' | grep -v '^third_party/')
clang-format --dry-run -Werror $files
echo "check-format: $(echo "$files" | wc -l) files formatted"
